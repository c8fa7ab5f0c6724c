"""torchrun worker: each rank holds its slice of a fixed global batch and runs compute_loss cross-device.

Launched by ``test_cross_device_losses.py`` as ``torchrun --nproc_per_node 2 THIS --output DIR`` (gloo, CPU).
A tiny shared linear layer (wrapped in real DDP, so parameter gradients are averaged across ranks) maps
fixed inputs to normalised q and k embeddings; every rank writes its loss values and the gradients of
its local q, k and of the layer to ``DIR/rank{r}.json`` for the test to compare with one process that
holds the whole batch. The test imports ``CASES``, ``global_batch``, ``build_layer`` and ``embed`` from
here, so both sides use the same data and the same model.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from llm_embedder.modeling.losses import LossParams, compute_loss

IN_DIM, DIM, GROUP = 5, 4, 3

# name -> (loss options, number of queries held by each of the 2 ranks)
CASES = {
    "infonce": (dict(contrastive_weight=1.0, distill_weight=0.0, cos_temperature=0.1), (2, 2)),
    "stable_distill": (dict(contrastive_weight=0.0, distill_weight=1.0, stable_distill=True, cos_temperature=0.1,
                            teacher_temperature=0.5), (2, 2)),
    "stable_distill_by_teacher": (dict(contrastive_weight=0.0, distill_weight=1.0, stable_distill=True,
                                       stable_distill_positive_first=False, cos_temperature=0.2), (2, 2)),
    "infonce_plus_stable": (dict(contrastive_weight=0.5, distill_weight=2.0, stable_distill=True,
                                 cos_temperature=0.1), (2, 2)),
    # the KL term is local (never gathered, never scaled) while the contrastive term is gathered and scaled
    "infonce_plus_kl": (dict(contrastive_weight=1.0, distill_weight=1.5, cos_temperature=0.1,
                             teacher_temperature=0.5, student_temperature=2.0), (2, 2)),
    # ranks with different batch sizes (a short last batch): gathered terms only
    "uneven_infonce_plus_stable": (dict(contrastive_weight=1.0, distill_weight=1.0, stable_distill=True,
                                        cos_temperature=0.1), (3, 1)),
}


def global_batch(num_queries: int):
    """Fixed inputs for queries ``[B, IN_DIM]``, keys ``[B*G, IN_DIM]`` and teacher scores ``[B, G]``."""
    gen = torch.Generator().manual_seed(1234)
    x_q = torch.randn(num_queries, IN_DIM, generator=gen, dtype=torch.float64)
    x_k = torch.randn(num_queries * GROUP, IN_DIM, generator=gen, dtype=torch.float64)
    teacher = torch.randn(num_queries, GROUP, generator=gen, dtype=torch.float64) * 2
    return x_q, x_k, teacher


def build_layer() -> torch.nn.Linear:
    """The shared tiny 'encoder', identically initialised everywhere."""
    torch.manual_seed(99)
    return torch.nn.Linear(IN_DIM, DIM).double()


def embed(layer, x_q, x_k):
    """One forward over queries and keys together; returns normalised (q, k) that retain their gradient."""
    out = F.normalize(layer(torch.cat([x_q, x_k])), dim=-1)
    q, k = out[: x_q.shape[0]], out[x_q.shape[0]:]
    q.retain_grad()
    k.retain_grad()
    return q, k


def run_case(options: dict, sizes: tuple[int, int], rank: int) -> dict:
    from torch.nn.parallel import DistributedDataParallel

    x_q, x_k, teacher = global_batch(sum(sizes))
    start = sum(sizes[:rank])
    rows = slice(start, start + sizes[rank])
    key_rows = slice(start * GROUP, (start + sizes[rank]) * GROUP)
    layer = DistributedDataParallel(build_layer())
    q, k = embed(layer, x_q[rows], x_k[key_rows])
    params = LossParams(negative_cross_device=True, **options)
    out = compute_loss(q, k, teacher[rows], GROUP, params)
    out["loss"].backward()
    return {
        **{name: float(out[name].detach()) for name in ("loss", "unscaled_loss", "contrastive", "distill")},
        "q_grad": q.grad.tolist(), "k_grad": k.grad.tolist(),
        "weight_grad": layer.module.weight.grad.tolist(), "bias_grad": layer.module.bias.grad.tolist(),
    }


def unscaled_infonce_weight_grad(rank: int) -> list:
    """The layer gradient when the gathered InfoNCE is backpropagated *without* the world-size scale."""
    from torch.nn.parallel import DistributedDataParallel

    from llm_embedder.modeling.losses import infonce_loss

    options, sizes = CASES["infonce"]
    x_q, x_k, _ = global_batch(sum(sizes))
    rows = slice(rank * sizes[0], (rank + 1) * sizes[0])
    key_rows = slice(rows.start * GROUP, rows.stop * GROUP)
    layer = DistributedDataParallel(build_layer())
    q, k = embed(layer, x_q[rows], x_k[key_rows])
    infonce_loss(q, k, GROUP, cos_temperature=options["cos_temperature"], cross_device=True).backward()
    return layer.module.weight.grad.tolist()


def main():
    import torch.distributed as dist

    parser = argparse.ArgumentParser()
    parser.add_argument("--output", required=True)
    args = parser.parse_args()
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    results = {name: run_case(options, sizes, rank) for name, (options, sizes) in CASES.items()}
    path = Path(args.output) / f"rank{rank}.json"
    payload = {"world_size": dist.get_world_size(), "cases": results,
               "unscaled_infonce_weight_grad": unscaled_infonce_weight_grad(rank)}
    path.write_text(json.dumps(payload))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
