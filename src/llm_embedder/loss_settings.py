"""The loss settings, declared once: name, default, check and meaning of every per-task loss option.

Every place that handles loss options derives from :data:`LOSS_SETTINGS`: the task recipe fields
(:mod:`llm_embedder.tasks`), their defaults and checks, the training-data arguments
(:class:`~llm_embedder.data.dataset.TrainDataArgs`), the per-batch options of the pure loss functions
(:class:`~llm_embedder.modeling.losses.LossParams`) and the registry's mapping from settings to a loss
function's keyword arguments. The command-line fields of ``run_dense.py`` (training/arguments.py) carry
the same names and defaults; a test keeps them in step.

A task's loss is a list of **terms** ``[{name, weight, **params}]``: ``name`` is a registered loss
(:func:`~llm_embedder.modeling.losses.register_loss`), ``weight`` its factor in the sum and ``params``
keyword arguments of that loss that override the settings. A recipe may list its terms (``losses:`` in
``--task_config``); otherwise they follow from the settings (:func:`default_terms`): InfoNCE weighted by
``contrastive_weight`` plus the distillation loss that ``stable_distill`` / ``distill_loss`` select,
weighted by ``distill_weight``. This module imports no torch, so reading recipes stays cheap.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from .errors import UserError

DISTILL_LOSSES = {"kl": "kl_distill", "margin_mse": "margin_mse"}  # --distill_loss value -> registered loss


def _number(minimum: float | None = None, strict: bool = False) -> Callable[[Any], str | None]:
    def check(value) -> str | None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return "must be a finite number"
        if minimum is not None and strict and not value > minimum:
            return f"must be > {minimum:g}"
        if minimum is not None and not strict and not value >= minimum:
            return f"must be >= {minimum:g}"
        return None
    return check


def _flag(value) -> str | None:
    return None if isinstance(value, bool) else "must be true or false"


def _choice(*allowed: str) -> Callable[[Any], str | None]:
    return lambda value: None if value in allowed else f"must be one of {', '.join(allowed)}"


@dataclass(frozen=True)
class LossSetting:
    """One loss option: its default, what makes a value valid, and what it means."""

    default: Any
    check: Callable[[Any], str | None]
    help: str


LOSS_SETTINGS: dict[str, LossSetting] = {
    "contrastive_weight": LossSetting(1.0, _number(0), "α in α·contrastive + β·distill."),
    "distill_weight": LossSetting(1.0, _number(0), "β in α·contrastive + β·distill (used where teacher_scores exist)."),
    "stable_distill": LossSetting(False, _flag, "Rank-aware stable distillation instead of --distill_loss."),
    "distill_loss": LossSetting("kl", _choice(*DISTILL_LOSSES), "Distillation when not stable: kl | margin_mse."),
    "teacher_temperature": LossSetting(1.0, _number(0, strict=True), "T_t: softmax(teacher / T_t)."),
    "student_temperature": LossSetting(1.0, _number(0, strict=True), "T_s: softmax(s(q,k) / T_s) in KL distillation."),
    "cos_temperature": LossSetting(0.01, _number(0, strict=True), "τ in s(q,k) = <q,k>/τ."),
    "inbatch_negatives": LossSetting(True, _flag, "Other queries' keys are negatives (contrastive and stable distillation)."),
    "stable_distill_positive_first": LossSetting(
        True, _flag, "Stable distillation: the labelled positive ranks first regardless of its teacher score."),
}
# settings that choose which terms run and how much they weigh; a recipe that lists its terms sets these there
TERM_SETTINGS = ("contrastive_weight", "distill_weight", "stable_distill", "distill_loss")


def check_loss_setting(name: str, value) -> str | None:
    """What is wrong with ``value`` for the setting ``name`` (None when fine)."""
    return LOSS_SETTINGS[name].check(value)


@dataclass(frozen=True)
class LossTerm:
    """One weighted loss of a task: ``weight * LOSSES[name](q, k, ..., **settings, **params)``.

    ``label`` names the term in the logs (``contrastive`` / ``distill`` for the default terms, else the
    loss name).
    """

    name: str
    weight: float = 1.0
    params: tuple[tuple[str, Any], ...] = ()
    label: str = ""

    def __post_init__(self):
        if not self.label:
            object.__setattr__(self, "label", self.name)

    def to_dict(self) -> dict:
        return {"name": self.name, "weight": self.weight, **dict(self.params)}


def default_terms(settings: Mapping[str, Any]) -> tuple[LossTerm, ...]:
    """The terms the settings select: InfoNCE (``contrastive``) and one distillation loss (``distill``)."""
    distill = "stable_distill" if settings["stable_distill"] else DISTILL_LOSSES[settings["distill_loss"]]
    return (LossTerm("infonce", float(settings["contrastive_weight"]), label="contrastive"),
            LossTerm(distill, float(settings["distill_weight"]), label="distill"))


def parse_terms(spec, where: str) -> tuple[LossTerm, ...]:
    """``[{name, weight, **params}]`` (a recipe's ``losses``) as LossTerms; a malformed list is a UserError.

    Whether each name is a registered loss taking those params is checked when the task's loss is built
    (:func:`llm_embedder.modeling.losses.build_task_loss`), before training starts.
    """
    if not isinstance(spec, (list, tuple)) or not spec:
        raise UserError(f"{where}: losses: must be a non-empty list of {{name, weight, ...}} mappings")
    terms, labels = [], set()
    for j, item in enumerate(spec):
        if isinstance(item, LossTerm):
            term = item
        elif isinstance(item, Mapping) and isinstance(item.get("name"), str):
            item = dict(item)
            name, weight = item.pop("name"), item.pop("weight", 1.0)
            label = item.pop("label", name)
            problem = _number(0)(weight)
            if problem:
                raise UserError(f"{where}: losses: item {j} ({name}): weight {problem}, got {weight!r}")
            term = LossTerm(name, float(weight), tuple(sorted(item.items())), label)
        else:
            raise UserError(f"{where}: losses: item {j} must be a mapping with a 'name' (a registered loss), got {item!r}")
        if term.label in labels:
            raise UserError(f"{where}: losses: two terms are labelled '{term.label}' (give one a 'label')")
        labels.add(term.label)
        terms.append(term)
    return tuple(terms)


def loss_setting_defaults() -> dict[str, Any]:
    """``{setting: default}`` for every loss setting."""
    return {name: setting.default for name, setting in LOSS_SETTINGS.items()}
