"""One task's training objective: the weighted sum of its loss terms, with cross-device scaling.

:func:`build_task_loss` turns a task's terms (``[LossTerm(name, weight, params)]``, from its resolved
recipe) and loss settings into a :class:`TaskLoss`, once, before training: each term's registered loss,
its keyword arguments (settings, then the term's own params) and a check that every name and param
exists. Calling the TaskLoss on a batch's embeddings returns ``{"loss", "unscaled_loss", <label>: value
per term}``. A term whose weight is 0 is not computed, and a term that needs teacher scores is skipped
(reported as 0) when ``teacher`` is None: whether a file *must* have teacher scores is checked when the
task loss is built for it.

Cross-device scaling: a term computed on all-gathered embeddings (``negative_cross_device`` with more
than one rank) equals the global-batch loss on every rank, but its gradient reaches only this rank's
embeddings. Backpropagating ``world_size * term`` on every rank makes DDP's averaged parameter gradient
equal the single-process gradient (as Tevatron does). ``loss`` carries that scale; ``unscaled_loss`` and
the per-term values are the plain (detached) values for logging, equal to the single-process values on
the global batch.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import torch

from ...errors import UserError
from ...loss_settings import LOSS_SETTINGS, LossTerm, default_terms
from ..distributed import world_size
from .registry import get_loss


def _check_params(self) -> None:
    for name in LOSS_SETTINGS:
        problem = LOSS_SETTINGS[name].check(getattr(self, name))
        if problem:
            raise UserError(f"--{name} {problem}, got {getattr(self, name)!r}")


# The loss settings of one task plus the run-wide --negative_cross_device, with the table's defaults
# (fields generated from LOSS_SETTINGS, so a new setting is declared in one place).
LossParams = dataclasses.make_dataclass(
    "LossParams",
    [(name, type(s.default), dataclasses.field(default=s.default)) for name, s in LOSS_SETTINGS.items()]
    + [("negative_cross_device", bool, dataclasses.field(default=False))],
    namespace={"__post_init__": _check_params,
               "__doc__": "Loss settings of one task (see llm_embedder.loss_settings.LOSS_SETTINGS)."},
)
LossParams.__module__ = __name__


class TaskLoss:
    """A task's objective, ready to call on ``(q, k, teacher, group_size)`` (see the module docstring)."""

    def __init__(self, terms: Sequence[LossTerm], settings: Mapping[str, Any], negative_cross_device: bool = False,
                 where: str = "loss"):
        self.terms = []
        for term in terms:
            registered = get_loss(term.name)
            kwargs = {kw: settings[name] for kw, name in registered.setting_keywords().items()}
            unknown = [] if registered.takes_any_keyword else sorted(set(dict(term.params)) - set(registered.keywords))
            if unknown:
                raise UserError(f"{where}: loss '{term.name}' has no parameter '{unknown[0]}' "
                                f"(it takes: {', '.join(registered.keywords) or 'none'})")
            kwargs.update(term.params)
            if "cross_device" in registered.keywords:
                kwargs["cross_device"] = bool(negative_cross_device and kwargs.get("inbatch_negatives", True))
            self.terms.append((term, registered, kwargs))

    @classmethod
    def from_params(cls, params) -> "TaskLoss":
        """The default terms (InfoNCE + the selected distillation) of a :class:`LossParams`."""
        settings = {name: getattr(params, name) for name in LOSS_SETTINGS}
        return cls(default_terms(settings), settings, params.negative_cross_device)

    @property
    def needs_teacher(self) -> bool:
        """True when every weighted term needs teacher scores (a file without them would train nothing)."""
        active = [registered for term, registered, _ in self.terms if term.weight > 0]
        return all(r.needs_teacher for r in active)

    def describe(self) -> str:
        return " + ".join(f"{t.weight:g}·{t.name}({', '.join(f'{k}={v}' for k, v in kw.items())})"
                          for t, _, kw in self.terms if t.weight > 0) or "nothing (every weight is 0)"

    def __call__(self, q: torch.Tensor, k: torch.Tensor, teacher: torch.Tensor | None,
                 group_size: int) -> dict[str, torch.Tensor]:
        zero = q.new_zeros(())
        out = {term.label: zero for term, _, _ in self.terms}
        # Anchor the objective to the graph so backward (and DDP's gradient hooks) work even if no term runs.
        loss = (q.sum() + k.sum()) * 0.0
        unscaled = zero
        for term, registered, kwargs in self.terms:
            if term.weight == 0 or (registered.needs_teacher and teacher is None):
                continue
            args = (q, k, teacher, group_size) if registered.needs_teacher else (q, k, group_size)
            value = registered.fn(*args, **kwargs)
            scale = world_size() if kwargs.get("cross_device") and world_size() > 1 else 1
            loss = loss + (scale * term.weight) * value
            unscaled = unscaled + term.weight * value.detach()
            out[term.label] = value.detach()
        out["loss"] = loss
        out["unscaled_loss"] = unscaled
        return out


def build_task_loss(recipe, negative_cross_device: bool = False) -> TaskLoss:
    """The TaskLoss of a resolved recipe (:class:`~llm_embedder.tasks.ResolvedRecipe`): its terms and settings."""
    settings = {name: getattr(recipe, name) for name in LOSS_SETTINGS}
    return TaskLoss(recipe.losses, settings, negative_cross_device, where=f"task '{recipe.name}'")


def compute_loss(q: torch.Tensor, k: torch.Tensor, teacher: torch.Tensor | None, group_size: int,
                 params) -> dict[str, torch.Tensor]:
    """``{"loss", "unscaled_loss", "contrastive", "distill"}`` for one batch with the default terms of ``params``.

    ``loss`` = scale_c * contrastive_weight * L_c + scale_d * distill_weight * L_d, where a term's scale
    is the world size when it was computed on gathered embeddings and 1 otherwise; backpropagate it.
    """
    return TaskLoss.from_params(params)(q, k, teacher, group_size)
