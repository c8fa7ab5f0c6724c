"""Stable (rank-aware, graded) distillation: LLM-Embedder's listwise loss from teacher rewards.

Inputs: ``q [B, D]``, ``k [B*G, D]`` (labelled positive k_{b,0} first), ``teacher [B, G]`` (larger =
better), ``group_size`` G.

    w_b = softmax(t_b / teacher_temperature)
    r_b = the G positions of query b ordered by teacher score, descending (ties keep their order);
          with ``positive_first`` the labelled positive is forced to rank 0 and the rest follow by score
    L   = sum_{i=0}^{G-1} 1/B sum_b w_{b, r_i} * CE_i(b)
    CE_i(b) = -log softmax over all B*G batch keys except k_{b, r_0} .. k_{b, r_{i-1}}, at k_{b, r_i}

Each query learns to rank its keys in the teacher's order: at step i its earlier-ranked keys are masked
out (only its own; other queries' keys stay as negatives) and the i-th key must win, weighted by the
teacher's probability for it. With ``inbatch_negatives=False`` the candidates are only the query's own G
keys (as in the contrastive loss with that option). The student temperature is not used (as in the reference). With
``cross_device=True`` q, k and the teacher scores are all-gathered (B global); the value equals the
single-process loss on the global batch and the caller scales it by the world size before backward.

Reference: Zhang et al. 2023, "Retrieve Anything To Augment Large Language Models" (LLM-Embedder), and
its ``_compute_loss`` (stable_distill branch). Differences: the reference takes ``softmax(t)`` without
the teacher temperature and ranks the keys in the order the batch gives them (positive first); here
``teacher_temperature`` is applied and the ordering by teacher score happens in the loss, with
``positive_first`` as an explicit option (default True, as the reference's positive-first layout).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..distributed import gather_no_grad, gather_with_grad
from .scoring import batch_scores, check_layout, group_scores, own_key_columns


def teacher_ranking(teacher: torch.Tensor, positive_first: bool = True) -> torch.Tensor:
    """``[B, G]`` group positions ordered by teacher score (descending, stable), positive first if asked."""
    if not positive_first:
        return torch.sort(teacher, dim=-1, descending=True, stable=True).indices
    rest = torch.sort(teacher[:, 1:], dim=-1, descending=True, stable=True).indices + 1
    return torch.cat([torch.zeros_like(rest[:, :1]), rest], dim=-1)


def stable_distill_loss(q: torch.Tensor, k: torch.Tensor, teacher: torch.Tensor, group_size: int, *,
                        cos_temperature: float = 0.01, teacher_temperature: float = 1.0,
                        positive_first: bool = True, inbatch_negatives: bool = True,
                        cross_device: bool = False) -> torch.Tensor:
    """Sum over ranks i of the teacher-weighted CE of each query's i-th key (see module docstring)."""
    check_layout(q, k, group_size, teacher)
    teacher = teacher.detach()
    if cross_device and not inbatch_negatives:
        raise ValueError("cross_device needs inbatch_negatives: other ranks' keys are in-batch negatives")
    if cross_device:
        q, k, teacher = gather_with_grad(q), gather_with_grad(k), gather_no_grad(teacher)
    batch = q.shape[0]
    order = teacher_ranking(teacher, positive_first)
    if inbatch_negatives:
        scores = batch_scores(q, k, cos_temperature)  # [B, B*G]
        columns = own_key_columns(batch, group_size, q.device).unsqueeze(1) + order  # [B, G] in rank order
    else:
        scores = group_scores(q, k, group_size, cos_temperature)  # [B, G]
        columns = order
    weights = F.softmax(teacher.to(scores.dtype) / teacher_temperature, dim=-1).gather(1, order)
    rows = torch.arange(batch, device=q.device)
    masked = torch.zeros_like(scores, dtype=torch.bool)
    loss = scores.new_zeros(())
    for i in range(group_size):
        target = columns[:, i]
        ce = F.cross_entropy(scores.masked_fill(masked, float("-inf")), target, reduction="none")
        loss = loss + (weights[:, i] * ce).mean()
        masked = masked.clone()
        masked[rows, target] = True
    return loss
