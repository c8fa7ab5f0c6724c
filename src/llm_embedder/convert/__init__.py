"""``llm-embedder convert FORMAT ...``: turn other dataset layouts into schema files.

Each format is one module with ``main(argv)``, registered in :data:`CONVERTERS`; this package only
dispatches. ``records_from_beir`` is re-exported for Python users.
"""
from __future__ import annotations

import sys

from ..errors import cli_guard

# format -> ("module:function", one-line help)
CONVERTERS: dict[str, tuple[str, str]] = {
    "beir": ("llm_embedder.convert.beir:main", "BEIR folder (corpus.jsonl, queries.jsonl, qrels/*.tsv) -> {split}.json"),
    "lrlm": ("llm_embedder.convert.lrlm:main", "folder of .py files -> long-range LM train/valid/test.json (token-id chunks)"),
    "trove": ("llm_embedder.convert.trove:main", "Trove-style qrels config (qrel_path, query_path, corpus_path, min/max_score) -> schema"),
    "tevatron": ("llm_embedder.convert.tevatron:main", "Tevatron training/corpus JSONL <-> schema records/corpus (--to, --kind)"),
}


def records_from_beir(*args, **kwargs):
    """See :func:`llm_embedder.convert.beir.records_from_beir`."""
    from .beir import records_from_beir as impl

    return impl(*args, **kwargs)


@cli_guard
def main(argv: list[str] | None = None) -> int:
    from ..cli import dispatch

    return dispatch(CONVERTERS, list(sys.argv[1:] if argv is None else argv),
                    "llm-embedder convert", "format", hint="   (FORMAT --help for its arguments)")
