"""Task registry: one declarative recipe per task (instructions, group size, losses, temperatures).

A batch's ``task`` field picks its recipe, so one multi-task run trains qa with stable distillation, chat
with KL distillation and tool retrieval with contrastive loss only. Recipes come from the LLM-Embedder
paper and reference scripts; a YAML/JSON ``--task_config`` file overrides fields or registers new tasks.
Fields left ``None`` fall back to the command-line value.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UserError


@dataclass
class TaskRecipe:
    """How records of one task are encoded, sampled and scored by the loss."""

    name: str
    query_instruction: str = ""
    key_instruction: str = ""
    train_group_size: int | None = None
    contrastive_weight: float | None = None
    distill_weight: float | None = None
    stable_distill: bool | None = None
    teacher_temperature: float | None = None
    student_temperature: float | None = None
    inbatch_negatives: bool | None = None  # other queries' keys are negatives in the contrastive loss
    select_positive: str | None = None  # first | random | teacher
    select_negative: str | None = None  # random | top
    teacher_scores_margin: float | None = None
    teacher_scores_min: float | None = None
    lm_template: str | None = None  # the LM-scoring template (llm_embedder.lm.templates)
    extra: dict = field(default_factory=dict)

    def get(self, name: str, default):
        """The recipe's value for ``name``, or ``default`` (the command-line value) when unset."""
        value = getattr(self, name, None)
        return default if value is None else value


# Instructions as published with BAAI/llm-embedder.
LLM_EMBEDDER_TASKS: dict[str, TaskRecipe] = {
    "qa": TaskRecipe("qa", "Represent this query for retrieving relevant documents: ",
                     "Represent this document for retrieval: ",
                     stable_distill=True, lm_template="qa"),
    "convsearch": TaskRecipe("convsearch", "Encode this query and context for searching relevant passages: ",
                             "Encode this passage for retrieval: ",
                             distill_weight=0.0, lm_template="qa"),
    "chat": TaskRecipe("chat", "Embed this dialogue to find useful historical dialogues: ",
                       "Embed this historical dialogue for retrieval: ",
                       contrastive_weight=0.0, stable_distill=False, inbatch_negatives=False,
                       select_positive="teacher", lm_template="chat"),
    "lrlm": TaskRecipe("lrlm", "Embed this text chunk for finding useful historical chunks: ",
                       "Embed this historical text chunk for retrieval: ",
                       select_positive="teacher", teacher_temperature=0.1, teacher_scores_margin=0.1,
                       inbatch_negatives=False, lm_template="lrlm"),
    "icl": TaskRecipe("icl", "Convert this example into vector to look for useful examples: ",
                      "Convert this example into vector for retrieval: ",
                      stable_distill=True, lm_template="icl"),
    "tool": TaskRecipe("tool", "Transform this user request for fetching helpful tool descriptions: ",
                       "Transform this tool description for retrieval: ",
                       distill_weight=0.0, lm_template="tool"),
}

_REGISTRY: dict[str, TaskRecipe] = {name: dataclasses.replace(r) for name, r in LLM_EMBEDDER_TASKS.items()}


def register_task(recipe: TaskRecipe, overwrite: bool = False) -> TaskRecipe:
    """Add a custom task (or replace one with ``overwrite``)."""
    if recipe.name in _REGISTRY and not overwrite:
        raise UserError(f"task '{recipe.name}' is already registered")
    _REGISTRY[recipe.name] = recipe
    return recipe


def get_task(name: str) -> TaskRecipe:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UserError(f"unknown task '{name}' (known: {', '.join(sorted(_REGISTRY))}; add one with --task_config)") from None


def known_tasks() -> list[str]:
    return sorted(_REGISTRY)


def load_task_config(path: str | Path) -> list[str]:
    """Apply a JSON/YAML file ``{task: {field: value}}``: existing tasks are updated, new ones registered."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--task_config: {path}: file not found")
    text = path.read_text(encoding="utf-8")
    if path.suffix in (".yaml", ".yml"):
        import yaml

        config = yaml.safe_load(text)
    else:
        config = json.loads(text)
    if not isinstance(config, dict):
        raise UserError(f"--task_config: {path}: must map task names to recipe fields")
    allowed = {f.name for f in dataclasses.fields(TaskRecipe)} - {"name"}
    for name, fields_ in config.items():
        if not isinstance(fields_, dict):
            raise UserError(f"--task_config: {path}: {name}: must be a mapping of recipe fields")
        unknown = set(fields_) - allowed
        if unknown:
            raise UserError(f"--task_config: {path}: {name}: unknown recipe field '{sorted(unknown)[0]}' (allowed: {', '.join(sorted(allowed))})")
        if name in _REGISTRY:
            _REGISTRY[name] = dataclasses.replace(_REGISTRY[name], **fields_)
        else:
            _REGISTRY[name] = TaskRecipe(name=name, **fields_)
    return sorted(config)
