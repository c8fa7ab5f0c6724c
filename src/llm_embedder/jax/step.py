"""The jit train step: loss and parameter gradients (plain or gradient-cached), AdamW, a data-parallel mesh.

Parameters are replicated and every batch array is sharded over the mesh's ``data`` axis; the step is
written for the *global* batch, so XLA inserts the collectives and the loss of the global batch is the
cross-device loss (every query sees every device's keys). ``per_device_negatives`` instead averages
the loss of each device's slice (what DDP does without ``--negative_cross_device``).

Dropout keys: a step's key is ``fold_in(seed key, step)``; query row i gets ``split(fold_in(key, 0), B)[i]``
and key row j ``split(fold_in(key, 1), B*G)[j]``. A row's masks depend only on its key, so the gradient-
cached step (chunks of rows, each chunk with its rows' keys) and the mesh see the same masks as one
device embedding the whole batch at once.

Gradient caching (Gao et al. 2021): embed the query and key chunks without keeping activations
(``lax.map``), take the loss and its gradient w.r.t. the full-batch embeddings, then re-embed chunk by
chunk under ``lax.scan`` and pull the cached embedding gradient back to the parameters (``vjp`` per chunk),
summing. Only one chunk's activations are alive at a time.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from ..errors import UserError
from .losses import compute_loss

DATA_AXIS = "data"


def make_mesh(mesh_shape: int = -1, devices=None) -> Mesh:
    """A 1-d ``data`` mesh over ``mesh_shape`` devices (-1: all of them)."""
    devices = list(jax.devices() if devices is None else devices)
    size = len(devices) if mesh_shape in (-1, None) else int(mesh_shape)
    if not 1 <= size <= len(devices):
        raise UserError(f"--mesh_shape: {mesh_shape} devices requested, {len(devices)} available "
                        f"({devices[0].platform}; on CPU set XLA_FLAGS=--xla_force_host_platform_device_count=N)")
    return Mesh(np.asarray(devices[:size]), (DATA_AXIS,))


@dataclasses.dataclass(frozen=True)
class StepOptions:
    """What shapes the compiled step besides the arrays (hashable: one compiled program per value)."""

    group_size: int
    has_teacher: bool
    terms: tuple  # the task's JaxTerms (llm_embedder.jax.losses.task_terms)
    per_device_groups: int = 1
    grad_cache: bool = False
    query_num_chunks: int = 1
    passage_num_chunks: int = 1
    dropout: bool = True


def check_batch_layout(batch_size: int, group_size: int, mesh: Mesh, options: StepOptions) -> None:
    """One clear line, before compilation, when the batch does not divide over the mesh or the chunks."""
    devices = mesh.size
    if batch_size % devices:
        raise UserError(f"--mesh_shape: the global batch of {batch_size} queries does not divide over {devices} "
                        f"devices; use a batch size that is a multiple of {devices}")
    if options.grad_cache:
        for name, rows, chunks in (("--query_num_chunks", batch_size, options.query_num_chunks),
                                   ("--passage_num_chunks", batch_size * group_size, options.passage_num_chunks)):
            if chunks < 1 or rows % chunks:
                raise UserError(f"{name}: {chunks} chunks do not divide the {rows} rows of a batch")


def row_keys(step_key, side: int, rows: int):
    """The per-row dropout keys of one side (0 = queries, 1 = keys) of a step."""
    return jax.random.split(jax.random.fold_in(step_key, side), rows)


class Embedder:
    """``embed(params, ids, mask, side, keys)`` over a split NNX DualEncoder (pure, jit-friendly)."""

    def __init__(self, model):
        self.graphdef, self.params = nnx.split(model, nnx.Param)

    def __call__(self, params, ids, mask, side: str, keys=None):
        return nnx.merge(self.graphdef, params).embed(ids, mask, side=side, row_keys=keys)


def _loss(options: StepOptions, q, k, teacher):
    out = compute_loss(q, k, teacher if options.has_teacher else None, options.group_size, options.terms,
                       per_device_groups=options.per_device_groups)
    return out["loss"], out


def loss_and_grads(embed: Embedder, options: StepOptions) -> Callable:
    """``f(params, arrays, step_key) -> (grads, metrics)`` for one global batch."""

    def keys_for(step_key, batch):
        if not options.dropout:
            return None, None
        return (row_keys(step_key, 0, batch["query_ids"].shape[0]), row_keys(step_key, 1, batch["key_ids"].shape[0]))

    def plain(params, batch, step_key):
        qkeys, kkeys = keys_for(step_key, batch)

        def objective(p):
            q = embed(p, batch["query_ids"], batch["query_mask"], "query", qkeys)
            k = embed(p, batch["key_ids"], batch["key_mask"], "key", kkeys)
            return _loss(options, q, k, batch["teacher"])

        (_, metrics), grads = jax.value_and_grad(objective, has_aux=True)(params)
        return grads, metrics

    def cached(params, batch, step_key):
        qkeys, kkeys = keys_for(step_key, batch)
        sides = (("query", batch["query_ids"], batch["query_mask"], qkeys, options.query_num_chunks),
                 ("key", batch["key_ids"], batch["key_mask"], kkeys, options.passage_num_chunks))

        def chunked(x, n):
            return None if x is None else x.reshape(n, x.shape[0] // n, *x.shape[1:])

        reps = []
        for side, ids, mask, keys, n in sides:  # pass 1: embeddings only, no activations kept
            out = jax.lax.map(lambda c, side=side: embed(params, c[0], c[1], side, c[2]),
                              (chunked(ids, n), chunked(mask, n), chunked(keys, n)))
            reps.append(jax.lax.stop_gradient(out.reshape(ids.shape[0], -1)))
        (_, metrics), rep_grads = jax.value_and_grad(lambda q, k: _loss(options, q, k, batch["teacher"]),
                                                     argnums=(0, 1), has_aux=True)(*reps)
        grads = jax.tree_util.tree_map(jnp.zeros_like, params)
        for (side, ids, mask, keys, n), g in zip(sides, rep_grads):  # pass 2: chunked backward
            def body(acc, c, side=side):
                _, pull = jax.vjp(lambda p: embed(p, c[0], c[1], side, c[2]), params)
                return jax.tree_util.tree_map(jnp.add, acc, pull(c[3])[0]), None

            grads, _ = jax.lax.scan(body, grads, (chunked(ids, n), chunked(mask, n), chunked(keys, n), chunked(g, n)))
        return grads, metrics

    return cached if options.grad_cache else plain


def _decay_mask(params):
    """AdamW weight decay on weight matrices only (not biases, LayerNorm or embeddings' norms), as HF."""
    flat = nnx.to_flat_state(params)
    return nnx.from_flat_state([(path, not (path[-1] == "bias" or "LayerNorm" in path)) for path, _ in flat])


def make_optimizer(params, learning_rate: float, total_steps: int, warmup_steps: int, weight_decay: float = 0.0,
                   max_grad_norm: float = 1.0, accumulation_steps: int = 1, adam_beta1: float = 0.9,
                   adam_beta2: float = 0.999, adam_epsilon: float = 1e-8) -> optax.GradientTransformation:
    """AdamW with linear warm-up then linear decay to 0 (HF's ``linear`` schedule), clipping, accumulation."""
    warmup = max(0, min(warmup_steps, total_steps))
    schedule = optax.join_schedules([optax.linear_schedule(0.0, learning_rate, max(warmup, 1)),
                                     optax.linear_schedule(learning_rate, 0.0, max(total_steps - warmup, 1))], [warmup])
    mask = _decay_mask(params)
    chain = [optax.clip_by_global_norm(max_grad_norm)] if max_grad_norm and max_grad_norm > 0 else []
    chain.append(optax.adamw(schedule, b1=adam_beta1, b2=adam_beta2, eps=adam_epsilon, weight_decay=weight_decay,
                             mask=mask))
    tx = optax.chain(*chain)
    return optax.MultiSteps(tx, every_k_schedule=accumulation_steps) if accumulation_steps > 1 else tx


class TrainStep:
    """Compiled ``(params, opt_state), metrics = step(state, batch, step_key)`` per :class:`StepOptions`.

    ``state`` is donated: its buffers are reused for the updated parameters and optimizer state.
    """

    def __init__(self, embed: Embedder, tx: optax.GradientTransformation, mesh: Mesh):
        self.embed = embed
        self.tx = tx
        self.mesh = mesh
        self.replicated = NamedSharding(mesh, P())
        self.sharded = NamedSharding(mesh, P(DATA_AXIS))
        self._compiled: dict[StepOptions, Callable] = {}
        self._grads: dict[StepOptions, Callable] = {}

    def shard_batch(self, arrays: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        return {name: jax.device_put(value, self.sharded) for name, value in arrays.items()}

    def replicate(self, tree):
        return jax.device_put(tree, self.replicated)

    def grads_fn(self, options: StepOptions) -> Callable:
        """The (jit-compiled) ``(params, batch, step_key) -> (grads, metrics)`` alone, for tests and benchmarks."""
        if options not in self._grads:
            self._grads[options] = jax.jit(loss_and_grads(self.embed, options),
                                           out_shardings=(self.replicated, self.replicated))
        return self._grads[options]

    def __call__(self, state, arrays: dict[str, np.ndarray], options: StepOptions, step_key):
        if options not in self._compiled:
            check_batch_layout(arrays["query_ids"].shape[0], options.group_size, self.mesh, options)
            grads_of = loss_and_grads(self.embed, options)

            def step(state, batch, key):
                params, opt_state = state
                grads, metrics = grads_of(params, batch, key)
                updates, opt_state = self.tx.update(grads, opt_state, params)
                return (optax.apply_updates(params, updates), opt_state), metrics

            self._compiled[options] = jax.jit(step, donate_argnums=(0,),
                                              out_shardings=((self.replicated, self.replicated), self.replicated))
        return self._compiled[options](state, self.shard_batch(arrays), step_key)
