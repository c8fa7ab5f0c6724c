"""torchrun support for LM scoring, on top of :mod:`llm_embedder.distributed`.

Without ``WORLD_SIZE > 1`` in the environment everything is a no-op, so one plain process needs nothing.
Under torchrun each rank joins the group (NCCL on GPUs, gloo on CPUs) and loads the LM on its own GPU,
``cuda:LOCAL_RANK``. Scores are merged with one ``all_reduce`` over float64 tensors on the group's device
(each pair is scored by exactly one rank, the others contribute 0), which is exact and needs no pickling.
"""
from __future__ import annotations

import torch

from .. import distributed as dist_helper


def setup() -> tuple[int, int]:
    """``(rank, world_size)``; joins the torchrun process group when launched by it."""
    return dist_helper.init_from_env()


def teardown(world: int) -> None:
    if world > 1:
        dist_helper.destroy()


def barrier(world: int) -> None:
    if world > 1:
        dist_helper.barrier()


def rank_zero_first(rank: int, world: int):
    """Rank 0 runs the block first (e.g. a one-time conversion into a cache); the other ranks then run it."""
    return dist_helper.rank_zero_first()


def device_for(rank: int) -> torch.device:
    """The rank's own GPU (``cuda:LOCAL_RANK``; ``rank`` is the global rank, unused on purpose), else the CPU."""
    return dist_helper.local_device()


def merge_scores(scores: list[float | None], world: int) -> list[float | None]:
    """Every rank's scores combined; ``None`` where no rank scored the pair. Scored twice is a bug: raise."""
    values = torch.tensor([0.0 if s is None else s for s in scores], dtype=torch.float64)
    filled = torch.tensor([0 if s is None else 1 for s in scores], dtype=torch.int64)
    if world > 1:
        values, filled = dist_helper.all_reduce_sum(values), dist_helper.all_reduce_sum(filled)
    if bool((filled > 1).any()):
        raise RuntimeError(f"score merge: {int((filled > 1).sum())} pairs were scored by more than one rank")
    return [v if f else None for v, f in zip(values.tolist(), filled.tolist())]
