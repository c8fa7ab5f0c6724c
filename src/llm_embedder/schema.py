"""The record schema every tool reads and writes (DESIGN.md §2), with whole-file validation.

A record is a JSON object: ``query`` plus keys given as texts (``pos``/``neg``), as corpus rows
(``pos_index``/``neg_index``) or, for chat, as ``history``; ``teacher_scores`` align with ``pos + neg``
(or ``history``). Unknown fields are kept on every round trip.

Files are JSON lines, or one JSON array. Validation reads the whole file first and reports every problem
as ``file:line: field: what is wrong`` before any training, scoring or mining starts.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from .errors import UserError
from .resources import resolve_data_path

TEXT_LIST_FIELDS = ("pos", "neg", "history", "answers")
INDEX_LIST_FIELDS = ("pos_index", "neg_index")
MAX_REPORTED_ERRORS = 50

# what a file is used for decides which fields it must have
PURPOSES = ("train", "eval", "score", "any")


@dataclass
class RecordFile:
    """The records of one file with the 1-based line (or array item) each came from."""

    path: Path
    records: list[dict]
    lines: list[int] = field(default_factory=list)

    def where(self, i: int) -> str:
        """``file:line`` of record ``i`` for error messages."""
        return f"{self.path}:{self.lines[i] if self.lines else i + 1}"

    def __len__(self) -> int:
        return len(self.records)


def read_json_objects(path: str | os.PathLike) -> tuple[Path, list[dict], list[int]]:
    """Parse a JSONL file or a JSON array into ``(path, objects, line numbers)``; bad JSON is a UserError."""
    path = resolve_data_path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    text = path.read_text(encoding="utf-8")
    objects, lines = [], []
    if text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as err:
            raise UserError(f"{path}:{err.lineno}: invalid JSON: {err.msg}") from None
        for n, item in enumerate(items, 1):
            if not isinstance(item, dict):
                raise UserError(f"{path}:{n}: item {n} of the JSON array is a {type(item).__name__}, not an object")
            objects.append(item)
            lines.append(n)
        return path, objects, lines
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise UserError(f"{path}:{n}: invalid JSON: {err.msg} (column {err.colno})") from None
        if not isinstance(obj, dict):
            raise UserError(f"{path}:{n}: expected a JSON object, got {type(obj).__name__}")
        objects.append(obj)
        lines.append(n)
    return path, objects, lines


def read_records(path: str | os.PathLike, *, purpose: str = "any", corpus_size: int | None = None,
                 known_tasks: Iterable[str] | None = None, validate: bool = True) -> RecordFile:
    """Read a schema file; with ``validate`` raise one UserError listing every problem in the file."""
    path, objects, lines = read_json_objects(path)
    rf = RecordFile(path, objects, lines)
    if validate:
        raise_if_errors(validate_records(rf, purpose=purpose, corpus_size=corpus_size, known_tasks=known_tasks))
    return rf


def raise_if_errors(errors: Sequence[str]) -> None:
    """Raise a UserError holding the first :data:`MAX_REPORTED_ERRORS` problems, one per line."""
    if not errors:
        return
    shown = list(errors[:MAX_REPORTED_ERRORS])
    if len(errors) > len(shown):
        shown.append(f"... and {len(errors) - len(shown)} more problems")
    raise UserError("\n".join(shown))


def num_keys(record: dict) -> int:
    """How many candidate keys a record has: ``len(history)`` for chat rows, else positives + negatives."""
    if record.get("history") is not None and not (record.get("pos") or record.get("pos_index") or record.get("neg") or record.get("neg_index")):
        return len(record["history"])
    n_pos = len(record["pos"]) if record.get("pos") is not None else len(record.get("pos_index") or [])
    n_neg = len(record["neg"]) if record.get("neg") is not None else len(record.get("neg_index") or [])
    return n_pos + n_neg


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def validate_record(record: dict, *, purpose: str = "any", corpus_size: int | None = None,
                    known_tasks: Iterable[str] | None = None) -> list[str]:
    """Every problem with one record as ``field: what is wrong`` (no location prefix)."""
    problems: list[str] = []
    query = record.get("query")
    if "query" not in record:
        problems.append("query: missing")
    elif not isinstance(query, str):
        problems.append(f"query: must be a string, got {type(query).__name__}")
    elif not query.strip():
        problems.append("query: empty")
    for name in TEXT_LIST_FIELDS:
        value = record.get(name)
        if value is None:
            continue
        if not isinstance(value, list):
            problems.append(f"{name}: must be a list of strings, got {type(value).__name__}")
        elif not all(isinstance(v, str) for v in value):
            bad = next(v for v in value if not isinstance(v, str))
            problems.append(f"{name}: must be a list of strings, found {type(bad).__name__} {bad!r:.40}")
    for name in INDEX_LIST_FIELDS:
        value = record.get(name)
        if value is None:
            continue
        if not isinstance(value, list) or not all(_is_int(v) for v in value):
            problems.append(f"{name}: must be a list of integers (corpus row numbers)")
            continue
        if any(v < 0 for v in value):
            problems.append(f"{name}: negative row number {min(value)}")
        if corpus_size is not None and any(v >= corpus_size for v in value):
            problems.append(f"{name}: row {max(value)} is beyond the corpus ({corpus_size} rows)")
        texts = record.get(name[: -len("_index")])
        if isinstance(texts, list) and texts and len(texts) != len(value):
            problems.append(f"{name}: {len(value)} indices but {len(texts)} texts in {name[:-6]}")
    if "task" in record:
        task = record["task"]
        if not isinstance(task, str) or not task:
            problems.append("task: must be a non-empty string")
        elif known_tasks is not None and task not in set(known_tasks):
            problems.append(f"task: unknown task '{task}' (known: {', '.join(sorted(known_tasks))}; register custom tasks with --task_config)")
    if "query_id" in record and not (_is_int(record["query_id"]) or isinstance(record["query_id"], str)):
        problems.append(f"query_id: must be an integer or a string, got {type(record['query_id']).__name__}")
    if "context" in record and not isinstance(record["context"], str):
        problems.append("context: must be a string")
    if problems:  # later checks assume well-typed fields
        return problems

    n_keys = num_keys(record)
    scores = record.get("teacher_scores")
    if scores is not None:
        if not isinstance(scores, list) or not all(_is_number(s) for s in scores):
            problems.append("teacher_scores: must be a list of numbers")
        else:
            if any(not math.isfinite(s) for s in scores):
                problems.append("teacher_scores: contains NaN or infinity")
            if len(scores) != n_keys:
                what = "history" if record.get("history") is not None and not (record.get("pos") or record.get("pos_index")) else "pos + neg"
                problems.append(f"teacher_scores: {len(scores)} scores for {n_keys} keys ({what})")
    has_pos = bool(record.get("pos") or record.get("pos_index"))
    if record.get("task") == "chat" and not record.get("history"):
        problems.append("history: chat records need a non-empty list of past sessions")
    if purpose == "train":
        if n_keys == 0:
            problems.append("pos: no keys at all (give pos/neg, pos_index/neg_index or history)")
        elif not has_pos and not scores:
            problems.append("pos: no positive and no teacher_scores to choose one")
    elif purpose == "eval" and not has_pos:
        problems.append("pos: evaluation records need at least one positive (pos or pos_index)")
    return problems


def validate_records(rf: RecordFile, *, purpose: str = "any", corpus_size: int | None = None,
                     known_tasks: Iterable[str] | None = None) -> list[str]:
    """Every problem in a file as ``file:line: field: what is wrong``."""
    if purpose not in PURPOSES:
        raise ValueError(f"purpose must be one of {PURPOSES}")
    if not rf.records:
        return [f"{rf.path}: no records"]
    errors = []
    for i, record in enumerate(rf.records):
        for problem in validate_record(record, purpose=purpose, corpus_size=corpus_size, known_tasks=known_tasks):
            errors.append(f"{rf.where(i)}: {problem}")
    return errors


def write_records(path: str | os.PathLike, records: Iterable[dict]) -> Path:
    """Write JSON lines atomically (temp file in the same folder, then rename); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            for record in records:
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: str | os.PathLike, obj) -> Path:
    """Write one JSON document atomically (indented, UTF-8)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(obj, out, ensure_ascii=False, indent=2, default=str)
            out.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def derived_path(source: str | os.PathLike, kind: str, save_name: str, output_dir: str | os.PathLike | None = None) -> Path:
    """The reference's naming for derived files: ``{name}.{kind}.{save_name}.json`` next to ``source``.

    ``derived_path("train.json", "neg", "bm25")`` → ``train.neg.bm25.json``;
    ``derived_path("train.neg.bm25.json", "scored", "smollm2")`` → ``train.neg.bm25.scored.smollm2.json``.
    """
    source = resolve_data_path(source)
    stem = source.name[: -len(".json")] if source.name.endswith(".json") else source.stem
    folder = Path(output_dir) if output_dir else source.parent
    return folder / f"{stem}.{kind}.{save_name}.json"
