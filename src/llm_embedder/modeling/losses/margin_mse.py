"""Margin-MSE distillation: match the student's positive-negative margins to the teacher's.

Inputs: ``q [B, D]``, ``k [B*G, D]`` (positive k_{b,0} first), ``teacher [B, G]``, ``group_size`` G >= 2.

    m^s_{b,j} = (s(q_b, k_{b,0}) - s(q_b, k_{b,j})) / student_temperature     j = 1..G-1
    m^t_{b,j} = (t_{b,0} - t_{b,j}) / teacher_temperature
    L = mean_{b,j} (m^s_{b,j} - m^t_{b,j})^2

With both temperatures at their default 1.0 this is plain Margin-MSE on s = <q,k> / cos_temperature; the
temperatures rescale either side when student and teacher scores live on different ranges.

Reference: Hofstätter et al. 2020, "Improving Efficient Neural Ranking Models with Cross-Architecture
Knowledge Distillation"; sentence-transformers ``MarginMSELoss`` (several negatives: mean over all).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .scoring import check_layout, group_scores


def margin_mse_loss(q: torch.Tensor, k: torch.Tensor, teacher: torch.Tensor, group_size: int, *,
                    cos_temperature: float = 0.01, teacher_temperature: float = 1.0,
                    student_temperature: float = 1.0) -> torch.Tensor:
    """Mean squared difference of student and teacher positive-negative margins (see module docstring)."""
    check_layout(q, k, group_size, teacher)
    if group_size < 2:
        raise ValueError("margin_mse needs at least one negative per query (group_size >= 2)")
    student = group_scores(q, k, group_size, cos_temperature) / student_temperature
    teacher = teacher.to(student.dtype) / teacher_temperature
    student_margin = student[:, :1] - student[:, 1:]
    teacher_margin = teacher[:, :1] - teacher[:, 1:]
    return F.mse_loss(student_margin, teacher_margin)
