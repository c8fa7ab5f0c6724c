"""GradCache: the full-batch loss with the activation memory of one sub-batch (Gao et al. 2021).

"Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup" (Gao, Zhang, Han, Callan 2021):

1. embed queries and keys in chunks of ``chunk_size`` rows without building a graph, recording each
   chunk's RNG state;
2. compute the loss (any function of the embeddings, e.g. ``compute_loss``) on the full batch of
   embeddings and the gradient of the loss with respect to every embedding (the "cache");
3. when the caller runs ``loss.backward()``, re-embed each chunk with a graph under its recorded RNG
   state (same dropout masks) and backpropagate the cached embedding gradient through it.

Parameter gradients equal those of the uncached computation (up to float rounding). ``loss`` is returned
as a leaf whose backward hook runs step 3, so a Hugging Face Trainer's ``loss.backward()`` (including its
division by the gradient-accumulation steps) works unchanged, as in sentence-transformers'
``CachedMultipleNegativesRankingLoss``. Limitation: under DDP each chunk's backward would fire DDP's
per-parameter hooks once per chunk, which DDP rejects; ``grad_cached_loss`` therefore refuses to run with
more than one rank (use cross-device negatives with plain batches there).
"""
from __future__ import annotations

from typing import Callable, Mapping

import torch
from torch.utils.checkpoint import get_device_states, set_device_states

from .distributed import world_size

EmbedFn = Callable[[Mapping[str, torch.Tensor], str], torch.Tensor]


class RandContext:
    """The RNG state (CPU and the devices of ``tensors``) at creation, restored inside ``with``."""

    def __init__(self, *tensors: torch.Tensor):
        self.cpu_state = torch.get_rng_state()
        self.devices, self.device_states = get_device_states(*tensors)
        self._fork = None

    def __enter__(self):
        self._fork = torch.random.fork_rng(devices=self.devices, enabled=True)
        self._fork.__enter__()
        torch.set_rng_state(self.cpu_state)
        set_device_states(self.devices, self.device_states)

    def __exit__(self, *exc):
        self._fork.__exit__(*exc)
        self._fork = None


def split_inputs(inputs: Mapping[str, torch.Tensor], chunk_size: int) -> list[dict[str, torch.Tensor]]:
    """Row chunks of a tokenised batch (every tensor sliced along dim 0)."""
    rows = {value.shape[0] for value in inputs.values()}
    if len(rows) != 1:
        raise ValueError(f"all input tensors must have the same number of rows, got {sorted(rows)}")
    total = rows.pop()
    return [{name: value[start:start + chunk_size] for name, value in inputs.items()}
            for start in range(0, total, chunk_size)]


def _embed_without_graph(embed: EmbedFn, chunks: list[dict], side: str) -> tuple[torch.Tensor, list[RandContext]]:
    states, parts = [], []
    for chunk in chunks:
        states.append(RandContext(*chunk.values()))
        with torch.no_grad():
            parts.append(embed(chunk, side))
    return torch.cat(parts).detach().requires_grad_(), states


def grad_cached_loss(embed: EmbedFn, query_inputs: Mapping[str, torch.Tensor],
                     key_inputs: Mapping[str, torch.Tensor],
                     loss_fn: Callable[[torch.Tensor, torch.Tensor], dict[str, torch.Tensor]],
                     chunk_size: int) -> dict[str, torch.Tensor]:
    """``loss_fn(q, k)`` on chunk-wise embeddings; its ``"loss"`` backpropagates chunk by chunk.

    ``embed(inputs, side)`` maps a (chunk of a) tokenised batch to embeddings, ``side`` being "query" or
    "key"; ``loss_fn`` returns a dict with a scalar ``"loss"`` (other entries are passed through).
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if world_size() > 1:
        raise ValueError("grad_cached_loss does not support more than one rank (DDP hooks fire once per chunk)")
    query_chunks, key_chunks = split_inputs(query_inputs, chunk_size), split_inputs(key_inputs, chunk_size)
    q, q_states = _embed_without_graph(embed, query_chunks, "query")
    k, k_states = _embed_without_graph(embed, key_chunks, "key")
    with torch.enable_grad():
        out = dict(loss_fn(q, k))
        q_grad, k_grad = torch.autograd.grad(out["loss"], [q, k], allow_unused=True, materialize_grads=True)

    def backward_through_chunks(grad_output: torch.Tensor):
        with torch.enable_grad():
            for side, chunks, states, grad in (("query", query_chunks, q_states, q_grad),
                                                ("key", key_chunks, k_states, k_grad)):
                start = 0
                for chunk, state in zip(chunks, states):
                    with state:
                        emb = embed(chunk, side)
                    emb.backward(grad[start:start + emb.shape[0]] * grad_output)
                    start += emb.shape[0]

    loss = out["loss"].detach().requires_grad_()
    loss.register_hook(backward_through_chunks)
    out["loss"] = loss
    return out
