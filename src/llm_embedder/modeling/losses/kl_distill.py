"""KL distillation of the teacher's (LM reward) distribution over each query's own keys.

Inputs: ``q [B, D]``, ``k [B*G, D]``, ``teacher [B, G]`` (larger = better), ``group_size`` G.

    p_b = softmax(t_b / teacher_temperature)                      (teacher, over the G keys of query b)
    log r_b = log_softmax(s(q_b, k_{b,.}) / student_temperature)   (student, s = <q,k> / cos_temperature)
    L = 1/B * sum_b KL(p_b || r_b) = 1/B * sum_b sum_i p_{b,i} (log p_{b,i} - log r_{b,i})

i.e. ``F.kl_div(log r, p, reduction="batchmean")``. Only local keys are involved, so no cross-device
gathering is needed.

Reference: Hinton et al. 2015 (distillation with temperature); LLM-Embedder ``_compute_loss``
(non-stable distillation branch), which uses the same two temperatures.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .scoring import check_layout, group_scores


def kl_distill_loss(q: torch.Tensor, k: torch.Tensor, teacher: torch.Tensor, group_size: int, *,
                    cos_temperature: float = 0.01, teacher_temperature: float = 1.0,
                    student_temperature: float = 1.0) -> torch.Tensor:
    """Batch-mean KL(teacher || student) over each query's own G keys (see module docstring)."""
    check_layout(q, k, group_size, teacher)
    student = F.log_softmax(group_scores(q, k, group_size, cos_temperature) / student_temperature, dim=-1)
    target = F.softmax(teacher.to(student.dtype) / teacher_temperature, dim=-1)
    return F.kl_div(student, target, reduction="batchmean")
