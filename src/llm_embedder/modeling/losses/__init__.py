"""Training losses: pure functions of embeddings, a registry by name, and one objective per task.

``LOSSES[name]`` is a :class:`RegisteredLoss` (registry.py); :class:`TaskLoss` (combine.py) is one task's
weighted sum of registered losses, built once from its resolved recipe; ``compute_loss(q, k, teacher,
group_size, LossParams(...))`` is the same for options given directly. See ``docs/losses.md``.
"""
from __future__ import annotations

from ...loss_settings import DISTILL_LOSSES, LossTerm
from .combine import LossParams, TaskLoss, build_task_loss, compute_loss
from .infonce import infonce_loss
from .kl_distill import kl_distill_loss
from .margin_mse import margin_mse_loss
from .registry import LOSSES, RegisteredLoss, get_loss, register_loss
from .stable_distill import stable_distill_loss, teacher_ranking

register_loss(RegisteredLoss("infonce", infonce_loss, needs_teacher=False))
register_loss(RegisteredLoss("kl_distill", kl_distill_loss, needs_teacher=True))
register_loss(RegisteredLoss("margin_mse", margin_mse_loss, needs_teacher=True))
register_loss(RegisteredLoss("stable_distill", stable_distill_loss, needs_teacher=True,
                             settings={"positive_first": "stable_distill_positive_first"}))

__all__ = ["DISTILL_LOSSES", "LOSSES", "LossParams", "LossTerm", "RegisteredLoss", "TaskLoss", "build_task_loss",
           "compute_loss", "get_loss", "infonce_loss", "kl_distill_loss", "margin_mse_loss", "register_loss",
           "stable_distill_loss", "teacher_ranking"]
