"""What the training dataset reads besides records: the argument values given for this run and the files.

:class:`TrainDataArgs` holds every recipe field given explicitly (None = not given; the task's recipe or
the defaults decide, see :func:`llm_embedder.tasks.resolve_recipe`), plus the seed and default task.
:func:`expand_train_paths` turns ``--train_data`` into files.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Sequence

from ..errors import UserError
from ..resources import resolve_data_path
from ..tasks import RESOLVED_FIELDS

TRAIN_FILE_SUFFIXES = (".json", ".jsonl")


def _given(source) -> dict[str, Any]:
    """The values an argument source gives: a mapping's non-None items; for an object, the fields named in
    its ``explicit_args`` (what the command line set, recorded by ``training.run.parse_args``), else -- an
    argument dataclass built in Python -- the fields whose value differs from the field's default, else
    every non-None attribute."""
    if isinstance(source, dict):
        return {k: v for k, v in source.items() if v is not None}
    explicit = getattr(source, "explicit_args", None)
    if explicit is not None:
        return {name: getattr(source, name) for name in explicit if hasattr(source, name)}
    if dataclasses.is_dataclass(source):
        out = {}
        for f in dataclasses.fields(source):
            default = f.default if f.default is not dataclasses.MISSING else (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else dataclasses.MISSING)
            value = getattr(source, f.name, None)
            if value is not None and value != default:
                out[f.name] = value
        return out
    return {name: getattr(source, name) for name in dir(source) if not name.startswith("_")
            and getattr(source, name) is not None and not callable(getattr(source, name))}


def _from_args(cls, *sources: Any) -> "TrainDataArgs":
    """Take each field from the first source that gives it (see :func:`_given`); ``seed`` and
    ``default_task`` are run settings, taken whenever set."""
    given = [_given(source) for source in sources]
    values = {}
    for f in dataclasses.fields(cls):
        for source, have in zip(sources, given):
            value = getattr(source, f.name, None) if f.name in ("seed", "default_task") and not isinstance(source, dict) \
                else have.get(f.name)
            if value is not None:
                values[f.name] = value
                break
    return cls(**values)


# The arguments the dataset reads: every recipe field (None = not given, the recipe decides), the seed and
# the default task. Build it from the Hugging Face argument dataclasses with ``TrainDataArgs.from_args``.
TrainDataArgs = dataclasses.make_dataclass(
    "TrainDataArgs",
    [(name, Any, dataclasses.field(default=None)) for name in RESOLVED_FIELDS]
    + [("seed", int, dataclasses.field(default=42)), ("default_task", Any, dataclasses.field(default=None))],
    namespace={"from_args": classmethod(_from_args),
               "__doc__": "Recipe fields given for this run (None = not given) plus seed and default_task."},
)
TrainDataArgs.__module__ = __name__


def expand_train_paths(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """Resolve ``llm-embedder:`` prefixes and directories (their ``*.json``/``*.jsonl``, sorted).

    A path given twice stays twice: the file is upsampled.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    out: list[Path] = []
    for given in paths:
        path = resolve_data_path(given)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in TRAIN_FILE_SUFFIXES
                           and not p.name.endswith(".meta.json"))  # sidecars describe files, they hold no records
            if not found:
                raise UserError(f"--train_data: {given}: directory holds no *.json / *.jsonl files")
            out.extend(found)
        elif path.is_file():
            out.append(path)
        else:
            raise UserError(f"--train_data: {given}: file not found")
    if not out:
        raise UserError("--train_data: no files given")
    return out


def how_to_set(name: str, recipe) -> str:
    """Where a user changes a resolved field: --task_config for this task wins over the command line."""
    if recipe.source(name) == "task_config":
        return f"for task '{recipe.name}' in --task_config"
    return f"with --{name} (or for task '{recipe.name}' in --task_config)"
