"""``--encode_backend onednn``: oneDNN-fused Linear layers give the torch vectors, are built from a copy, and
a torch build without the operators is one line."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from llm_embedder.errors import UserError
from llm_embedder.modeling import onednn_backend
from llm_embedder.modeling.backends import check_backend, with_backend
from llm_embedder.modeling.encoder import DenseEncoder
from llm_embedder.modeling.onednn_backend import OneDNNEncoder

pytestmark = pytest.mark.skipif(not hasattr(torch.ops.mkldnn, "_linear_pointwise"), reason="torch without oneDNN linear")

TEXTS = ["what is BM25?", "a much longer passage about ranking functions, inverted indexes and how term "
         "frequency saturates in Okapi BM25", "x", "dense retrieval embeds queries and keys into one space", ""]


@pytest.mark.parametrize("untied", [False, True])
def test_onednn_vectors_equal_torch_and_every_linear_is_fused(tiny_bert_dir, monkeypatch, untied):
    enc = DenseEncoder.from_pretrained(tiny_bert_dir, key_max_length=16, tie_encoders=not untied,
                                       projection_out_dim=8 if untied else None)
    if untied:
        with torch.no_grad():
            enc.key_model.encoder.layer[0].output.dense.weight.mul_(1.5)
    expected = {side: enc.encode(TEXTS, side=side, instruction="Represent: ", batch_size=2, show_progress=False)
                for side in ("query", "key")}
    fast = with_backend(enc, "onednn")
    assert isinstance(fast, OneDNNEncoder)
    for side in ("query", "key"):
        fast.encode(TEXTS[:1], side=side, show_progress=False)
    for tower in enc._transformers():  # the vectors must come from the fused copies, not the torch towers
        monkeypatch.setattr(tower, "forward", lambda *a, **k: pytest.fail("torch transformer ran"))
    for side in ("query", "key"):
        got = fast.encode(TEXTS, side=side, instruction="Represent: ", batch_size=2, show_progress=False)
        assert got.dtype == np.float32 and np.abs(got - expected[side]).max() <= 1e-5
        # 2 layers x (q, k, v) + the pooler, plain; 2 intermediate layers with their GELU; 2 x 2 output blocks with
        # their residual add
        assert fast.counts[side] == {"linear": 7, "linear_gelu": 2, "linear_residual": 4}
    fused = fast._tower("query")
    assert not any(type(m) is torch.nn.Linear for m in fused.modules())
    assert any(type(m) is torch.nn.Linear for m in enc.model.modules())  # the wrapped encoder is unchanged


def test_fused_layers_that_differ_from_torch_are_refused(tiny_bert_dir, monkeypatch):
    enc = DenseEncoder.from_pretrained(tiny_bert_dir, key_max_length=16)
    real = onednn_backend.fuse_linears

    def off_by_a_bit(model):
        fused, counts = real(model)
        fused.embeddings.word_embeddings.weight.data.mul_(1.01)
        return fused, counts

    monkeypatch.setattr(onednn_backend, "fuse_linears", off_by_a_bit)
    with pytest.raises(UserError, match="--encode_backend onednn: the fused layers differ from torch by"):
        OneDNNEncoder(enc).encode(TEXTS, show_progress=False)


def test_torch_without_onednn_is_one_line(monkeypatch):
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
    with pytest.raises(UserError, match=r"--encode_backend onednn: this torch build \(.*\) has no oneDNN linear"):
        check_backend("onednn")


@pytest.mark.slow
def test_minilm_onednn_equals_torch(minilm_dir):
    from llm_embedder.corpus import load_corpus

    texts = load_corpus("llm-embedder:scifact/corpus.jsonl", key_template="{title} {text}").texts[:12] + TEXTS
    enc = DenseEncoder.from_pretrained(minilm_dir)
    expected = enc.encode(texts, batch_size=8, show_progress=False)
    fast = OneDNNEncoder(enc)
    assert np.abs(fast.encode(texts, batch_size=8, show_progress=False) - expected).max() <= 1e-5
    assert fast.counts["key"] == {"linear": 19, "linear_gelu": 6, "linear_residual": 12}  # 6 layers: q k v + pooler; 6 x GELU; 6 x 2 output blocks


def test_run_dense_evaluation_with_onednn_gives_the_torch_metrics(tiny_bert_dir, tmp_path, monkeypatch):
    """--encode_backend onednn reaches the evaluator run_dense builds, and its metrics equal torch's."""
    from llm_embedder.training.run import build_trainer, parse_args

    argv = ["--model_name_or_path", str(tiny_bert_dir), "--output_dir", str(tmp_path / "o"), "--use_cpu",
            "--train_data", "llm-embedder:llm_embedder_toy/qa.json", "--eval_data", "llm-embedder:llm_embedder_toy/qa.json",
            "--key_max_length", "32", "--metrics", "ndcg", "mrr", "--cutoffs", "5", "--eval_on_groups"]
    torch_eval = build_trainer(*parse_args(argv)).evaluator
    trainer = build_trainer(*parse_args([*argv, "--encode_backend", "onednn"]))
    assert trainer.evaluator.encode_backend == "onednn"
    used = []
    real = onednn_backend.OneDNNEncoder._hidden
    monkeypatch.setattr(onednn_backend.OneDNNEncoder, "_hidden", lambda self, b, s: used.append(s) or real(self, b, s))
    fast_metrics = trainer.evaluator(trainer.model.encoder)
    assert used  # guard: the fused copy did the encoding
    expected = torch_eval(trainer.model.encoder)
    assert fast_metrics.keys() == expected.keys()
    for name, value in expected.items():
        assert fast_metrics[name] == pytest.approx(value, abs=1e-6)


def test_run_dense_refuses_onednn_evaluation_with_lora_before_training(tiny_bert_dir, tmp_path):
    from llm_embedder.training.run import build_trainer, parse_args

    argv = ["--model_name_or_path", str(tiny_bert_dir), "--output_dir", str(tmp_path / "o"), "--use_cpu", "--lora",
            "--train_data", "llm-embedder:llm_embedder_toy/qa.json", "--encode_backend", "onednn"]
    with pytest.raises(UserError, match=r"^--encode_backend onednn: not with LoRA"):
        build_trainer(*parse_args(argv))
