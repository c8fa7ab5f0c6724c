"""The JAX trainer end to end: interrupt and resume from orbax == uninterrupted; the export loads in DenseEncoder,
AutoModel and SentenceTransformer with the JAX embeddings; bad arguments fail with one line."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("jax")
pytest.importorskip("orbax.checkpoint")

import jax  # noqa: E402

from jax_helpers import enable_compilation_cache, train_args  # noqa: E402
from llm_embedder.errors import UserError  # noqa: E402
from llm_embedder.jax import train  # noqa: E402

TEXTS = ["what is dense retrieval?", "tools for the weather", "a longer sentence about documents and queries"]


def _train(argv, stop_after=None):
    run = train.build(*train.parse_args(argv))
    state, stats = train.train_loop(run, stop_after=stop_after)
    return run, state, stats


@pytest.fixture(scope="module")
def uninterrupted(tiny_bert_dir, tmp_path_factory):
    enable_compilation_cache()
    out = tmp_path_factory.mktemp("jax_full")
    run, state, stats = _train(train_args(tiny_bert_dir, out, "--max_steps", "3"))
    return run, state, stats, out


@pytest.mark.slow
def test_interrupt_and_resume_equals_uninterrupted(tiny_bert_dir, tmp_path, uninterrupted):
    run, full, stats, _ = uninterrupted
    assert stats["steps"] == 3
    argv = train_args(tiny_bert_dir, tmp_path / "parted", "--max_steps", "3", "--save_steps", "1")
    _, part, _ = _train(argv, stop_after=1)  # the run stops after the checkpoint of step 1 (mid-epoch)
    assert (tmp_path / "parted" / "checkpoints" / "1").is_dir()
    _, resumed, resumed_stats = _train(argv + ["--resume_from_checkpoint", "latest"])
    assert resumed_stats["steps"] == 3
    leaves = lambda s: [np.asarray(x) for x in jax.tree_util.tree_leaves(s["params"])]
    for a, b in zip(leaves(full), leaves(resumed)):
        np.testing.assert_allclose(b, a, atol=1e-6)
    moved = max(float(np.abs(a - b).max()) for a, b in zip(leaves(full), leaves(part)))
    assert moved > 1e-4  # guard: two more steps change the weights, so the equality above is not trivial


@pytest.mark.slow
def test_export_loads_in_dense_encoder_automodel_and_sentence_transformers(uninterrupted, tmp_path):
    import torch
    from flax import nnx
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel

    from llm_embedder.jax.export import export_model
    from llm_embedder.modeling.encoder import DenseEncoder
    from llm_embedder.modeling.pooling import mean_pool

    run, state, _, _ = uninterrupted
    out = export_model(run.loaded, run.embed.graphdef, state["params"], tmp_path / "export", {"qa": ("Q: ", "D: ")})
    trained = nnx.merge(run.embed.graphdef, state["params"])
    encoder = DenseEncoder.from_pretrained(out)
    assert encoder.instructions == {"qa": ("Q: ", "D: ")} and encoder.max_lengths == {"query": 32, "key": 64}
    batch = encoder.tokenize(TEXTS, side="key")
    expected = np.asarray(trained.embed(batch["input_ids"].numpy(), batch["attention_mask"].numpy(), side="key"))
    np.testing.assert_allclose(encoder.encode(TEXTS, side="key", show_progress=False), expected, atol=1e-5)
    with torch.no_grad():
        hidden = AutoModel.from_pretrained(out)(**batch).last_hidden_state
    pooled = torch.nn.functional.normalize(mean_pool(hidden, batch["attention_mask"]), dim=-1).numpy()
    np.testing.assert_allclose(pooled, expected, atol=1e-5)
    np.testing.assert_allclose(SentenceTransformer(str(out), device="cpu").encode(TEXTS), expected, atol=1e-5)
    base = DenseEncoder.from_pretrained(run.loaded.path, key_max_length=64).encode(TEXTS, side="key", show_progress=False)
    assert np.abs(base - expected).max() > 1e-4  # guard: training moved the weights


def test_bad_arguments_fail_with_one_line_before_loading(tiny_bert_dir, tmp_path):
    with pytest.raises(UserError, match="--pooling_method: 'max' is not supported"):
        train.build(*train.parse_args(train_args(tiny_bert_dir, tmp_path / "a", "--pooling_method", "max")))
    with pytest.raises(UserError, match="--lora_rank"):
        train.build(*train.parse_args(train_args(tiny_bert_dir, tmp_path / "b", "--lora_rank", "4")))
    with pytest.raises(UserError, match="--query_num_chunks"):
        train.build(*train.parse_args(train_args(tiny_bert_dir, tmp_path / "c", "--grad_cache", "--query_num_chunks", "3")))
    import shutil

    shutil.copytree(tiny_bert_dir, tmp_path / "nosafe")
    (tmp_path / "nosafe" / "model.safetensors").unlink()
    with pytest.raises(UserError, match="no model.safetensors"):
        train.build(*train.parse_args(train_args(tmp_path / "nosafe", tmp_path / "d")))
