"""``llm-embedder convert FORMAT ...``: turn other dataset layouts into schema files.

Each format is one module with ``main(argv)``, registered in :data:`CONVERTERS`; this package only
dispatches. ``records_from_beir`` is re-exported for Python users.
"""
from __future__ import annotations

import importlib
import sys

from ..errors import UserError, cli_guard

# format -> ("module:function", one-line help)
CONVERTERS: dict[str, tuple[str, str]] = {
    "beir": ("llm_embedder.convert.beir:main", "BEIR folder (corpus.jsonl, queries.jsonl, qrels/*.tsv) -> {split}.json"),
}


def records_from_beir(*args, **kwargs):
    """See :func:`llm_embedder.convert.beir.records_from_beir`."""
    from .beir import records_from_beir as impl

    return impl(*args, **kwargs)


@cli_guard
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: llm-embedder convert FORMAT [ARGS]   (FORMAT --help for its arguments)\n\nformats:")
        for name, (_, help_text) in sorted(CONVERTERS.items()):
            print(f"  {name:<8} {help_text}")
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in CONVERTERS:
        raise UserError(f"convert: unknown format '{name}' (known: {', '.join(sorted(CONVERTERS))})")
    module_name, func_name = CONVERTERS[name][0].split(":")
    return int(getattr(importlib.import_module(module_name), func_name)(rest) or 0)
