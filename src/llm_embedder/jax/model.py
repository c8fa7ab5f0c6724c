"""A small Flax NNX BERT encoder (post-LN, GELU, dropout) and the pooled, normalised embedder on top.

Attribute names mirror Hugging Face's ``BertModel`` (``embeddings.word_embeddings``,
``encoder.layer.N.attention.self.query``, ...), so :mod:`.weights` maps a ``model.safetensors`` onto it
mechanically. Dropout takes one PRNG key *per row* (``row_keys [N]``): a row's masks depend only on its
own key, never on which chunk, device or batch it sits in, so gradient caching and the data-parallel
mesh reproduce the uncached single-device masks exactly. ``row_keys=None`` is eval mode (no dropout).
"""
from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
from flax import nnx

from ..errors import UserError

_ACTIVATIONS = {"gelu": lambda x: jax.nn.gelu(x, approximate=False),
                "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
                "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
                "relu": jax.nn.relu}
POOLINGS = ("mean", "cls", "last", "eos")


@dataclass(frozen=True)
class BertConfig:
    """The fields of a Hugging Face BERT ``config.json`` this encoder uses."""

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1

    @classmethod
    def from_dict(cls, config: dict, where: str = "config.json") -> "BertConfig":
        if config.get("model_type", "bert") != "bert":
            raise UserError(f"{where}: model_type '{config.get('model_type')}' is not supported by the JAX trainer (bert only)")
        if config.get("position_embedding_type", "absolute") != "absolute":
            raise UserError(f"{where}: position_embedding_type '{config['position_embedding_type']}' is not supported (absolute only)")
        if config.get("hidden_act", "gelu") not in _ACTIVATIONS:
            raise UserError(f"{where}: hidden_act '{config['hidden_act']}' is not supported ({', '.join(_ACTIVATIONS)})")
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in config.items() if k in names})


def dropout(x: jax.Array, rate: float, row_keys: jax.Array | None, salt: int) -> jax.Array:
    """Inverted dropout with one key per row (dim 0) folded with ``salt`` (the layer's site number)."""
    if row_keys is None or rate == 0.0:
        return x
    keep = jax.vmap(lambda key: jax.random.bernoulli(jax.random.fold_in(key, salt), 1.0 - rate, x.shape[1:]))(row_keys)
    return jnp.where(keep, x / (1.0 - rate), 0.0).astype(x.dtype)


class Embeddings(nnx.Module):
    def __init__(self, c: BertConfig, rngs: nnx.Rngs):
        self.word_embeddings = nnx.Embed(c.vocab_size, c.hidden_size, rngs=rngs)
        self.position_embeddings = nnx.Embed(c.max_position_embeddings, c.hidden_size, rngs=rngs)
        self.token_type_embeddings = nnx.Embed(c.type_vocab_size, c.hidden_size, rngs=rngs)
        self.LayerNorm = nnx.LayerNorm(c.hidden_size, epsilon=c.layer_norm_eps, rngs=rngs)
        self.rate = c.hidden_dropout_prob

    def __call__(self, input_ids, token_type_ids, row_keys):
        positions = jnp.arange(input_ids.shape[1])[None, :]
        x = self.word_embeddings(input_ids) + self.position_embeddings(positions) + self.token_type_embeddings(token_type_ids)
        return dropout(self.LayerNorm(x), self.rate, row_keys, 0)


class SelfAttention(nnx.Module):
    def __init__(self, c: BertConfig, rngs: nnx.Rngs):
        self.query = nnx.Linear(c.hidden_size, c.hidden_size, rngs=rngs)
        self.key = nnx.Linear(c.hidden_size, c.hidden_size, rngs=rngs)
        self.value = nnx.Linear(c.hidden_size, c.hidden_size, rngs=rngs)
        self.heads = c.num_attention_heads
        self.rate = c.attention_probs_dropout_prob

    def __call__(self, x, mask, row_keys, salt):
        n, length, hidden = x.shape
        split = lambda t: t.reshape(n, length, self.heads, hidden // self.heads).transpose(0, 2, 1, 3)
        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        scores = jnp.einsum("nhqd,nhkd->nhqk", q, k) / jnp.sqrt(jnp.asarray(hidden // self.heads, x.dtype))
        scores = jnp.where(mask[:, None, None, :] > 0, scores, jnp.finfo(scores.dtype).min)
        probs = dropout(jax.nn.softmax(scores, axis=-1), self.rate, row_keys, salt)
        return jnp.einsum("nhqk,nhkd->nhqd", probs, v).transpose(0, 2, 1, 3).reshape(n, length, hidden)


class DenseResidual(nnx.Module):
    """``LayerNorm(x + dropout(dense(h)))``: BERT's attention-output and layer-output blocks (post-LN)."""

    def __init__(self, d_in: int, c: BertConfig, rngs: nnx.Rngs):
        self.dense = nnx.Linear(d_in, c.hidden_size, rngs=rngs)
        self.LayerNorm = nnx.LayerNorm(c.hidden_size, epsilon=c.layer_norm_eps, rngs=rngs)
        self.rate = c.hidden_dropout_prob

    def __call__(self, h, residual, row_keys, salt):
        return self.LayerNorm(residual + dropout(self.dense(h), self.rate, row_keys, salt))


class Attention(nnx.Module):
    def __init__(self, c: BertConfig, rngs: nnx.Rngs):
        setattr(self, "self", SelfAttention(c, rngs))  # HF's name for the attention proper
        self.output = DenseResidual(c.hidden_size, c, rngs)

    def __call__(self, x, mask, row_keys, salt):
        return self.output(getattr(self, "self")(x, mask, row_keys, salt), x, row_keys, salt + 1)


class Intermediate(nnx.Module):
    def __init__(self, c: BertConfig, rngs: nnx.Rngs):
        self.dense = nnx.Linear(c.hidden_size, c.intermediate_size, rngs=rngs)
        self.act = _ACTIVATIONS[c.hidden_act]

    def __call__(self, x):
        return self.act(self.dense(x))


class Layer(nnx.Module):
    def __init__(self, c: BertConfig, rngs: nnx.Rngs):
        self.attention = Attention(c, rngs)
        self.intermediate = Intermediate(c, rngs)
        self.output = DenseResidual(c.intermediate_size, c, rngs)

    def __call__(self, x, mask, row_keys, salt):
        h = self.attention(x, mask, row_keys, salt)
        return self.output(self.intermediate(h), h, row_keys, salt + 2)


def _run_layer(layer, x, mask, row_keys, salt):
    return layer(x, mask, row_keys, salt)


_remat_layer = nnx.remat(_run_layer, static_argnums=(4,))


class Encoder(nnx.Module):
    def __init__(self, c: BertConfig, rngs: nnx.Rngs):
        self.layer = nnx.List([Layer(c, rngs) for _ in range(c.num_hidden_layers)])
        self.gradient_checkpointing = False  # recompute each layer in backward (--gradient_checkpointing)

    def __call__(self, x, mask, row_keys):
        run = _remat_layer if self.gradient_checkpointing else _run_layer
        for i, layer in enumerate(self.layer):
            x = run(layer, x, mask, row_keys, 1 + 3 * i)
        return x


class BertModel(nnx.Module):
    """BERT without the pooler head: ``(input_ids, attention_mask, row_keys) -> last_hidden_state``."""

    def __init__(self, config: BertConfig, rngs: nnx.Rngs):
        self.embeddings = Embeddings(config, rngs)
        self.encoder = Encoder(config, rngs)

    def __call__(self, input_ids, attention_mask, row_keys=None, token_type_ids=None):
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        return self.encoder(self.embeddings(input_ids, token_type_ids, row_keys), attention_mask, row_keys)


def pool(hidden: jax.Array, mask: jax.Array, method: str) -> jax.Array:
    """``[N, H]`` from ``[N, L, H]`` as :mod:`llm_embedder.modeling.pooling` does (mean, cls, last/eos)."""
    rows = jnp.arange(hidden.shape[0])
    if method == "mean":
        weights = mask[..., None].astype(hidden.dtype)
        return (hidden * weights).sum(axis=1) / jnp.maximum(weights.sum(axis=1), 1e-9)
    if method == "cls":
        return hidden[rows, jnp.argmax(mask > 0, axis=1)]
    if method in ("last", "eos"):
        positions = (mask > 0) * jnp.arange(1, mask.shape[1] + 1)
        return hidden[rows, jnp.argmax(positions, axis=1)]
    raise UserError(f"--pooling_method: '{method}' is not supported by the JAX trainer (choose from {', '.join(POOLINGS)})")


def check_pooling(method: str) -> str:
    if method not in POOLINGS:
        raise UserError(f"--pooling_method: '{method}' is not supported by the JAX trainer (choose from {', '.join(POOLINGS)})")
    return method


class DualEncoder(nnx.Module):
    """Query and key towers (one shared tower when tied), pooling and optional L2 normalisation."""

    def __init__(self, config: BertConfig, *, pooling_method: str = "mean", normalize: bool = True,
                 tie_encoders: bool = True, rngs: nnx.Rngs):
        self.query_model = BertModel(config, rngs)
        self.key_model = None if tie_encoders else BertModel(config, rngs)
        self.pooling_method = check_pooling(pooling_method)
        self.normalize = normalize
        self.config = config

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        """Keep only each layer's input for backward and recompute the rest (activation memory of one layer)."""
        for tower in (self.query_model, self.key_model):
            if tower is not None:
                tower.encoder.gradient_checkpointing = bool(enabled)

    @property
    def tie_encoders(self) -> bool:
        return self.key_model is None

    def tower(self, side: str) -> BertModel:
        return self.key_model if side == "key" and self.key_model is not None else self.query_model

    def embed(self, input_ids, attention_mask, side: str = "query", row_keys=None) -> jax.Array:
        """``[N, H]`` embeddings of one tokenised side; ``row_keys [N]`` turns dropout on."""
        hidden = self.tower(side)(input_ids, attention_mask, row_keys)
        emb = pool(hidden, attention_mask, self.pooling_method)
        if self.normalize:
            emb = emb / jnp.maximum(jnp.linalg.norm(emb, axis=-1, keepdims=True), 1e-12)
        return emb
