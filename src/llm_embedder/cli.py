"""``llm-embedder`` command: one entry point, subcommands registered in :data:`SUBCOMMANDS`.

Each subcommand lives in its own module as ``main(argv: list[str] | None) -> int | None``; this file
only dispatches, so adding a tool is one line here.
"""
from __future__ import annotations

import importlib
import sys

from .errors import UserError, cli_guard

# name -> ("module:function", one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "encode": ("llm_embedder.retrieval.encode_cli:main", "embed a corpus or queries into .npy shards (--num_shards/--shard_index)"),
    "search": ("llm_embedder.retrieval.search_cli:main", "merged top-k over .npy key shards -> run file (tsv or TREC)"),
    "convert": ("llm_embedder.convert:main", "convert other layouts into schema files (convert beir BEIR_DIR --output_dir DIR)"),
    "lm-score": ("llm_embedder.lm.run:main", "score keys with a causal LM into teacher_scores (same as run_lm_score.py)"),
    "report": ("llm_embedder.report:main", "print the before/after metrics table of a training run"),
    "validate": ("llm_embedder.validate:main", "check schema files and report every problem as file:line: field: what"),
}


def dispatch(table: dict[str, tuple[str, str]], argv: list[str], prog: str, kind: str, hint: str = "") -> int:
    """Run ``table[argv[0]]`` (a ``"module:function"`` taking the remaining argv), or print the table.

    ``prog`` is the command so far (``llm-embedder`` or ``llm-embedder convert``), ``kind`` what the table
    holds (``command``, ``format``).
    """
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: {prog} {kind.upper()} [ARGS]{hint}\n\n{kind}s:")
        for name, (_, help_text) in sorted(table.items()):
            print(f"  {name:<10} {help_text}")
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in table:
        where = prog.split(" ", 1)[1] + ": " if " " in prog else ""
        raise UserError(f"{where}unknown {kind} '{name}' (known: {', '.join(sorted(table))})")
    module_name, func_name = table[name][0].split(":")
    return int(getattr(importlib.import_module(module_name), func_name)(rest) or 0)


@cli_guard
def main(argv: list[str] | None = None) -> int:
    return dispatch(SUBCOMMANDS, list(sys.argv[1:] if argv is None else argv), "llm-embedder", "command")


if __name__ == "__main__":
    raise SystemExit(main())
