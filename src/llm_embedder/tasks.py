"""Task registry: one declarative recipe per task (instructions, group size, selection, filters, loss).

A batch's ``task`` field picks its recipe, so one multi-task run trains qa with stable distillation, chat
with KL distillation and tool retrieval with contrastive loss only. The six built-in recipes follow the
reference's ``TASK_CONFIG["llm-embedder"]`` (see :data:`LLM_EMBEDDER_TASKS`); a YAML/JSON
``--task_config`` file overrides fields of a task or registers new tasks.

A recipe's loss is a list of terms ``[{name, weight, **params}]`` naming registered losses
(:mod:`llm_embedder.loss_settings`); a recipe that lists none gets the terms its loss settings select
(InfoNCE weighted by ``contrastive_weight`` + the distillation ``stable_distill``/``distill_loss`` pick,
weighted by ``distill_weight``). :func:`resolve_recipe` decides every field once, with this precedence
(first one set wins):

1. the task's entry in ``--task_config`` (the most specific: this task, from this run);
2. a value given explicitly on the command line (or in the arguments file) -- it applies to every task;
3. the task's recipe (built in, or registered in code with :func:`register_task`);
4. :data:`RECIPE_DEFAULTS` (the command-line defaults).

A value that only *equals* a default still counts when it was typed (``--stable_distill False`` turns
qa's stable distillation off): the parse step records which arguments were given
(``training_args.explicit_args``). One combination is an error instead of a silent choice: a term-choosing
setting (``contrastive_weight``, ``distill_weight``, ``stable_distill``, ``distill_loss``) given explicitly
for a task whose recipe lists its own ``losses``. The resolved recipes are logged when the training files
are loaded and saved as ``recipes.json`` in the output directory, each field with where it came from.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
from dataclasses import field
from pathlib import Path
from typing import Any, Mapping

from .errors import UserError
from .loss_settings import LOSS_SETTINGS, TERM_SETTINGS, LossTerm, default_terms, loss_setting_defaults, parse_terms

logger = logging.getLogger(__name__)

SELECT_POSITIVE = ("first", "random", "teacher")
SELECT_NEGATIVE = ("random", "top")

# Fields resolved through the precedence chain, with the value used when nothing sets them: the project's
# command-line defaults (training/arguments.py; a test keeps the two in step). The reference's run_dense.py
# differs in one: contrastive_weight 0.2, but its loss ignores the weight whenever the contrastive loss is
# the only one active (modeling_dense.py, _compute_loss).
RECIPE_DEFAULTS: dict[str, Any] = {
    "train_group_size": 8,
    "select_positive": "first",
    "select_negative": "random",
    "teacher_scores_margin": None,  # None = no filter
    "teacher_scores_min": None,
    "max_sample_num": None,
    **loss_setting_defaults(),
}
RESOLVED_FIELDS = tuple(RECIPE_DEFAULTS)


def _get(self, name: str, default):
    """The recipe's value for ``name``, or ``default`` when unset."""
    value = getattr(self, name, None)
    return default if value is None else value


# How records of one task are encoded, sampled and scored by the loss; ``None`` = not set here. Fields:
# name, query_instruction, key_instruction, every RESOLVED_FIELDS name, losses (list of {name, weight,
# **params}), keys_from_history (the record's ``history`` are the keys: chat), lm_template (LM scoring),
# extra. Generated from the tables above so that a loss setting is declared once (loss_settings.py).
TaskRecipe = dataclasses.make_dataclass(
    "TaskRecipe",
    [("name", str), ("query_instruction", str, field(default="")), ("key_instruction", str, field(default=""))]
    + [(name, Any, field(default=None)) for name in RESOLVED_FIELDS]
    + [("losses", Any, field(default=None)), ("keys_from_history", Any, field(default=None)),
       ("lm_template", Any, field(default=None)), ("extra", dict, field(default_factory=dict))],
    namespace={"get": _get, "__doc__": "A task's recipe: what makes it different from the defaults (None = not set)."},
)
TaskRecipe.__module__ = __name__


def _source(self, name: str) -> str:
    return dict(self.sources)[name]


def _to_dict(self) -> dict:
    """JSON-able: every field, the loss terms as mappings, and where each resolved field came from."""
    out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("losses", "sources")}
    out["losses"] = [term.to_dict() for term in self.losses]
    out["sources"] = dict(self.sources)
    return out


# A task's recipe with every field decided (see the module docstring for the precedence); ``losses`` are
# LossTerms, ``sources`` says per field "task_config" | "cli" | "recipe" | "default".
ResolvedRecipe = dataclasses.make_dataclass(
    "ResolvedRecipe",
    [("name", str), ("query_instruction", str), ("key_instruction", str)]
    + [(name, Any) for name in RESOLVED_FIELDS]
    + [("losses", tuple, field(default=())), ("keys_from_history", bool, field(default=False)),
       ("lm_template", Any, field(default=None)), ("sources", tuple, field(default=()))],
    frozen=True, namespace={"source": _source, "to_dict": _to_dict,
                            "__doc__": "A task's recipe with every field decided (tasks.resolve_recipe)."},
)
ResolvedRecipe.__module__ = __name__


# Instructions and training recipes of BAAI/llm-embedder. Source: FlagEmbedding research/llm_embedder,
# src/retrieval/data.py, TASK_CONFIG["llm-embedder"]["instruction"] and ["training"] (applied to every task
# by scripts/llm-embedder.sh through --use_train_config); docs/fine-tune.md's single-task commands agree.
# The instructions are verbatim. A recipe here keeps the reference values that differ from the defaults,
# plus stable_distill for every task (it is what tells the tasks apart). The reference table:
# - qa: stable distillation, contrastive_weight 0. Here contrastive_weight is left to the command line:
#   the reference's qa files are all teacher-scored, ours often are not (SciFact / PubMedQA as shipped,
#   iteration 0 of the 3-iteration pipeline), and with 0 such a file would train nothing. To reproduce the
#   reference exactly, set {qa: {contrastive_weight: 0}} in --task_config (docs/tasks.md).
# - icl: stable distillation, contrastive_weight 0, a random positive among the LM-chosen ones.
# - chat: KL distillation only (contrastive_weight 0), teacher_temperature 0.1, the teacher picks the positive.
# - lrlm: as chat, plus teacher_scores_margin 0.1 and max_sample_num 10000 per file.
# - tool, convsearch: contrastive loss only (distill_weight 0).
LLM_EMBEDDER_TASKS: dict[str, TaskRecipe] = {
    "qa": TaskRecipe(
        "qa", "Represent this query for retrieving relevant documents: ", "Represent this document for retrieval: ",
        stable_distill=True, lm_template="qa"),
    "convsearch": TaskRecipe(
        "convsearch", "Encode this query and context for searching relevant passages: ",
        "Encode this passage for retrieval: ",
        distill_weight=0.0, stable_distill=False, lm_template="qa"),
    "chat": TaskRecipe(
        "chat", "Embed this dialogue to find useful historical dialogues: ",
        "Embed this historical dialogue for retrieval: ",
        select_positive="teacher", contrastive_weight=0.0, distill_weight=1.0, teacher_temperature=0.1,
        stable_distill=False, keys_from_history=True, lm_template="chat"),
    "lrlm": TaskRecipe(
        "lrlm", "Embed this text chunk for finding useful historical chunks: ",
        "Embed this historical text chunk for retrieval: ",
        select_positive="teacher", teacher_scores_margin=0.1, max_sample_num=10000, contrastive_weight=0.0,
        distill_weight=1.0, teacher_temperature=0.1, stable_distill=False, lm_template="lrlm"),
    "icl": TaskRecipe(
        "icl", "Convert this example into vector to look for useful examples: ",
        "Convert this example into vector for retrieval: ",
        select_positive="random", contrastive_weight=0.0, stable_distill=True, lm_template="icl"),
    "tool": TaskRecipe(
        "tool", "Transform this user request for fetching helpful tool descriptions: ",
        "Transform this tool description for retrieval: ",
        distill_weight=0.0, stable_distill=False, lm_template="tool"),
}

# recipes as defined in code (built-in or register_task) and, separately, the --task_config overrides
_REGISTRY: dict[str, TaskRecipe] = {name: dataclasses.replace(r) for name, r in LLM_EMBEDDER_TASKS.items()}
_OVERRIDES: dict[str, dict[str, Any]] = {}


def register_task(recipe: TaskRecipe, overwrite: bool = False) -> TaskRecipe:
    """Add a custom task (or replace one with ``overwrite``)."""
    if recipe.name in _REGISTRY and not overwrite:
        raise UserError(f"task '{recipe.name}' is already registered")
    check_recipe_fields({f.name: getattr(recipe, f.name) for f in dataclasses.fields(recipe)}, f"task '{recipe.name}'")
    _REGISTRY[recipe.name] = recipe
    _OVERRIDES.pop(recipe.name, None)
    return recipe


def get_task(name: str) -> TaskRecipe:
    """The task's recipe with its ``--task_config`` overrides applied."""
    try:
        recipe = _REGISTRY[name]
    except KeyError:
        raise UserError(f"unknown task '{name}' (known: {', '.join(known_tasks())}; add one with --task_config)") from None
    overrides = _OVERRIDES.get(name)
    return dataclasses.replace(recipe, **overrides) if overrides else recipe


def known_tasks() -> list[str]:
    return sorted(_REGISTRY)


def task_instructions(tasks=None) -> dict[str, tuple[str, str]]:
    """``{task: (query instruction, key instruction)}`` for ``tasks`` (default: every registered task)."""
    names = known_tasks() if tasks is None else list(dict.fromkeys(tasks))
    return {name: (get_task(name).query_instruction, get_task(name).key_instruction) for name in names}


def _cli_value(cli, name: str):
    if cli is None:
        return None
    if isinstance(cli, Mapping):
        return cli.get(name)
    return getattr(cli, name, None)


def resolve_recipe(task: str, cli=None) -> ResolvedRecipe:
    """Decide every recipe field of ``task``: --task_config > command line > recipe > RECIPE_DEFAULTS.

    ``cli`` holds the values given explicitly (a mapping, or an object such as
    :class:`~llm_embedder.data.dataset.TrainDataArgs`); missing attributes and ``None`` count as not given.
    """
    get_task(task)  # raises on unknown tasks
    base, overridden = _REGISTRY[task], _OVERRIDES.get(task, {})
    values, sources = {}, []
    for name in RESOLVED_FIELDS:
        cli_value = _cli_value(cli, name)
        if overridden.get(name) is not None:
            value, source = overridden[name], "task_config"
            if cli_value is not None and cli_value != value:
                logger.warning("task '%s': --task_config sets %s %s for this task; --%s %s applies to the others",
                               task, name, value, name, cli_value)
        elif cli_value is not None:
            value, source = cli_value, "cli"
            if getattr(base, name) is not None and getattr(base, name) != cli_value:
                logger.info("task '%s': --%s %s replaces the recipe's %s", task, name, cli_value, getattr(base, name))
        elif getattr(base, name) is not None:
            value, source = getattr(base, name), "recipe"
        else:
            value, source = RECIPE_DEFAULTS[name], "default"
        values[name] = value
        sources.append((name, source))
    check_recipe_fields(values, f"task '{task}'")
    where = f"task '{task}'"
    spec = overridden.get("losses") if overridden.get("losses") is not None else base.losses
    if spec is not None:
        given = [n for n, src in sources if n in TERM_SETTINGS and src in ("cli", "task_config")]
        if given:
            raise UserError(f"{where}: {given[0]} is set ({dict(sources)[given[0]]}) but the task's recipe lists its "
                            f"loss terms (losses); set each term's weight in its losses entry instead")
        terms = parse_terms(spec, where)
        sources.append(("losses", "task_config" if overridden.get("losses") is not None else "recipe"))
    else:
        terms = default_terms(values)
        sources.append(("losses", "settings"))
    recipe = get_task(task)
    return ResolvedRecipe(name=task, query_instruction=recipe.query_instruction, key_instruction=recipe.key_instruction,
                          losses=terms, keys_from_history=bool(recipe.keys_from_history),
                          lm_template=recipe.lm_template, sources=tuple(sources), **values)


def describe_recipe(recipe: ResolvedRecipe) -> str:
    """One line: ``field=value (source)`` for every resolved field and the loss terms (for logs)."""
    fields_ = [f"{name}={getattr(recipe, name)} ({source})" for name, source in recipe.sources if name != "losses"]
    terms = " + ".join(f"{t.weight:g}*{t.name}" + (f"{dict(t.params)}" if t.params else "") for t in recipe.losses)
    return ", ".join(fields_ + [f"losses={terms} ({recipe.source('losses')})"])


def _check_value(name: str, value) -> str | None:
    """What is wrong with one recipe field value, or None."""
    if value is None:
        return None
    if name in LOSS_SETTINGS:
        return LOSS_SETTINGS[name].check(value)
    if name in ("query_instruction", "key_instruction", "lm_template"):
        return None if isinstance(value, str) else "must be a string"
    if name in ("train_group_size", "max_sample_num"):
        return None if isinstance(value, int) and not isinstance(value, bool) and value >= 1 else "must be an integer >= 1"
    if name == "keys_from_history":
        return None if isinstance(value, bool) else "must be true or false"
    if name == "select_positive":
        return None if value in SELECT_POSITIVE else f"must be one of {', '.join(SELECT_POSITIVE)}"
    if name == "select_negative":
        return None if value in SELECT_NEGATIVE else f"must be one of {', '.join(SELECT_NEGATIVE)}"
    if name in ("teacher_scores_margin", "teacher_scores_min"):
        finite = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        return None if finite else "must be a finite number"
    if name == "extra":
        return None if isinstance(value, dict) else "must be a mapping"
    return None


def check_recipe_fields(values: Mapping[str, Any], where: str) -> None:
    """Raise a UserError naming ``where`` and the first invalid field."""
    for name, value in values.items():
        if name == "losses" and value is not None:
            parse_terms(value, where)
            continue
        problem = _check_value(name, value)
        if problem:
            raise UserError(f"{where}: {name}: {problem}, got {value!r}")


def load_task_config(path: str | Path) -> list[str]:
    """Apply a JSON/YAML file ``{task: {field: value}}``: existing tasks are overridden, new ones registered.

    Overrides win over the command line and the built-in recipe for that task (see :func:`resolve_recipe`).
    Returns the task names the file mentions.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--task_config: {path}: file not found")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            config = yaml.safe_load(text)
        else:
            config = json.loads(text)
    except Exception as err:  # yaml.YAMLError / json.JSONDecodeError: report, do not trace back
        raise UserError(f"--task_config: {path}: cannot parse: {str(err).splitlines()[0]}") from None
    if not isinstance(config, dict):
        raise UserError(f"--task_config: {path}: must map task names to recipe fields")
    allowed = {f.name for f in dataclasses.fields(TaskRecipe)} - {"name"}
    for name, fields_ in config.items():
        if not isinstance(fields_, dict):
            raise UserError(f"--task_config: {path}: {name}: must be a mapping of recipe fields")
        unknown = set(fields_) - allowed
        if unknown:
            raise UserError(f"--task_config: {path}: {name}: unknown recipe field '{sorted(unknown)[0]}' (allowed: {', '.join(sorted(allowed))})")
        check_recipe_fields(fields_, f"--task_config: {path}: {name}")
    for name, fields_ in config.items():
        if name in _REGISTRY:
            _OVERRIDES[name] = {**_OVERRIDES.get(name, {}), **fields_}
        else:
            _REGISTRY[name] = TaskRecipe(name=name)
            _OVERRIDES[name] = dict(fields_)
    return sorted(config)
