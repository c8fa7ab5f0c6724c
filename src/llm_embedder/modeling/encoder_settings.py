"""Encoder settings: one frozen dataclass with the one set of defaults, their checks, and how a directory's
saved settings combine with the ones passed in.

:class:`EncoderSettings` holds what decides how text becomes a vector (pooling, normalisation, max lengths,
tied or separate key encoder, projection) and how it is fine-tuned (LoRA). Its defaults are the only ones:
``DenseEncoder.from_pretrained``'s keyword defaults and the ``run_dense.py`` arguments equal them (a test
keeps them in step). :func:`resolve_settings` decides each setting: passed > the directory's
``llm_embedder.json`` > its sentence-transformers modules > the defaults.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from ..errors import UserError
from .pooling import available_poolings, get_pooling
from .st_format import SETTINGS_FILE, load_json, read_sentence_transformers_layout

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EncoderSettings:
    """How an encoder embeds (saved with the model) and how it is fine-tuned (LoRA, not saved)."""

    pooling_method: str = "mean"
    normalize: bool = True
    query_max_length: int = 256
    key_max_length: int = 256
    tie_encoders: bool = True
    add_pooler: bool = False
    projection_out_dim: int | None = None
    lora_rank: int = 0
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_target_modules: tuple[str, ...] | str | None = None


_DEFAULT = EncoderSettings()
LORA_FIELDS = ("lora_rank", "lora_alpha", "lora_dropout", "lora_target_modules")
# the settings a model directory records (llm_embedder.json) and their defaults
DEFAULTS = {f.name: getattr(_DEFAULT, f.name) for f in dataclasses.fields(EncoderSettings) if f.name not in LORA_FIELDS}


def check_instructions(instructions) -> dict[str, tuple[str, str]]:
    """``{task: (query_instruction, key_instruction)}``, checked; a UserError names what is wrong."""
    if not isinstance(instructions, Mapping):
        raise UserError(f"instructions: expected {{task: (query_instruction, key_instruction)}}, got {type(instructions).__name__}")
    checked = {}
    for task, pair in instructions.items():
        if isinstance(pair, Mapping):
            pair = (pair.get("query"), pair.get("key"))
        if (not isinstance(task, str) or not isinstance(pair, (list, tuple)) or len(pair) != 2
                or not all(isinstance(p, str) for p in pair)):
            raise UserError(f"instructions[{task!r}]: expected a (query_instruction, key_instruction) pair of strings, got {pair!r}")
        checked[task] = (pair[0], pair[1])
    return checked


def check_settings(settings: dict, where: str) -> None:
    """Raise a one-line UserError for the first setting with a wrong type or value (``where`` names its source)."""
    def fail(name, what):
        raise UserError(f"{where}{name}: {what}, got {settings[name]!r}")

    if not isinstance(settings["pooling_method"], str):
        fail("pooling_method", "expected a string")
    try:
        get_pooling(settings["pooling_method"])
    except UserError:
        fail("pooling_method", f"expected one of {', '.join(available_poolings())}")
    for name in ("normalize", "tie_encoders", "add_pooler"):
        if not isinstance(settings[name], bool):
            fail(name, "expected true or false")
    for name in ("query_max_length", "key_max_length"):
        if isinstance(settings[name], bool) or not isinstance(settings[name], int) or settings[name] < 1:
            fail(name, "expected a positive integer")
    dim = settings["projection_out_dim"]
    if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int) or dim < 1):
        fail("projection_out_dim", "expected a positive integer")


def check_lora(rank, alpha, dropout) -> None:
    """One-line UserErrors for bad LoRA arguments (before any model is loaded)."""
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 0:
        raise UserError(f"--lora_rank: expected an integer >= 0, got {rank!r}")
    if rank and (isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or alpha <= 0):
        raise UserError(f"--lora_alpha: expected a positive number, got {alpha!r}")
    if rank and (isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0):
        raise UserError(f"--lora_dropout: expected a value in [0, 1), got {dropout!r}")


def resolve_settings(path: Path, explicit: dict) -> tuple[dict, dict, dict]:
    """``(settings, saved, layout)``: explicit > llm_embedder.json > sentence-transformers modules > defaults."""
    layout = read_sentence_transformers_layout(path)
    saved: dict = {}
    settings_file = path / SETTINGS_FILE
    if settings_file.is_file():
        saved = load_json(settings_file)
        if not isinstance(saved, dict):
            raise UserError(f"{settings_file}: expected a JSON object")
        missing = [k for k in DEFAULTS if k not in saved]
        if missing:
            raise UserError(f"{settings_file}: missing {', '.join(missing)}")
        check_settings(saved, f"{settings_file}: ")
        if saved.get("instructions"):
            saved["instructions"] = check_instructions(saved["instructions"])
    elif layout:
        if layout["ignored"]:
            logger.warning("%s: ignoring sentence-transformers modules %s", path, ", ".join(layout["ignored"]))
        if "dense_dir" in layout:
            logger.warning("%s: ignoring its sentence-transformers Dense layer (not saved by llm-embedder)", path)
        if "pooling_method" in layout:
            saved["pooling_method"] = layout["pooling_method"]
        saved["normalize"] = layout["normalize"]

    settings = {}
    for name, default in DEFAULTS.items():
        value = explicit[name]
        if value is None:
            value = saved.get(name, default)
        elif name in saved and saved[name] != value:
            logger.warning("%s: %s=%r overrides the saved %r", path, name, value, saved[name])
        settings[name] = value
    if str(settings["pooling_method"]).startswith("unsupported:"):
        raise UserError(f"--pooling_method: {path} uses sentence-transformers pooling "
                        f"'{settings['pooling_method'][12:]}', which is not implemented; pass --pooling_method")
    if explicit["projection_out_dim"] is not None and explicit["add_pooler"] is None:
        settings["add_pooler"] = True  # asking for an output size asks for the projection
    if not settings["add_pooler"]:
        settings["projection_out_dim"] = None
    if settings["tie_encoders"] and saved.get("tie_encoders") is False:
        raise UserError(f"--tie_encoders: {path} holds separate query and key encoders; they cannot be tied on load")
    return settings, saved, layout

