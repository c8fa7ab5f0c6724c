"""A corpus file: JSON lines whose row number is the key index, turned into key texts by a template.

Row ``i`` is the ``i``-th JSON object of the file (blank lines are not rows), so ``pos_index``/``neg_index``
in records are positions in this order. ``--key_template "{title} {text}"`` formats each row; without one,
rows use ``title + " " + text`` when a title is present, else the first of ``text``, ``content``,
``contents``. Document ids come from ``_id``/``id``/``docid``/``doc_id`` (BEIR, pyserini) and default to
the row number. Every row is checked before any text is returned, and all bad rows are reported at once.
"""
from __future__ import annotations

import os
import re
import string
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError
from .schema import parse_json_file, raise_if_errors, read_json_objects

ID_FIELDS = ("_id", "id", "docid", "doc_id")
TEXT_FIELDS = ("text", "content", "contents")


def template_fields(template: str) -> list[str]:
    """Row fields a ``str.format`` template refers to (``"{meta[year]} {title}"`` → ``["meta", "title"]``).

    A malformed template is a UserError naming ``--key_template``; positional fields (``{}``, ``{0}``) are
    refused because rows are formatted by field name.
    """
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as err:
        raise UserError(f"--key_template: {template!r} is not a valid format string: {err}") from None
    names = []
    for _, name, _, _ in parsed:
        if name is None:
            continue
        base = re.split(r"[.\[]", name, maxsplit=1)[0]
        if not base or base.isdigit():
            raise UserError(f"--key_template: {template!r} uses a positional field '{{{name}}}'; "
                            "name the corpus fields, e.g. '{title} {text}'")
        names.append(base)
    return names


def default_key_text(row: dict) -> str | None:
    """Key text for a row when no template is given (``None`` when the row has no text field)."""
    body = next((row[f] for f in TEXT_FIELDS if isinstance(row.get(f), str)), None)
    title = row.get("title")
    if body is None:
        return title if isinstance(title, str) and title.strip() else None
    if isinstance(title, str) and title.strip():
        return f"{title.strip()} {body}".strip()
    return body


def row_id(row: dict, row_number: int) -> str:
    """A row's document id as a string: the first of :data:`ID_FIELDS`, else the row number."""
    return str(next((row[f] for f in ID_FIELDS if f in row), row_number))


@dataclass
class Corpus:
    """Row-indexed keys: ``texts[i]`` is the key text of row ``i`` and ``ids[i]`` its document id."""

    path: Path | None
    texts: list[str]
    ids: list[str]
    rows: list[dict] | None = None
    key_template: str | None = None

    def __len__(self) -> int:
        return len(self.texts)

    def id_to_row(self) -> dict[str, int]:
        """Map document id → row number; a repeated id is a UserError (it would make the map ambiguous)."""
        return ids_to_rows(self.ids, self.path)

    @classmethod
    def from_texts(cls, texts: list[str], ids: list[str] | None = None) -> "Corpus":
        if ids is not None and len(ids) != len(texts):
            raise ValueError(f"{len(ids)} ids for {len(texts)} texts")
        return cls(None, list(texts), list(ids) if ids is not None else [str(i) for i in range(len(texts))])


def ids_to_rows(ids: list[str], path: Path | None = None) -> dict[str, int]:
    """Document id → row number, refusing repeated ids."""
    mapping: dict[str, int] = {}
    for i, doc_id in enumerate(ids):
        if doc_id in mapping:
            raise UserError(f"{path or 'corpus'}: document id {doc_id!r} is used by rows {mapping[doc_id]} and {i}")
        mapping[doc_id] = i
    return mapping


def key_text_problem(row: dict, template: str | None, fields: list[str] | None = None) -> str | None:
    """Why a row cannot be turned into key text (``field: what is wrong``), or None."""
    if template is None:
        if default_key_text(row) is None:
            return f"text: corpus row has none of the fields title/{'/'.join(TEXT_FIELDS)}; pass --key_template"
        return None
    for name in fields if fields is not None else template_fields(template):
        if name not in row:
            return f"{name}: field needed by --key_template {template!r} is missing"
    return None


def format_key(row: dict, template: str | None, where: str) -> str:
    """Key text of one corpus row; a missing field is a UserError naming the file:line and the field."""
    problem = key_text_problem(row, template)
    if problem is not None:
        raise UserError(f"{where}: {problem}")
    if template is None:
        return default_key_text(row)
    return _format(row, template, where)


def _format(row: dict, template: str, where: str) -> str:
    try:
        return template.format_map({k: ("" if v is None else v) for k, v in row.items()}).strip()
    except (KeyError, IndexError, AttributeError, TypeError, ValueError) as err:
        raise UserError(f"{where}: --key_template {template!r} cannot format this row: {err!r}") from None


def load_corpus(path: str | os.PathLike, key_template: str | None = None, keep_rows: bool = False) -> Corpus:
    """Load a corpus file; every row is checked (all problems reported at once) before any text is returned."""
    fields = template_fields(key_template) if key_template is not None else None
    path, rows, lines, parse_problems = parse_json_file(path)
    problems = list(parse_problems)
    texts, ids = [], []
    for i, (row, line) in enumerate(zip(rows, lines)):
        problem = key_text_problem(row, key_template, fields)
        if problem is not None:
            problems.append((line, problem))
            continue
        texts.append(default_key_text(row) if key_template is None else _format(row, key_template, f"{path}:{line}"))
        ids.append(row_id(row, i))
    if not rows and not problems:
        problems.append((0, "no rows"))
    problems.sort(key=lambda item: item[0])
    raise_if_errors([f"{path}:{line}: {what}" if line else f"{path}: {what}" for line, what in problems])
    return Corpus(path, texts, ids, rows if keep_rows else None, key_template)


def read_corpus_ids(path: str | os.PathLike) -> tuple[Path, list[str]]:
    """Only the document ids of a corpus file, row by row (no key texts; for converters)."""
    path, rows, _ = read_json_objects(path)
    return path, [row_id(row, i) for i, row in enumerate(rows)]
