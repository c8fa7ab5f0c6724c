"""``--encode_backend onnxruntime``: the same vectors as torch, an export cache keyed by the weights, the wiring
through ``eval_retrieval`` and ``llm-embedder encode``, and one-line errors when onnxruntime is missing."""
from __future__ import annotations

import builtins
import json

import numpy as np
import pytest
import torch
from test_eval_retrieval import small_scifact  # noqa: F401  (fixture)

from llm_embedder.errors import UserError
from llm_embedder.modeling import onnx_backend
from llm_embedder.modeling.encoder import DenseEncoder
from llm_embedder.modeling.backends import check_backend
from llm_embedder.modeling.onnx_backend import OnnxRuntimeEncoder

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

TEXTS = ["what is BM25?", "a much longer passage about ranking functions, inverted indexes and how term "
         "frequency saturates in Okapi BM25", "x", "dense retrieval embeds queries and keys into one space", ""]
INSTRUCTION = "Represent this document for retrieval: "


def _torch_vectors(enc, side, instruction=""):
    return enc.encode(TEXTS, side=side, instruction=instruction, batch_size=2, show_progress=False)


@pytest.mark.parametrize("untied", [False, True])
def test_onnxruntime_vectors_equal_torch_on_a_tiny_bert(tiny_bert_dir, tmp_path, monkeypatch, untied):
    enc = DenseEncoder.from_pretrained(tiny_bert_dir, key_max_length=16, tie_encoders=not untied,
                                       projection_out_dim=8 if untied else None)
    if untied:  # the key tower must be its own graph: make it differ from the query tower
        with torch.no_grad():
            enc.key_model.encoder.layer[0].output.dense.weight.mul_(1.5)
    expected = {side: _torch_vectors(enc, side, INSTRUCTION) for side in ("query", "key")}
    ort_enc = OnnxRuntimeEncoder(enc, cache_dir=tmp_path)
    ort_enc.encode(TEXTS[:1], side="query", show_progress=False)
    ort_enc.encode(TEXTS[:1], side="key", show_progress=False)
    # from here on the torch transformers must not run: the vectors come from ONNX Runtime
    for tower in enc._transformers():
        monkeypatch.setattr(tower, "forward", lambda *a, **k: pytest.fail("torch transformer ran"))
    for side in ("query", "key"):
        got = ort_enc.encode(TEXTS, side=side, instruction=INSTRUCTION, batch_size=2, show_progress=False)
        assert got.shape == expected[side].shape and got.dtype == np.float32
        assert np.abs(got - expected[side]).max() <= 1e-5
    assert (ort_enc.exports["query"] != ort_enc.exports["key"]) == untied
    meta = json.loads((ort_enc.exports["key"].parent / "meta.json").read_text())
    assert meta["fused"] is True and meta["model_type"] == "bert"  # the fused graph passed the probe check


def test_export_is_cached_by_weights_and_redone_when_they_change(tiny_bert_dir, tmp_path, monkeypatch):
    exports = []
    real_export = onnx_backend._export
    monkeypatch.setattr(onnx_backend, "_export", lambda *a: exports.append(a[-1]) or real_export(*a))
    enc = DenseEncoder.from_pretrained(tiny_bert_dir, key_max_length=16)
    first = OnnxRuntimeEncoder(enc, cache_dir=tmp_path)
    before = first.encode(TEXTS, show_progress=False)
    again = OnnxRuntimeEncoder(enc, cache_dir=tmp_path)
    assert np.array_equal(again.encode(TEXTS, show_progress=False), before)
    assert len(exports) == 1 and again.exports["key"] == first.exports["key"]  # reused, not exported again

    with torch.no_grad():  # "retrained": the same folder, config and names, other weights
        weight = enc.model.encoder.layer[1].intermediate.dense.weight
        weight.add_(0.1 * torch.randn(weight.shape, generator=torch.Generator().manual_seed(1)))
    retrained = OnnxRuntimeEncoder(enc, cache_dir=tmp_path)
    after = retrained.encode(TEXTS, show_progress=False)
    assert len(exports) == 2 and retrained.exports["key"] != first.exports["key"]
    assert json.loads((retrained.exports["key"].parent / "meta.json").read_text())["fused"] is True  # a new fused export
    assert np.abs(after - _torch_vectors(enc, "key")).max() <= 1e-5
    assert np.abs(after - before).max() > 1e-3


def test_a_stale_export_is_caught_by_the_probe_check(tiny_bert_dir, tmp_path, monkeypatch):
    enc = DenseEncoder.from_pretrained(tiny_bert_dir, key_max_length=16)
    monkeypatch.setattr(onnx_backend, "export_key", lambda model, names, fused: f"stale-{fused}")
    for fuse in (True, False):  # both graphs exported under the weight-blind key
        OnnxRuntimeEncoder(enc, cache_dir=tmp_path, fuse=fuse).encode(TEXTS[:2], show_progress=False)
    with torch.no_grad():
        enc.model.embeddings.word_embeddings.weight.mul_(2.0)
    with pytest.raises(UserError, match="differs from torch by"):
        OnnxRuntimeEncoder(enc, cache_dir=tmp_path).encode(TEXTS[:2], show_progress=False)


def _without_onnxruntime(monkeypatch):
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name.split(".")[0] == "onnxruntime":
            raise ImportError("No module named 'onnxruntime'", name="onnxruntime")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)


def test_missing_onnxruntime_is_one_line_before_any_model_loads(small_scifact, tmp_path, capsys, monkeypatch):  # noqa: F811
    from llm_embedder.retrieval.encode_cli import main as encode_main
    from llm_embedder.retrieval.eval_cli import main as eval_main

    _without_onnxruntime(monkeypatch)
    monkeypatch.setattr(DenseEncoder, "from_pretrained", lambda *a, **k: pytest.fail("model loaded"))
    assert check_backend("torch") == "torch"
    with pytest.raises(UserError, match="needs the onnxruntime and onnx packages \\(onnxruntime is missing\\)"):
        check_backend("onnxruntime")
    eval_data, corpus = small_scifact
    for main, argv in ((eval_main, ["--eval_data", str(eval_data), "--corpus", str(corpus)]),
                       (encode_main, ["--input", str(corpus), "--output", str(tmp_path / "emb")])):
        with pytest.raises(SystemExit) as exit_info:
            main([*argv, "--encode_backend", "onnxruntime"])
        err = capsys.readouterr().err.strip()
        assert exit_info.value.code == 2 and len(err.splitlines()) == 1 and "pip install 'llm-embedder[onnx]'" in err


def test_eval_retrieval_and_encode_with_other_backends_equal_torch(small_scifact, tiny_bert_dir, tmp_path):  # noqa: F811
    from llm_embedder.retrieval.encode_cli import main as encode_main
    from llm_embedder.retrieval.eval_cli import main as eval_main

    eval_data, corpus = small_scifact
    metrics, vectors = {}, {}
    for backend in ("torch", "onnxruntime", "onednn"):
        cache = tmp_path / f"cache-{backend}"  # separate caches: the corpus vectors must not be shared
        out = tmp_path / backend
        assert eval_main(["--eval_data", str(eval_data), "--corpus", str(corpus), "--key_template", "{title} {text}",
                          "--query_encoder", str(tiny_bert_dir), "--key_max_length", "64", "--metrics", "ndcg",
                          "recall", "mrr", "--cutoffs", "1", "10", "--hits", "20", "--save_name", "t",
                          "--output_dir", str(out), "--cache_dir", str(cache), "--encode_backend", backend]) == 0
        summary = json.loads((out / "eval.eval.t.json").read_text())
        assert summary["args"]["encode_backend"] == backend
        metrics[backend] = summary["metrics"]
        assert encode_main(["--model", str(tiny_bert_dir), "--input", str(corpus), "--key_template", "{title} {text}",
                            "--key_max_length", "64", "--output", str(out / "emb"), "--cache_dir", str(cache),
                            "--encode_backend", backend]) == 0
        vectors[backend] = np.load(out / "emb.npy")
        assert any((cache / "onnx").glob("*/model.onnx")) == (backend == "onnxruntime")
    assert vectors["torch"].shape == (48, 32)
    for backend in ("onnxruntime", "onednn"):
        assert metrics[backend] == pytest.approx(metrics["torch"], abs=1e-9)
        assert np.abs(vectors[backend] - vectors["torch"]).max() <= 1e-5


@pytest.mark.slow
def test_minilm_onnxruntime_equals_torch(minilm_dir, tmp_path):
    from llm_embedder.corpus import load_corpus

    texts = load_corpus("llm-embedder:scifact/corpus.jsonl", key_template="{title} {text}").texts[:12] + TEXTS
    enc = DenseEncoder.from_pretrained(minilm_dir)
    expected = enc.encode(texts, batch_size=8, show_progress=False)
    ort_enc = OnnxRuntimeEncoder(enc, cache_dir=tmp_path)
    got = ort_enc.encode(texts, batch_size=8, show_progress=False)
    assert np.abs(got - expected).max() <= 1e-5
    assert json.loads((ort_enc.exports["key"].parent / "meta.json").read_text())["fused"] is True
