"""Loss registry: every training loss by name, each taking embeddings (never the model).

``LOSSES[name]`` is a :class:`RegisteredLoss`; calling it with ``(q, k, teacher, group_size, params)``
maps the batch's :class:`LossParams` onto the loss function's own keyword arguments and returns
``(value, gathered)`` where ``gathered`` says the value was computed on all-gathered embeddings.
``compute_loss`` combines the contrastive and distillation terms; see ``docs/losses.md``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ...errors import UserError
from ..distributed import world_size
from .combine import DISTILL_LOSSES, LossParams, compute_loss
from .infonce import infonce_loss
from .kl_distill import kl_distill_loss
from .margin_mse import margin_mse_loss
from .stable_distill import stable_distill_loss, teacher_ranking


@dataclass(frozen=True)
class RegisteredLoss:
    """A loss function plus how a batch's ``LossParams`` become its keyword arguments."""

    name: str
    fn: Callable[..., torch.Tensor]
    needs_teacher: bool
    options: Callable[[LossParams], dict]

    def __call__(self, q, k, teacher, group_size: int, params: LossParams) -> tuple[torch.Tensor, bool]:
        if self.needs_teacher and teacher is None:
            raise ValueError(f"loss '{self.name}' needs teacher scores")
        kwargs = self.options(params)
        gathered = bool(kwargs.get("cross_device", False)) and world_size() > 1
        args = (q, k, teacher, group_size) if self.needs_teacher else (q, k, group_size)
        return self.fn(*args, **kwargs), gathered


LOSSES: dict[str, RegisteredLoss] = {}


def register_loss(loss: RegisteredLoss, overwrite: bool = False) -> RegisteredLoss:
    """Add a loss to the registry (or replace one with ``overwrite``)."""
    if loss.name in LOSSES and not overwrite:
        raise UserError(f"loss '{loss.name}' is already registered")
    LOSSES[loss.name] = loss
    return loss


def get_loss(name: str) -> RegisteredLoss:
    """The registered loss ``name``; unknown names raise a one-line UserError listing the known ones."""
    if name not in LOSSES:
        raise UserError(f"unknown loss '{name}'; known: {', '.join(sorted(LOSSES))}")
    return LOSSES[name]


register_loss(RegisteredLoss("infonce", infonce_loss, False, lambda p: dict(
    cos_temperature=p.cos_temperature, inbatch_negatives=p.inbatch_negatives,
    cross_device=p.negative_cross_device and p.inbatch_negatives)))
register_loss(RegisteredLoss("kl_distill", kl_distill_loss, True, lambda p: dict(
    cos_temperature=p.cos_temperature, teacher_temperature=p.teacher_temperature,
    student_temperature=p.student_temperature)))
register_loss(RegisteredLoss("margin_mse", margin_mse_loss, True, lambda p: dict(
    cos_temperature=p.cos_temperature, teacher_temperature=p.teacher_temperature,
    student_temperature=p.student_temperature)))
register_loss(RegisteredLoss("stable_distill", stable_distill_loss, True, lambda p: dict(
    cos_temperature=p.cos_temperature, teacher_temperature=p.teacher_temperature,
    positive_first=p.stable_distill_positive_first, inbatch_negatives=p.inbatch_negatives,
    cross_device=p.negative_cross_device and p.inbatch_negatives)))

__all__ = ["DISTILL_LOSSES", "LOSSES", "LossParams", "RegisteredLoss", "compute_loss", "get_loss",
           "infonce_loss", "kl_distill_loss", "margin_mse_loss", "register_loss", "stable_distill_loss",
           "teacher_ranking"]
