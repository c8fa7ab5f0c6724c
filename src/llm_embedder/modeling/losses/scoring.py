"""Shared score computation and layout checks for every loss (one place for the conventions).

Layout: ``q`` is ``[B, D]``; ``k`` is ``[B*G, D]`` flattened query-major (query b owns rows
``b*G .. b*G+G-1``) with the labelled positive first; ``teacher`` is ``[B, G]`` in the same key order.
The student score is s(q, k) = <q, k> / cos_temperature.
"""
from __future__ import annotations

import torch


def check_layout(q: torch.Tensor, k: torch.Tensor, group_size: int, teacher: torch.Tensor | None = None) -> int:
    """Validate shapes and return the number of queries B (a wrong layout is a programming error)."""
    if q.dim() != 2 or k.dim() != 2:
        raise ValueError(f"expected q [B, D] and k [B*G, D], got {tuple(q.shape)} and {tuple(k.shape)}")
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    batch = q.shape[0]
    if k.shape[0] != batch * group_size or k.shape[1] != q.shape[1]:
        raise ValueError(f"k must be [B*G, D] = [{batch * group_size}, {q.shape[1]}] for B={batch}, "
                         f"G={group_size}, got {tuple(k.shape)}")
    if teacher is not None and tuple(teacher.shape) != (batch, group_size):
        raise ValueError(f"teacher scores must be [B, G] = [{batch}, {group_size}], got {tuple(teacher.shape)}")
    return batch


def group_scores(q: torch.Tensor, k: torch.Tensor, group_size: int, cos_temperature: float) -> torch.Tensor:
    """Scores of each query against its own G keys: ``[B, G]``."""
    keys = k.view(q.shape[0], group_size, q.shape[1])
    return torch.einsum("bd,bgd->bg", q, keys) / cos_temperature


def batch_scores(q: torch.Tensor, k: torch.Tensor, cos_temperature: float) -> torch.Tensor:
    """Scores of each query against every key of the batch: ``[B, B*G]``, query b's keys at b*G.."""
    return q @ k.transpose(0, 1) / cos_temperature


def own_key_columns(batch: int, group_size: int, device: torch.device) -> torch.Tensor:
    """Column of query b's positive in the ``[B, B*G]`` score matrix: ``b * G``."""
    return torch.arange(batch, device=device) * group_size
