"""Derived file names: the reference's ``{name}.{kind}.{save_name}.json`` and the ``.meta.json`` sidecar.

``derived_path("train.json", "neg", "bm25")`` is where mining writes, ``meta_path`` the sidecar that
describes a records file (its corpus, how it was made), ``sidecar_corpus`` the corpus a file points at.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from .errors import UserError
from .resources import DATA_PREFIX, data_root, resolve_data_path


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


def sidecar_string(source: str | os.PathLike, name: str, what: str = "a string") -> str | None:
    """Field ``name`` of a records file's ``.meta.json`` sidecar (a string), or None without sidecar or field."""
    meta = meta_path(source)
    if not meta.is_file():
        return None
    try:
        value = json.loads(meta.read_text(encoding="utf-8")).get(name)
    except (json.JSONDecodeError, AttributeError) as err:
        raise UserError(f"{meta}: not a JSON object ({err})") from None
    if value is not None and not isinstance(value, str):
        raise UserError(f"{meta}: {name}: must be {what}")
    return value


def portable_path(path: Path, folder: Path) -> str:
    """How a sidecar names ``path`` so that it stays valid when folders move.

    Inside ``folder``: relative to it (``corpus.jsonl``); inside the data root: ``llm-embedder:NAME/...``;
    elsewhere: absolute. POSIX separators.
    """
    path, folder, root = Path(path).resolve(), Path(folder).resolve(), data_root().resolve()
    if path.is_relative_to(folder):
        return path.relative_to(folder).as_posix()
    if path.is_relative_to(root):
        return DATA_PREFIX + path.relative_to(root).as_posix()
    return path.as_posix()


def sidecar_corpus(source: str | os.PathLike) -> Path | None:
    """The corpus a records file points at, as recorded in its sidecar (``{"corpus": path}``), or None.

    A relative path in the sidecar is relative to the sidecar's folder (writers name it with
    :func:`portable_path`). A named corpus that is not there is a one-line error naming the sidecar: the file's
    row indices mean nothing without it.
    """
    corpus = sidecar_string(source, "corpus", "a path string")
    if corpus is None:
        return None
    path = resolve_data_path(corpus)
    path = path if path.is_absolute() else meta_path(source).parent / path
    if not path.is_file():
        raise UserError(f"{meta_path(source)}: corpus: {corpus} does not exist; the file's row indices refer to it "
                        "(set the field to the corpus's current path)")
    return path


def sidecar_key_template(source: str | os.PathLike) -> str | None:
    """The ``key_template`` a records file's sidecar records (mining writes one), or None."""
    return sidecar_string(source, "key_template")
