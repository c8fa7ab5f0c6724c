"""JAX NNX BERT vs the torch DenseEncoder / AutoModel: same weights and batch -> same embeddings (fp32, 1e-5)."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

pytest.importorskip("jax")
pytest.importorskip("flax")

import jax.numpy as jnp  # noqa: E402
import torch  # noqa: E402

from llm_embedder.errors import UserError  # noqa: E402
from llm_embedder.jax.weights import load_encoder  # noqa: E402
from llm_embedder.modeling.encoder import DenseEncoder  # noqa: E402

TEXTS = ["what is dense retrieval?", "a much longer sentence about the retrieval of documents with many words",
         "x", "Represent this query: embeddings of text and of code"]


def _torch_and_jax(path, side="query", **settings):
    enc = DenseEncoder.from_pretrained(path, **settings).eval()
    loaded = load_encoder(path, **settings)
    batch = enc.tokenize(TEXTS, side=side)
    with torch.no_grad():
        ref = enc.embed(batch, side).numpy()
        hidden = enc.model(**batch).last_hidden_state.numpy()
    ids, mask = jnp.asarray(batch["input_ids"].numpy()), jnp.asarray(batch["attention_mask"].numpy())
    out = np.asarray(loaded.model.embed(ids, mask, side=side))
    jax_hidden = np.asarray(loaded.model.tower(side)(ids, mask))
    return ref, out, hidden, jax_hidden, batch


@pytest.mark.parametrize("pooling", ["mean", "cls", "last"])
def test_tiny_bert_embeddings_match_torch(tiny_bert_dir, pooling):
    ref, out, hidden, jax_hidden, batch = _torch_and_jax(tiny_bert_dir, pooling_method=pooling)
    mask = batch["attention_mask"].numpy().astype(bool)
    np.testing.assert_allclose(jax_hidden[mask], hidden[mask], atol=1e-5)  # AutoModel's token states
    np.testing.assert_allclose(out, ref, atol=1e-5)
    assert np.abs(ref).max() > 0.05  # guard: the comparison is not between zeros


def test_tiny_bert_untied_key_tower_and_normalize_off(tiny_bert_dir):
    ref, out, *_ = _torch_and_jax(tiny_bert_dir, side="key", tie_encoders=False, normalize=False)
    np.testing.assert_allclose(out, ref, atol=1e-5)
    assert not np.allclose(np.linalg.norm(out, axis=1), 1.0)


@pytest.mark.slow
def test_minilm_embeddings_match_torch():
    ref, out, *_ = _torch_and_jax("minilm")
    np.testing.assert_allclose(out, ref, atol=1e-5)


@pytest.mark.slow
def test_dropout_masks_follow_row_keys_and_change_the_output(tiny_bert_dir):
    import jax

    model = load_encoder(tiny_bert_dir).model
    enc = DenseEncoder.from_pretrained(tiny_bert_dir)
    batch = enc.tokenize(TEXTS, side="query")
    ids, mask = jnp.asarray(batch["input_ids"].numpy()), jnp.asarray(batch["attention_mask"].numpy())
    keys = jax.random.split(jax.random.key(0), len(TEXTS))
    full = np.asarray(model.embed(ids, mask, row_keys=keys))
    half = np.asarray(model.embed(ids[2:], mask[2:], row_keys=keys[2:]))
    np.testing.assert_allclose(full[2:], half, atol=1e-6)  # a row's mask depends on its key only
    assert np.abs(full - np.asarray(model.embed(ids, mask))).max() > 1e-3  # dropout is on


def test_folder_without_safetensors_is_one_clear_error(tiny_bert_dir, tmp_path):
    folder = tmp_path / "nosafe"
    shutil.copytree(tiny_bert_dir, folder)
    (folder / "model.safetensors").unlink()
    with pytest.raises(UserError, match="no model.safetensors"):
        load_encoder(folder)


def test_missing_and_unexpected_weights_are_named(tiny_bert_dir, tmp_path):
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(tiny_bert_dir / "model.safetensors"))
    for name, change in (("missing", lambda t: t.pop("encoder.layer.1.output.dense.bias")),
                         ("unexpected", lambda t: t.update({"encoder.layer.9.extra.weight": np.zeros(2, np.float32)}))):
        folder = tmp_path / name
        shutil.copytree(tiny_bert_dir, folder)
        edited = dict(tensors)
        change(edited)
        save_file(edited, str(folder / "model.safetensors"))
        with pytest.raises(UserError, match=f"{name} weight 'encoder.layer.(1.output.dense.bias|9.extra.weight)'"):
            load_encoder(folder)


def test_unknown_pooling_is_one_clear_error(tiny_bert_dir):
    with pytest.raises(UserError, match="--pooling_method"):
        load_encoder(tiny_bert_dir, pooling_method="max")


def test_non_bert_config_is_refused(tiny_bert_dir, tmp_path):
    folder = tmp_path / "gpt"
    shutil.copytree(tiny_bert_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "gpt2"}))
    with pytest.raises(UserError, match="bert only"):
        load_encoder(folder)
