"""Atomic model-directory writes: build the directory beside the target, then move it into place.

An interrupted save never leaves a half-written model: a new target is one rename; an existing one is
replaced entry by entry with the settings file last, so a reader that sees the new ``llm_embedder.json``
also sees the new weights. Entries a save owns but this one did not write (an old key encoder, adapter or
projection) are removed; other files in the target (trainer state, metrics) stay.
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from ..errors import UserError
from ..io import default_permissions
from .st_format import SETTINGS_FILE

# Entries a save owns: removed from an existing target directory when this save does not write them.
_OWNED_ENTRIES = re.compile(r"^(key_encoder|lora_adapter|\d+_(Pooling|Dense|Normalize)|model(-\d+-of-\d+)?\.safetensors"
                            r"|model\.safetensors\.index\.json)$")


def write_directory(target: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Run ``write(staging_dir)`` on a temp directory beside ``target``, then publish it as ``target``."""
    target = Path(target)
    if target.exists() and not target.is_dir():
        raise UserError(f"{target}: exists and is not a directory")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        write(staging)
        default_permissions(staging)  # mkdtemp is 0700 and safetensors writes 0600
        publish(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def publish(staging: Path, target: Path) -> None:
    """Move a finished staging directory into ``target``: one rename when it is new, else entry by entry
    (entries a save owns but this one did not write are removed; other files, e.g. trainer state, stay)."""
    if not target.exists():
        os.replace(staging, target)
        return
    written = {entry.name for entry in staging.iterdir()}
    for entry in target.iterdir():
        if entry.name not in written and _OWNED_ENTRIES.match(entry.name):
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
    # settings last: a reader that sees the new llm_embedder.json also sees the new weights
    for entry in sorted(staging.iterdir(), key=lambda e: e.name == SETTINGS_FILE):
        destination = target / entry.name
        if destination.is_dir() and not destination.is_symlink():
            shutil.rmtree(destination)
        os.replace(entry, destination)
