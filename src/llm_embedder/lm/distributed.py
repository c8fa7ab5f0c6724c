"""torchrun support for LM scoring: process group setup, rank-0-first sections and the score merge.

Without ``WORLD_SIZE > 1`` in the environment everything is a no-op, so one plain process needs nothing.
Scores are merged with one ``all_reduce`` over float64 tensors (each pair is scored by exactly one rank,
the others contribute 0), which is exact and needs no object pickling.
"""
from __future__ import annotations

import contextlib
import os

import torch
import torch.distributed as dist


def setup() -> tuple[int, int]:
    """``(rank, world_size)``; joins the torchrun process group (gloo on CPU, nccl on GPUs) when launched by it."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size()


def teardown(world: int) -> None:
    if world > 1 and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def barrier(world: int) -> None:
    if world > 1:
        dist.barrier()


@contextlib.contextmanager
def rank_zero_first(rank: int, world: int):
    """Rank 0 runs the block first (e.g. a one-time conversion into a cache); the other ranks then run it."""
    if rank != 0:
        barrier(world)
    yield
    if rank == 0:
        barrier(world)


def device_for(rank: int) -> torch.device:
    """``cuda:LOCAL_RANK`` when GPUs are visible, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def merge_scores(scores: list[float | None], world: int) -> list[float | None]:
    """Every rank's scores combined; ``None`` where no rank scored the pair. Scored twice is a bug: raise."""
    device = torch.device("cuda", torch.cuda.current_device()) if world > 1 and dist.get_backend() == "nccl" else torch.device("cpu")
    values = torch.tensor([0.0 if s is None else s for s in scores], dtype=torch.float64, device=device)
    filled = torch.tensor([0 if s is None else 1 for s in scores], dtype=torch.int64, device=device)
    if world > 1:
        dist.all_reduce(values)
        dist.all_reduce(filled)
    if bool((filled > 1).any()):
        raise RuntimeError(f"score merge: {int((filled > 1).sum())} pairs were scored by more than one rank")
    return [v if f else None for v, f in zip(values.tolist(), filled.tolist())]
