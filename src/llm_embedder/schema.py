"""The record schema every tool reads and writes (DESIGN.md §2), with whole-file validation.

A record is a JSON object: ``query`` plus keys given as texts (``pos``/``neg``), as corpus rows
(``pos_index``/``neg_index``, optionally with the original ``pos_ids``/``neg_ids``) or, for chat, as
``history``; ``teacher_scores`` align with ``pos + neg`` (or ``history``). Unknown fields are kept on every
round trip.

Files are JSON lines, or one JSON array (then "line" means item number). Validation reads the whole file
first and reports every problem as ``file:line: field: what is wrong`` before any training, scoring or
mining starts. The rules are written out in ``docs/data-format.md``. Parsing and atomic writes are in
:mod:`llm_embedder.io`, derived file names in :mod:`llm_embedder.paths`.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from .errors import MAX_REPORTED_ERRORS, UserError, raise_if_errors  # noqa: F401
# file I/O and derived names live in their own modules; re-exported here for existing imports
from .io import (PROGRESS_MIN_BYTES, json_type_name as _type_name, atomic_write, copy_atomic, default_permissions, parse_json_file,  # noqa: F401
                 read_json_objects, write_json, write_records)
from .paths import derived_path, meta_path, sidecar_corpus  # noqa: F401

TEXT_LIST_FIELDS = ("pos", "neg", "history", "answers")
INDEX_LIST_FIELDS = ("pos_index", "neg_index")
ID_LIST_FIELDS = ("pos_ids", "neg_ids")
# per side, every field that holds one item per key of that side (the key texts first): cut together by
# run_lm_score --max_keys, dropped or recomputed together when mining replaces the negatives. icl rows carry
# per-key LM scores (pos_scores, neg_score); converted and mined rows carry the original doc ids.
KEY_ALIGNED_FIELDS = {"pos": ("pos", "pos_index", "pos_ids", "pos_scores"),
                      "neg": ("neg", "neg_index", "neg_ids", "neg_score", "neg_scores"),
                      "history": ("history",)}

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


def read_records(path: str | os.PathLike, *, purpose: str = "any", corpus_size: int | None = None,
                 known_tasks: Iterable[str] | None = None, corpus_ids: Sequence[str] | None = None,
                 validate: bool = True) -> RecordFile:
    """Read a schema file; with ``validate`` raise one UserError listing every problem in the file.

    ``corpus_size`` (or ``corpus_ids``, which also checks ``pos_ids``/``neg_ids`` against the rows) bounds
    ``pos_index``/``neg_index``; ``known_tasks`` makes an unknown ``task`` an error.
    """
    path, objects, lines, problems = parse_json_file(path)
    rf = RecordFile(path, objects, lines)
    if validate:
        raise_if_errors(file_problems(rf, problems, purpose=purpose, corpus_size=corpus_size,
                                      known_tasks=known_tasks, corpus_ids=corpus_ids))
    elif problems:
        raise_if_errors([f"{path}:{n}: {problem}" for n, problem in problems])
    return rf





# ------------------------------------------------------------------------------------------------- keys

def uses_history(record: dict) -> bool:
    """True when the record's keys are its ``history`` (chat): it has history and no pos/neg fields."""
    return record.get("history") is not None and not any(
        record.get(name) is not None for name in ("pos", "neg", "pos_index", "neg_index"))


def _count(record: dict, side: str) -> int:
    """Keys on one side (``pos``/``neg``): the texts when given, else the corpus rows."""
    texts, rows = record.get(side), record.get(f"{side}_index")
    return len(texts) if texts else len(rows or [])


def num_positives(record: dict) -> int:
    """Labelled positives: ``len(pos)``, or ``len(pos_index)`` when the texts are omitted (0 for chat)."""
    return 0 if uses_history(record) else _count(record, "pos")


def num_keys(record: dict) -> int:
    """How many candidate keys a record has: ``len(history)`` for chat rows, else positives + negatives."""
    if uses_history(record):
        return len(record["history"])
    return _count(record, "pos") + _count(record, "neg")


def record_keys(record: dict, corpus_texts: Sequence[str] | None = None) -> list[str]:
    """The key texts in ``teacher_scores`` order: ``history``, or ``pos + neg``.

    A side whose texts are omitted (absent or empty) is read from ``corpus_texts`` through its
    ``*_index`` rows; without a corpus that is a UserError.
    """
    if uses_history(record):
        return list(record["history"])
    keys: list[str] = []
    for side in ("pos", "neg"):
        if record.get(side):
            keys.extend(record[side])
        elif record.get(f"{side}_index"):
            if corpus_texts is None:
                raise UserError(f"{side}_index: the record gives corpus rows but no corpus was given (--corpus)")
            keys.extend(corpus_texts[i] for i in record[f"{side}_index"])
    return keys


# ---------------------------------------------------------------------------------------------- checks

def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _show(x) -> str:
    text = json.dumps(x, ensure_ascii=False) if not isinstance(x, float) else repr(x)
    return text if len(text) <= 40 else text[:37] + "..."


def _check_text_list(record: dict, name: str) -> str | None:
    value = record[name]
    if not isinstance(value, list):
        return f"{name}: must be a list of strings, got {_type_name(value)}"
    for j, item in enumerate(value):
        if not isinstance(item, str):
            return f"{name}: item {j} is {_type_name(item)} {_show(item)}, not a string"
    return None


def _check_index_list(record: dict, name: str, corpus_size: int | None) -> str | None:
    value = record[name]
    if not isinstance(value, list):
        return f"{name}: must be a list of corpus row numbers, got {_type_name(value)}"
    for j, item in enumerate(value):
        if not _is_int(item):
            return f"{name}: item {j} is {_type_name(item)} {_show(item)}, not an integer row number"
        if item < 0:
            return f"{name}: item {j} is {item}; corpus rows are numbered from 0"
        if corpus_size is not None and item >= corpus_size:
            return f"{name}: item {j} is row {item}, beyond the corpus ({corpus_size} rows: 0..{corpus_size - 1})"
    return None


def _check_lengths(record: dict, side: str) -> str | None:
    """``pos``/``pos_index``/``pos_ids`` (and the ``neg`` ones) must describe the same keys."""
    rows = record.get(f"{side}_index")
    texts, ids = record.get(side), record.get(f"{side}_ids")
    if texts and rows is not None and len(texts) != len(rows):
        return f"{side}_index: {len(rows)} rows but {len(texts)} texts in {side}"
    if ids is not None:
        other = rows if rows is not None else texts
        if other is None:
            return f"{side}_ids: given without {side}_index or {side}"
        if len(ids) != len(other):
            return f"{side}_ids: {len(ids)} ids but {len(other)} keys in {side}_index" if rows is not None \
                else f"{side}_ids: {len(ids)} ids but {len(other)} texts in {side}"
    return None


def _check_ids_match_corpus(record: dict, side: str, corpus_ids: Sequence[str]) -> str | None:
    rows, ids = record.get(f"{side}_index"), record.get(f"{side}_ids")
    if rows is None or ids is None:
        return None
    for j, (row, doc_id) in enumerate(zip(rows, ids)):
        if corpus_ids[row] != doc_id:
            return f"{side}_ids: item {j} is {_show(doc_id)} but corpus row {row} has id {_show(corpus_ids[row])}"
    return None


def validate_record(record: dict, *, purpose: str = "any", corpus_size: int | None = None,
                    known_tasks: Iterable[str] | None = None,
                    corpus_ids: Sequence[str] | None = None) -> list[str]:
    """Every problem with one record as ``field: what is wrong`` (no location prefix)."""
    if corpus_ids is not None:
        corpus_size = len(corpus_ids)
    problems: list[str] = []
    query = record.get("query")
    if "query" not in record:
        problems.append("query: missing")
    elif not isinstance(query, str):
        problems.append(f"query: must be a string, got {_type_name(query)}")
    elif not query.strip():
        problems.append("query: empty")
    for name in TEXT_LIST_FIELDS + ID_LIST_FIELDS:
        if record.get(name) is not None and (problem := _check_text_list(record, name)):
            problems.append(problem)
    for name in INDEX_LIST_FIELDS:
        if record.get(name) is not None and (problem := _check_index_list(record, name, corpus_size)):
            problems.append(problem)
    if "task" in record:
        task = record["task"]
        if not isinstance(task, str) or not task.strip():
            problems.append(f"task: must be a non-empty string, got {_show(task)}")
        elif known_tasks is not None and task not in (known := set(known_tasks)):
            problems.append(f"task: unknown task '{task}' (known: {', '.join(sorted(known))}; "
                            "register custom tasks with --task_config)")
    if "query_id" in record and not (_is_int(record["query_id"]) or isinstance(record["query_id"], str)):
        problems.append(f"query_id: must be an integer or a string, got {_type_name(record['query_id'])}")
    if "context" in record and not isinstance(record["context"], str):
        problems.append(f"context: must be a string, got {_type_name(record['context'])}")
    if "teacher_scores" in record:
        scores = record["teacher_scores"]
        if not isinstance(scores, list):
            problems.append(f"teacher_scores: must be a list of numbers, got {_type_name(scores)}")
        else:
            for j, s in enumerate(scores):
                if not _is_number(s):
                    problems.append(f"teacher_scores: item {j} is {_type_name(s)} {_show(s)}, not a number")
                    break
                if not math.isfinite(s):
                    problems.append(f"teacher_scores: item {j} is {'NaN' if s != s else ('-' if s < 0 else '') + 'Infinity'}; "
                                    "scores must be finite")
                    break
    if problems:  # the checks below assume well-typed fields
        return problems

    has_history = record.get("history") is not None
    has_pos_neg = any(record.get(name) is not None for name in ("pos", "neg", "pos_index", "neg_index"))
    if has_history and has_pos_neg:
        problems.append("history: keys are given both as history and as pos/neg; use one of them")
    for side in ("pos", "neg"):
        if problem := _check_lengths(record, side):
            problems.append(problem)
        elif corpus_ids is not None and (problem := _check_ids_match_corpus(record, side, corpus_ids)):
            problems.append(problem)
    if record.get("task") == "chat" and not record.get("history"):
        problems.append("history: chat records need a non-empty history (the past sessions to retrieve from)")
    if problems:
        return problems

    n_keys = num_keys(record)
    scores = record.get("teacher_scores")
    if scores is not None and len(scores) != n_keys:
        what = "history" if uses_history(record) else \
            f"pos {_count(record, 'pos')} + neg {_count(record, 'neg')}"
        problems.append(f"teacher_scores: {len(scores)} scores for {n_keys} keys ({what})")
    has_pos = num_positives(record) > 0
    if purpose == "train":
        if n_keys == 0:
            problems.append("pos: no keys at all (give pos/neg, pos_index/neg_index or history)")
        elif not has_pos and not scores:
            problems.append("pos: no positive and no teacher_scores to choose one")
    elif purpose == "eval" and not has_pos:
        problems.append("pos: evaluation records need at least one positive (pos or pos_index)")
    elif purpose == "score" and n_keys == 0:
        problems.append("pos: nothing to score (give pos/neg, pos_index/neg_index or history)")
    return problems


def file_problems(rf: RecordFile, parse_problems: Sequence[tuple[int, str]] = (), *, purpose: str = "any",
                  corpus_size: int | None = None, known_tasks: Iterable[str] | None = None,
                  corpus_ids: Sequence[str] | None = None) -> list[str]:
    """Parse problems and record problems of one file, in line order, as ``file:line: field: what``."""
    if purpose not in PURPOSES:
        raise ValueError(f"purpose must be one of {PURPOSES}, got {purpose!r}")
    known = None if known_tasks is None else set(known_tasks)
    found: list[tuple[int, str]] = list(parse_problems)
    first_line_of_id: dict[str, int] = {}
    for i, record in enumerate(rf.records):
        line = rf.lines[i] if rf.lines else i + 1
        for problem in validate_record(record, purpose=purpose, corpus_size=corpus_size, known_tasks=known,
                                       corpus_ids=corpus_ids):
            found.append((line, problem))
        if purpose == "eval" and "query_id" in record:  # evaluation keys runs and qrels by query id
            qid = str(record["query_id"])
            if qid in first_line_of_id:
                found.append((line, f"query_id: duplicate {_show(record['query_id'])} "
                                    f"(first at line {first_line_of_id[qid]})"))
            else:
                first_line_of_id[qid] = line
    if not rf.records and not found:
        return [f"{rf.path}: no records"]
    found.sort(key=lambda item: item[0])
    return [f"{rf.path}:{line}: {problem}" for line, problem in found]


def validate_records(rf: RecordFile, *, purpose: str = "any", corpus_size: int | None = None,
                     known_tasks: Iterable[str] | None = None,
                     corpus_ids: Sequence[str] | None = None) -> list[str]:
    """Every problem in a file's records as ``file:line: field: what is wrong``."""
    return file_problems(rf, purpose=purpose, corpus_size=corpus_size, known_tasks=known_tasks,
                         corpus_ids=corpus_ids)


# ----------------------------------------------------------------------------------------------- writing

