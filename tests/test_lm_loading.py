"""load_lm: local folders, the GGUF alias cache (atomic, reused, refreshed when stale), one-line errors."""
from __future__ import annotations

import json

import pytest
import torch
import transformers

from llm_embedder.errors import UserError
from llm_embedder.lm import loading
from test_lm_fixtures import one_torch_thread, tiny_lm_dir  # noqa: F401  (fixtures)


def test_local_folder_loads_in_eval_mode_without_gradients(tiny_lm_dir):
    lm = loading.load_lm(tiny_lm_dir)
    assert not lm.model.training and not any(p.requires_grad for p in lm.model.parameters())
    assert lm.alias is None and lm.path == tiny_lm_dir and lm.dtype == "float32"
    assert loading.load_lm(tiny_lm_dir, "bfloat16").model.dtype == torch.bfloat16
    # no special token is added when the scorer tokenises (SmolLM2's tokenizer would prepend <|im_start|>)
    assert lm.tokenizer("Hello", add_special_tokens=False)["input_ids"] == lm.tokenizer.convert_tokens_to_ids(["Hello"])


def test_bad_model_arguments_are_one_line_user_errors(tmp_path):
    with pytest.raises(UserError, match="--model_name_or_path: 'nope' is not a local folder, a known alias \\(qwen2.5-coder, .*smollm2\\)"):
        loading.load_lm("nope")
    with pytest.raises(UserError, match="has no config.json"):
        loading.load_lm(tmp_path)
    with pytest.raises(UserError, match="dtype 'float16' is not supported"):
        loading.dtype_name("float16")


@pytest.fixture
def fake_gguf(tmp_path, tiny_lm_dir, monkeypatch):
    """Make the smollm2 alias 'convert' the tiny model, counting conversions, with the cache in tmp_path."""
    monkeypatch.setenv("LLM_EMBEDDER_CACHE", str(tmp_path / "cache"))
    gguf = tmp_path / "pkg" / "model.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"0" * 10)
    monkeypatch.setattr(loading, "resolve_lm", lambda name, argument: (gguf.parent, gguf.name))
    calls = []
    real_model, real_tok = transformers.AutoModelForCausalLM.from_pretrained, transformers.AutoTokenizer.from_pretrained

    def model_from_gguf(path, gguf_file=None, **kwargs):
        calls.append(gguf_file)
        if getattr(model_from_gguf, "fail", False):
            raise RuntimeError("killed while converting")
        return real_model(tiny_lm_dir, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained",
                        lambda path, gguf_file=None, **kw: model_from_gguf(path, gguf_file, **kw) if gguf_file else real_model(path, **kw))
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained",
                        lambda path, gguf_file=None, **kw: real_tok(tiny_lm_dir if gguf_file else path, **kw))
    return gguf, calls, model_from_gguf


def test_gguf_alias_is_converted_once_and_reused(fake_gguf, tmp_path):
    gguf, calls, _ = fake_gguf
    lm = loading.load_lm("smollm2")
    dest = tmp_path / "cache" / "lm" / "smollm2"
    assert lm.path == dest and lm.alias == "smollm2" and lm.source == str(gguf)
    assert (dest / "model.safetensors").is_file() and not list(dest.glob("*.bin"))  # safetensors, no pickle
    assert json.loads((dest / "conversion.json").read_text())["source_bytes"] == 10
    loading.load_lm("smollm2")
    assert calls == ["model.gguf"]  # the second load read the cache
    gguf.write_bytes(b"0" * 11)  # a different GGUF: the cache is stale and converted again
    loading.load_lm("smollm2")
    assert len(calls) == 2


def test_a_failed_conversion_leaves_no_cache_behind(fake_gguf, tmp_path):
    _, calls, model_from_gguf = fake_gguf
    model_from_gguf.fail = True
    with pytest.raises(RuntimeError, match="killed while converting"):
        loading.load_lm("smollm2")
    assert list((tmp_path / "cache" / "lm").iterdir()) == []  # neither the folder nor its temp folder
