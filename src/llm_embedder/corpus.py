"""A corpus file: JSON lines whose row number is the key index, turned into key texts by a template.

``--key_template "{title} {text}"`` formats each row; without one, rows use ``title + " " + text`` when a
title is present, else the first of ``text``, ``content``, ``contents``. Document ids come from
``_id``/``id``/``docid`` (BEIR, pyserini) and default to the row number.
"""
from __future__ import annotations

import os
import string
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError
from .schema import read_json_objects

ID_FIELDS = ("_id", "id", "docid", "doc_id")
TEXT_FIELDS = ("text", "content", "contents")


def template_fields(template: str) -> list[str]:
    """Field names a ``str.format`` template refers to."""
    return [name for _, name, _, _ in string.Formatter().parse(template) if name]


def default_key_text(row: dict) -> str | None:
    """Key text for a row when no template is given (``None`` when the row has no text field)."""
    body = next((row[f] for f in TEXT_FIELDS if isinstance(row.get(f), str)), None)
    title = row.get("title")
    if body is None:
        return title if isinstance(title, str) and title.strip() else None
    if isinstance(title, str) and title.strip():
        return f"{title.strip()} {body}".strip()
    return body


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
        """Map document id → row number (built on demand)."""
        return {doc_id: i for i, doc_id in enumerate(self.ids)}

    @classmethod
    def from_texts(cls, texts: list[str], ids: list[str] | None = None) -> "Corpus":
        return cls(None, list(texts), list(ids) if ids is not None else [str(i) for i in range(len(texts))])


def format_key(row: dict, template: str | None, where: str) -> str:
    """Key text of one corpus row; a missing field is a UserError naming the file:line and the field."""
    if template is None:
        text = default_key_text(row)
        if text is None:
            raise UserError(f"{where}: corpus row has none of the fields title/{'/'.join(TEXT_FIELDS)}; pass --key_template")
        return text
    missing = [name for name in template_fields(template) if name not in row]
    if missing:
        raise UserError(f"{where}: {missing[0]}: field needed by --key_template {template!r} is missing")
    return template.format_map({k: ("" if v is None else v) for k, v in row.items()}).strip()


def load_corpus(path: str | os.PathLike, key_template: str | None = None, keep_rows: bool = False) -> Corpus:
    """Load a corpus file; every row is checked before any text is returned."""
    path, rows, lines = read_json_objects(path)
    texts, ids = [], []
    for i, (row, line) in enumerate(zip(rows, lines)):
        texts.append(format_key(row, key_template, f"{path}:{line}"))
        ids.append(str(next((row[f] for f in ID_FIELDS if f in row), i)))
    return Corpus(path, texts, ids, rows if keep_rows else None, key_template)
