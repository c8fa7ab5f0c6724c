"""How sidecars (``{name}.meta.json``) name files: paths that survive moving a folder, and content hashes.

Shared by the converters and by mining, which both write sidecars that later steps read
(``schema.sidecar_corpus`` resolves a relative path against the sidecar's folder).
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from ..resources import DATA_PREFIX, data_root


def sha256_file(path: Path) -> str:
    """The sha256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


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
