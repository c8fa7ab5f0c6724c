"""Cross-device gathering for in-batch negatives (torch.distributed, any backend).

``gather_with_grad`` concatenates a tensor from every rank along dim 0; the local slice is the original
tensor, so it keeps its gradient, while the other ranks' slices are constants (Tevatron /
sentence-transformers style). Gradients therefore flow only into this rank's own embeddings: a loss built
on gathered tensors must cover the *global* batch on every rank and be multiplied by ``world_size()``
before backward, so that DDP's gradient averaging yields the single-process gradient (see
``docs/losses.md``). Ranks may hold different numbers of rows (a short last batch): tensors are padded
to the largest size for the collective and trimmed afterwards.

Tensors travel on the process group's device (NCCL: the rank's GPU, where embeddings already are;
gloo: the CPU) and come back on the input's device. Without an initialised process group every function
is the identity (one plain process). Ranks, devices and the other collectives live in
:mod:`llm_embedder.distributed`.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from ..distributed import group_device, is_distributed, rank, world_size

__all__ = ["gather_no_grad", "gather_with_grad", "is_distributed", "rank", "world_size"]


def _gather_parts(tensor: torch.Tensor) -> list[torch.Tensor]:
    """All ranks' tensors (no autograd) on ``tensor``'s device, allowing a different size along dim 0 per rank."""
    device = group_device()
    size = torch.tensor([tensor.shape[0]], device=device, dtype=torch.long)
    sizes = [torch.zeros_like(size) for _ in range(world_size())]
    dist.all_gather(sizes, size)
    sizes = [int(s.item()) for s in sizes]
    longest = max(sizes)
    padded = tensor.detach().to(device).contiguous()
    if padded.shape[0] < longest:
        filler = padded.new_zeros((longest - padded.shape[0], *padded.shape[1:]))
        padded = torch.cat([padded, filler], dim=0)
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return [part[:n].to(tensor.device) for part, n in zip(parts, sizes)]


def gather_no_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's ``tensor`` along dim 0, without gradient (e.g. teacher scores)."""
    if not is_distributed() or world_size() == 1:
        return tensor
    return torch.cat(_gather_parts(tensor), dim=0)


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's ``tensor`` along dim 0; this rank's slice keeps its gradient."""
    if not is_distributed() or world_size() == 1:
        return tensor
    parts = _gather_parts(tensor)
    parts[rank()] = tensor
    return torch.cat(parts, dim=0)
