"""The training objective: weighted contrastive + distillation terms, with cross-device scaling.

``compute_loss(q, k, teacher, group_size, params)`` is what the trainer calls for each batch; a batch's
task recipe fills ``LossParams``. The contrastive term is ``infonce``; the distillation term is
``stable_distill`` when ``params.stable_distill``, else the loss named by ``params.distill_loss``
(``kl`` -> ``kl_distill``, or ``margin_mse``). A term whose weight is 0 is not computed, and
distillation is skipped (reported as 0) when ``teacher`` is None: whether a task *requires* teacher
scores is the caller's concern.

Cross-device scaling: a term computed on all-gathered embeddings (``negative_cross_device`` with more
than one rank) equals the global-batch loss on every rank, but its gradient reaches only this rank's
embeddings. Backpropagating ``world_size * term`` on every rank makes DDP's averaged parameter gradient
equal the single-process gradient (as Tevatron does). ``loss`` carries that scale; ``unscaled_loss``,
``contrastive`` and ``distill`` are the plain (detached) values for logging, equal to the
single-process values on the global batch.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ...errors import UserError
from ..distributed import world_size

# --distill_loss value -> registered loss name (stable distillation is chosen by --stable_distill)
DISTILL_LOSSES = {"kl": "kl_distill", "margin_mse": "margin_mse"}


@dataclass
class LossParams:
    """Loss options of one batch (command-line defaults overridden by the batch task's recipe)."""

    contrastive_weight: float = 1.0
    distill_weight: float = 1.0
    stable_distill: bool = False
    teacher_temperature: float = 1.0
    student_temperature: float = 1.0
    cos_temperature: float = 0.01
    inbatch_negatives: bool = True
    negative_cross_device: bool = False
    stable_distill_positive_first: bool = True
    distill_loss: str = "kl"

    def __post_init__(self):
        for name in ("teacher_temperature", "student_temperature", "cos_temperature"):
            value = getattr(self, name)
            if not value > 0:
                raise UserError(f"--{name} must be > 0, got {value}")
        for name in ("contrastive_weight", "distill_weight"):
            value = getattr(self, name)
            if not value >= 0:
                raise UserError(f"--{name} must be >= 0, got {value}")
        if self.distill_loss not in DISTILL_LOSSES:
            raise UserError(f"--distill_loss must be one of {sorted(DISTILL_LOSSES)}, got {self.distill_loss!r}")

    @property
    def distill_loss_name(self) -> str:
        """Registered name of the distillation loss these params select."""
        return "stable_distill" if self.stable_distill else DISTILL_LOSSES[self.distill_loss]


def compute_loss(q: torch.Tensor, k: torch.Tensor, teacher: torch.Tensor | None, group_size: int,
                 params: LossParams) -> dict[str, torch.Tensor]:
    """``{"loss", "unscaled_loss", "contrastive", "distill"}`` for one batch (see module docstring).

    ``loss`` = scale_c * contrastive_weight * L_c + scale_d * distill_weight * L_d, where a term's scale
    is the world size when it was computed on gathered embeddings and 1 otherwise; backpropagate it.
    """
    from . import get_loss  # the registry imports this module

    terms = {"contrastive": ("infonce", params.contrastive_weight, True),
             "distill": (params.distill_loss_name, params.distill_weight, teacher is not None)}
    zero = q.new_zeros(())
    out = {"contrastive": zero, "distill": zero}
    # Anchor the objective to the graph so backward (and DDP's gradient hooks) work even if no term runs.
    loss = (q.sum() + k.sum()) * 0.0
    unscaled = zero
    for term, (name, weight, available) in terms.items():
        if weight == 0 or not available:
            continue
        registered = get_loss(name)
        value, gathered = registered(q, k, teacher, group_size, params)
        scale = world_size() if gathered else 1
        loss = loss + (scale * weight) * value
        unscaled = unscaled + weight * value.detach()
        out[term] = value.detach()
    out["loss"] = loss
    out["unscaled_loss"] = unscaled
    return out
