"""Shared pieces of the LM-scoring tests: a tiny random causal LM with SmolLM2's tokenizer, small record files,
and an independent one-sequence-at-a-time reference scorer. Test modules import the fixtures from here."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from llm_embedder.lm.loading import converted_dir
from llm_embedder.resources import resolve_lm


def smollm2_tokenizer():
    """SmolLM2's tokenizer: from the converted cache when present (fast), else straight from the GGUF (~15 s)."""
    from transformers import AutoTokenizer

    from llm_embedder.lm.loading import apply_gguf_bos, load_tokenizer

    cached = converted_dir("smollm2")
    if (cached / "tokenizer.json").is_file():
        return load_tokenizer(cached)
    src, gguf = resolve_lm("smollm2")
    return apply_gguf_bos(AutoTokenizer.from_pretrained(src, gguf_file=gguf), src / gguf)


def build_tiny_lm(out: Path) -> Path:
    """A 2-layer, 32-dim random Llama with SmolLM2's tokenizer, saved as a Hugging Face folder."""
    from transformers import LlamaConfig, LlamaForCausalLM

    if (out / "config.json").is_file():
        return out
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tok = smollm2_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=1, intermediate_size=64, max_position_embeddings=2048,
                         tie_word_embeddings=True)
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # larger logits than the default init, so scores differ clearly between keys
        model.model.embed_tokens.weight.mul_(50)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp, legacy_format=False)
    tmp.rename(out)
    return out


@pytest.fixture(autouse=True)
def one_torch_thread():
    """The tiny model's matrices are too small for two threads to pay off; on a busy 2-core machine the thread
    hand-off alone made the tests 10x slower. Restored after each test."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory) -> Path:
    return build_tiny_lm(tmp_path_factory.getbasetemp() / "tiny_lm")


@pytest.fixture(scope="session")
def tiny_lm(tiny_lm_dir):
    from llm_embedder.lm.loading import load_lm

    return load_lm(tiny_lm_dir)


def reference_score(model, prompt_ids, target_ids) -> float:
    """Mean log p(target | prompt) with one unpadded forward over the plain concatenation (full logits)."""
    ids = torch.tensor([list(prompt_ids) + list(target_ids)])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].double()
    logp = torch.log_softmax(logits[:-1], dim=-1).gather(1, ids[0, 1:, None]).squeeze(1)
    return logp[-len(target_ids):].mean().item()


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


QA_ROWS = [
    {"query": "What is the capital of France?", "answers": ["Paris", "The capital is Paris."], "task": "qa",
     "pos": ["Paris is the capital and largest city of France."],
     "neg": ["Bananas are rich in potassium.", "Berlin is the capital of Germany.", "The Nile flows north."],
     "query_id": "q1", "extra_field": {"kept": True}},
    {"query": "Who wrote Hamlet?", "answers": ["William Shakespeare"], "task": "qa",
     "pos": ["Hamlet is a tragedy written by William Shakespeare."],
     "neg": ["Mount Everest is the highest mountain.", "Photosynthesis happens in chloroplasts."], "query_id": "q2"},
    {"query": "How many legs does a spider have?", "answers": ["Eight"], "task": "qa",
     "pos": ["Spiders are arachnids with eight legs."], "neg": ["Insects have six legs."], "query_id": "q3"},
]
