"""Loss registry: every training loss by name, each a pure function of embeddings (never the model).

A :class:`RegisteredLoss` says which loss settings (:data:`~llm_embedder.loss_settings.LOSS_SETTINGS`)
become which keyword arguments of its function. A task recipe selects losses by name
(``losses: [{name: my_loss, weight: 0.5, margin: 0.2}]`` in ``--task_config``), so a loss registered here
is usable from configuration without touching the trainer (docs/extending.md).
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Callable, Mapping

import torch

from ...errors import UserError
from ...loss_settings import LOSS_SETTINGS

# arguments every loss takes positionally, in this order: (q, k[, teacher], group_size)
POSITIONAL = ("q", "k", "teacher", "group_size")


@dataclass(frozen=True)
class RegisteredLoss:
    """A loss function ``fn(q, k, [teacher,] group_size, **keywords) -> scalar tensor``.

    ``settings`` maps keyword -> loss setting for keywords whose name differs from the setting's
    (stable distillation's ``positive_first`` <- ``stable_distill_positive_first``); a keyword named like
    a setting (``cos_temperature``) gets that setting without being listed. A ``cross_device`` keyword is
    filled from ``--negative_cross_device`` (only with in-batch negatives).
    """

    name: str
    fn: Callable[..., torch.Tensor]
    needs_teacher: bool
    settings: Mapping[str, str] = field(default_factory=dict)

    @property
    def keywords(self) -> tuple[str, ...]:
        """The function's keyword arguments (what a term's params may set)."""
        return tuple(name for name, p in inspect.signature(self.fn).parameters.items()
                     if name not in POSITIONAL and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))

    @property
    def takes_any_keyword(self) -> bool:
        """True when the function has ``**kwargs`` (a term may pass any param)."""
        return any(p.kind == p.VAR_KEYWORD for p in inspect.signature(self.fn).parameters.values())

    def setting_keywords(self) -> dict[str, str]:
        """``{keyword: loss setting}`` filled from the task's resolved settings."""
        out = {kw: kw for kw in self.keywords if kw in LOSS_SETTINGS}
        out.update(self.settings)
        return out


LOSSES: dict[str, RegisteredLoss] = {}


def register_loss(loss: RegisteredLoss, overwrite: bool = False) -> RegisteredLoss:
    """Add a loss to the registry (or replace one with ``overwrite``)."""
    if loss.name in LOSSES and not overwrite:
        raise UserError(f"loss '{loss.name}' is already registered")
    unknown = sorted(set(loss.settings.values()) - set(LOSS_SETTINGS))
    if unknown:
        raise UserError(f"loss '{loss.name}': unknown loss setting '{unknown[0]}' (known: {', '.join(LOSS_SETTINGS)})")
    LOSSES[loss.name] = loss
    return loss


def get_loss(name: str) -> RegisteredLoss:
    """The registered loss ``name``; unknown names raise a one-line UserError listing the known ones."""
    if name not in LOSSES:
        raise UserError(f"unknown loss '{name}'; known: {', '.join(sorted(LOSSES))}")
    return LOSSES[name]
