"""torchrun worker: the distributed helper's collectives, and GradCache under real DDP with cross-device negatives.

Launched by ``test_grad_cache_ddp.py`` as ``torchrun --nproc_per_node 2 THIS --output DIR`` (gloo, CPU).
Each rank holds its half of a fixed global batch and trains the trainer's own module (``EmbedderModel``
around the float64 tiny BERT of ``tests/test_grad_cache.py``) wrapped in DDP, as ``EmbedderTrainer`` does
(``replay_through`` + ``find_unused_parameters=True``). It writes to ``DIR/rank{r}.json``:
- ``helper``: rank/world/device and the results of broadcast_json, all_gather_json and all_reduce_sum;
- ``dropout``: parameter gradients (DDP-averaged) of a plain step and of a GradCache step (dropout 0.2,
  same seed, the plain step embedding in the same chunks), which must be equal;
- ``nodrop``: the GradCache gradients without dropout, which the test compares with one process holding
  the global batch (this is where a missing world-size factor would show);
- ``accumulated``: two GradCache steps on that batch, the first inside ``no_sync`` (gradient accumulation):
  2x the ``nodrop`` gradients;
- ``unsynced``: a GradCache step entirely inside ``no_sync`` (the guard: local gradients differ);
- ``lora_plain`` / ``lora_gc``: the same plain-vs-GradCache pair with peft LoRA adapters (random B, LoRA
  dropout 0.1) on the frozen tiny BERT: only adapter (and head) gradients, equal.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel

from llm_embedder import distributed as helper
from llm_embedder.modeling.grad_cache import replay_through, split_inputs
from llm_embedder.modeling.losses import LossParams, compute_loss
from llm_embedder.training.model import EmbedderModel

_spec = importlib.util.spec_from_file_location("test_grad_cache", Path(__file__).parents[1] / "test_grad_cache.py")
gc_tests = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gc_tests)

B_PER_RANK, G = 2, gc_tests.G
QUERY_CHUNK, KEY_CHUNK = 1, 2
PARAMS = LossParams(contrastive_weight=0.5, distill_weight=1.0, stable_distill=True, cos_temperature=0.05,
                    negative_cross_device=True)


def global_batch():
    """Queries, keys and teacher scores of the whole global batch (both ranks' rows)."""
    world = 2
    queries = gc_tests._inputs(B_PER_RANK * world, 11)
    keys = gc_tests._inputs(B_PER_RANK * world * G, 12)
    teacher = torch.randn(B_PER_RANK * world, G, generator=torch.Generator().manual_seed(13), dtype=torch.float64)
    return queries, keys, teacher


def local_batch(rank: int):
    queries, keys, teacher = global_batch()
    rows, key_rows = slice(rank * B_PER_RANK, (rank + 1) * B_PER_RANK), slice(rank * B_PER_RANK * G, (rank + 1) * B_PER_RANK * G)
    return ({n: t[rows] for n, t in queries.items()}, {n: t[key_rows] for n, t in keys.items()}, teacher[rows])


def grads_of(module) -> dict:
    return {name: p.grad.tolist() for name, p in module.named_parameters() if p.grad is not None}


def build(dropout: float, grad_cache: bool, lora: bool = False):
    encoder = gc_tests.TinyEncoder(dropout=dropout)
    if lora:
        from peft import LoraConfig, get_peft_model

        torch.manual_seed(5)  # the same adapters on every rank
        encoder.bert = get_peft_model(encoder.bert, LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"],
                                                               lora_dropout=0.1, init_lora_weights=False))
        encoder.bert.double()
    model = EmbedderModel(encoder, PARAMS,
                          grad_cache_chunk_size=QUERY_CHUNK if grad_cache else 0,
                          grad_cache_key_chunk_size=KEY_CHUNK if grad_cache else 0).train()
    return model, DistributedDataParallel(model, find_unused_parameters=True)


def grad_cache_step(ddp, model, batch):
    queries, keys, teacher = batch
    with replay_through(ddp, model):
        out = ddp(query_inputs=queries, key_inputs=keys, teacher_scores=teacher, group_size=G)
        out["loss"].backward()


def plain_chunked_step(ddp, model, batch):
    """No GradCache, but embedding in the cache's chunks (the same dropout draws); one DDP forward."""
    queries, keys, teacher = batch

    class Chunked(torch.nn.Module):  # the forward DDP sees: every gradient-producing op inside it
        def forward(self, _):
            q = torch.cat([model.encoder.embed(c, "query") for c in split_inputs(queries, QUERY_CHUNK)])
            k = torch.cat([model.encoder.embed(c, "key") for c in split_inputs(keys, KEY_CHUNK)])
            return compute_loss(q, k, teacher, G, PARAMS)["loss"]

    model.chunked = Chunked()
    try:
        ddp.module.forward, original = (lambda *a, **k: model.chunked(None)), ddp.module.forward
        ddp(torch.zeros(1)).backward()
    finally:
        ddp.module.forward = original
        del model.chunked


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--output", required=True)
    args = parser.parse_args()
    rank, world = helper.init_from_env()
    batch = local_batch(rank)
    out = {"helper": {
        "rank": helper.rank(), "world": helper.world_size(), "local_rank": helper.local_rank(),
        "group_device": str(helper.group_device()), "local_device": str(helper.local_device()),
        "broadcast": helper.broadcast_json({"from": rank, "text": "é" * (rank + 1)}),
        "gathered": helper.all_gather_json({"rank": rank, "pad": "x" * (3 * rank)}),
        "sum": helper.all_reduce_sum(torch.tensor([rank + 1.0, 10.0], dtype=torch.float64)).tolist(),
    }}
    results = {}
    for name, dropout in (("plain_dropout", 0.2), ("gc_dropout", 0.2), ("gc_nodrop", 0.0)):
        model, ddp = build(dropout, grad_cache=name.startswith("gc"))
        torch.manual_seed(100 + rank)
        (grad_cache_step if name.startswith("gc") else plain_chunked_step)(ddp, model, batch)
        results[name] = grads_of(model)
    for name in ("lora_plain", "lora_gc"):
        model, ddp = build(0.1, grad_cache=name == "lora_gc", lora=True)
        torch.manual_seed(200 + rank)
        (grad_cache_step if name == "lora_gc" else plain_chunked_step)(ddp, model, batch)
        results[name] = grads_of(model)
    model, ddp = build(0.0, grad_cache=True)
    with ddp.no_sync():
        grad_cache_step(ddp, model, batch)
    results["unsynced"] = grads_of(model)
    grad_cache_step(ddp, model, batch)  # the accumulation's last micro-step: synced, sums both
    results["accumulated"] = grads_of(model)
    out["grads"] = results
    (Path(args.output) / f"rank{rank}.json").write_text(json.dumps(out))
    helper.destroy()


if __name__ == "__main__":
    main()
