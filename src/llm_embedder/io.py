"""Reading and writing JSON files: JSONL / JSON-array parsing with line numbers, and atomic writes.

Every file a tool writes goes through :func:`atomic_write` (temp file in the target folder, then
rename), so a killed job never leaves a half-written file that looks finished; the temp file gets the
permissions a plain ``open`` would. Model code imports this module, not the data schema, to write JSON.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

from .errors import UserError, raise_if_errors
from .resources import resolve_data_path

PROGRESS_MIN_BYTES = 64 << 20  # files larger than this show a tqdm bar while they are parsed


def json_type_name(x) -> str:
    """How a JSON value's type reads in an error message ("an object", "a list", ...)."""
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null",
            int: "an integer", float: "a number"}.get(type(x), type(x).__name__)


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
                yield n, None, f"expected a JSON object, got {json_type_name(obj)}"
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
            yield n, None, f"item {n} of the JSON array is {json_type_name(item)}, not an object"


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
