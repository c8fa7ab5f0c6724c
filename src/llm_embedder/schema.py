"""The record schema every tool reads and writes (DESIGN.md §2), with whole-file validation.

A record is a JSON object: ``query`` plus keys given as texts (``pos``/``neg``), as corpus rows
(``pos_index``/``neg_index``, optionally with the original ``pos_ids``/``neg_ids``) or, for chat, as
``history``; ``teacher_scores`` align with ``pos + neg`` (or ``history``). Unknown fields are kept on every
round trip.

Files are JSON lines, or one JSON array (then "line" means item number). Validation reads the whole file
first and reports every problem as ``file:line: field: what is wrong`` before any training, scoring or
mining starts. The rules are written out in ``docs/data-format.md``.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from .errors import UserError
from .resources import resolve_data_path

TEXT_LIST_FIELDS = ("pos", "neg", "history", "answers")
INDEX_LIST_FIELDS = ("pos_index", "neg_index")
ID_LIST_FIELDS = ("pos_ids", "neg_ids")
# per side, every field that holds one item per key of that side (the key texts first): cut together by
# run_lm_score --max_keys, dropped or recomputed together when mining replaces the negatives. icl rows carry
# per-key LM scores (pos_scores, neg_score); converted and mined rows carry the original doc ids.
KEY_ALIGNED_FIELDS = {"pos": ("pos", "pos_index", "pos_ids", "pos_scores"),
                      "neg": ("neg", "neg_index", "neg_ids", "neg_score", "neg_scores"),
                      "history": ("history",)}
MAX_REPORTED_ERRORS = 50
PROGRESS_MIN_BYTES = 64 << 20  # files larger than this show a tqdm bar while they are parsed

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


# ----------------------------------------------------------------------------------------------- reading

def _progress(total: int, path: Path):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, desc=f"reading {path.name}",
                disable=total < PROGRESS_MIN_BYTES)


def _first_significant_byte(path: Path) -> bytes:
    with path.open("rb") as f:
        while chunk := f.read(4096):
            stripped = chunk.lstrip(b" \t\r\n\xef\xbb\xbf")  # whitespace and a UTF-8 byte order mark
            if stripped:
                return stripped[:1]
    return b""


def _parse_jsonl(path: Path) -> Iterator[tuple[int, dict | None, str | None]]:
    """``(line, object, None)`` or ``(line, None, problem)`` per non-blank line.

    Lines are split on ``\\n`` only: ``str.splitlines`` would also split on U+2028/U+0085, which JSON
    strings may hold unescaped (``json.dumps(..., ensure_ascii=False)`` writes them raw).
    """
    with path.open("rb") as f, _progress(path.stat().st_size, path) as bar:
        for n, raw in enumerate(f, 1):
            bar.update(len(raw))
            if n == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            if not raw.strip():
                continue
            try:
                line = raw.rstrip(b"\r\n").decode("utf-8")
            except UnicodeDecodeError as err:
                yield n, None, f"not valid UTF-8 (byte {err.start + 1} of the line)"
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                yield n, None, f"invalid JSON: {err.msg} (column {err.colno})"
                continue
            if not isinstance(obj, dict):
                yield n, None, f"expected a JSON object, got {_type_name(obj)}"
                continue
            yield n, obj, None


def _parse_array(path: Path) -> Iterator[tuple[int, dict | None, str | None]]:
    """Items of a JSON-array file as ``(item number, object, problem)``; unparsable text is one problem."""
    try:
        items = json.loads(path.read_text(encoding="utf-8-sig"))
    except UnicodeDecodeError as err:
        yield 1, None, f"not valid UTF-8 (byte {err.start + 1} of the file)"
        return
    except json.JSONDecodeError as err:
        yield err.lineno, None, f"invalid JSON: {err.msg} (column {err.colno})"
        return
    for n, item in enumerate(items, 1):
        if isinstance(item, dict):
            yield n, item, None
        else:
            yield n, None, f"item {n} of the JSON array is {_type_name(item)}, not an object"


def parse_json_file(path: str | os.PathLike) -> tuple[Path, list[dict], list[int], list[tuple[int, str]]]:
    """Parse a JSONL file or a JSON array without stopping at the first bad line.

    Returns ``(path, objects, line numbers, problems)`` where ``problems`` holds ``(line, "what is wrong")``
    for lines that are not JSON objects. A missing file is a UserError.
    """
    path = resolve_data_path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    first = _first_significant_byte(path)
    parse = _parse_array if first == b"[" else _parse_jsonl
    objects, lines, problems = [], [], []
    for n, obj, problem in parse(path):
        if problem is not None:
            problems.append((n, problem))
        else:
            objects.append(obj)
            lines.append(n)
    if first == b"{" and problems and not objects and _is_one_json_object(path):
        problems = [(1, "the file is one JSON object spread over several lines; records must be JSON lines "
                        "(one object per line) or a JSON array")]
    return path, objects, lines, problems


def _is_one_json_object(path: Path) -> bool:
    try:
        return isinstance(json.loads(path.read_text(encoding="utf-8-sig")), dict)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return False


def read_json_objects(path: str | os.PathLike) -> tuple[Path, list[dict], list[int]]:
    """Parse a JSONL file or a JSON array into ``(path, objects, line numbers)``; bad lines are one UserError."""
    path, objects, lines, problems = parse_json_file(path)
    raise_if_errors([f"{path}:{n}: {problem}" for n, problem in problems])
    return path, objects, lines


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


def raise_if_errors(errors: Sequence[str]) -> None:
    """Raise a UserError holding the first :data:`MAX_REPORTED_ERRORS` problems, one per line."""
    if not errors:
        return
    shown = list(errors[:MAX_REPORTED_ERRORS])
    if len(errors) > len(shown):
        shown.append(f"... and {len(errors) - len(shown)} more problems")
    raise UserError("\n".join(shown))


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

def _type_name(x) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null",
            int: "an integer", float: "a number"}.get(type(x), type(x).__name__)


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

def _umask() -> int:
    """The process umask, read without changing it where Linux allows (``/proc/self/status``)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def default_permissions(path: str | os.PathLike) -> Path:
    """Give a file (0666) or a directory tree (0777 folders, 0666 files) the permissions a plain ``open`` or
    ``mkdir`` would, minus the umask: ``mkstemp``/``mkdtemp`` and some writers (safetensors) create 0600/0700."""
    path, mask = Path(path), _umask()
    os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~mask)
    if path.is_dir():
        for entry in path.rglob("*"):
            if not entry.is_symlink():
                os.chmod(entry, (0o777 if entry.is_dir() else 0o666) & ~mask)
    return path


def atomic_write(path: str | os.PathLike, write, binary: bool = False) -> Path:
    """Run ``write(file)`` on a temp file in the target folder (text, UTF-8, or bytes), then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        default_permissions(tmp)  # mkstemp creates 0600; give the file the usual permissions
        with (os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", encoding="utf-8", newline="\n")) as out:
            write(out)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


_atomic_write = atomic_write  # the old private name


def write_records(path: str | os.PathLike, records: Iterable[dict]) -> Path:
    """Write JSON lines atomically (temp file in the same folder, then rename); returns the path.

    NaN and infinity are refused (``ValueError``): JSON cannot hold them and validation would reject them.
    """
    def write(out):
        for i, record in enumerate(records):
            try:
                out.write(json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n")
            except ValueError as err:
                raise ValueError(f"{path}: record {i} cannot be written as JSON: {err}") from None

    return atomic_write(path, write)


def write_json(path: str | os.PathLike, obj) -> Path:
    """Write one JSON document atomically (indented, UTF-8)."""
    def write(out):
        json.dump(obj, out, ensure_ascii=False, indent=2, default=str)
        out.write("\n")

    return atomic_write(path, write)


def copy_atomic(source: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Copy a file byte for byte, atomically (temp file + rename)."""
    import shutil

    def write(out):
        with open(source, "rb") as src:
            shutil.copyfileobj(src, out, 1 << 20)

    return atomic_write(path, write, binary=True)


# ------------------------------------------------------------------------------------------------ naming

def _stem(source: Path) -> str:
    return source.name[: -len(".json")] if source.name.endswith(".json") else source.stem


def derived_path(source: str | os.PathLike, kind: str, save_name: str, output_dir: str | os.PathLike | None = None) -> Path:
    """The reference's naming for derived files: ``{name}.{kind}.{save_name}.json`` next to ``source``.

    ``derived_path("train.json", "neg", "bm25")`` → ``train.neg.bm25.json``;
    ``derived_path("train.neg.bm25.json", "scored", "smollm2")`` → ``train.neg.bm25.scored.smollm2.json``.
    """
    source = resolve_data_path(source)
    folder = Path(output_dir) if output_dir else source.parent
    return folder / f"{_stem(source)}.{kind}.{save_name}.json"


def meta_path(source: str | os.PathLike) -> Path:
    """The sidecar that describes a records file: ``train.json`` → ``train.meta.json``."""
    source = resolve_data_path(source)
    return source.parent / f"{_stem(source)}.meta.json"


def sidecar_corpus(source: str | os.PathLike) -> Path | None:
    """The corpus a records file points at, as recorded in its sidecar (``{"corpus": path}``), or None.

    A relative path in the sidecar is relative to the sidecar's folder.
    """
    meta = meta_path(source)
    if not meta.is_file():
        return None
    try:
        corpus = json.loads(meta.read_text(encoding="utf-8")).get("corpus")
    except (json.JSONDecodeError, AttributeError) as err:
        raise UserError(f"{meta}: not a JSON object ({err})") from None
    if corpus is None:
        return None
    if not isinstance(corpus, str):
        raise UserError(f"{meta}: corpus: must be a path string")
    path = resolve_data_path(corpus)
    return path if path.is_absolute() else meta.parent / path
