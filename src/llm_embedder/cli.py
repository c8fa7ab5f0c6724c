"""``llm-embedder`` command: one entry point, subcommands registered in :data:`SUBCOMMANDS`.

Each subcommand lives in its own module as ``main(argv: list[str] | None) -> int | None``; this file
only dispatches, so adding a tool is one line here.
"""
from __future__ import annotations

import importlib
import sys

from .errors import UserError, cli_guard

# name -> ("module:function", one-line help). The pipeline steps are the reference's entry points
# (run_dense.py, python -m evaluation.eval_retrieval, run_lm_score.py) under one installed command, so every
# step runs from any folder with the same arguments.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "train": ("llm_embedder.training.run:main", "train an embedder (same arguments as run_dense.py; torchrun works too)"),
    "mine": ("llm_embedder.cli:mine", "mine hard negatives: evaluate --metrics collate_neg -> {name}.neg.{save_name}.json"),
    "evaluate": ("llm_embedder.retrieval.eval_cli:main", "retrieval metrics and run files (same as python -m evaluation.eval_retrieval)"),
    "score": ("llm_embedder.lm.run:main", "score keys with a causal LM into teacher_scores (same as run_lm_score.py)"),
    "lm-score": ("llm_embedder.lm.run:main", "the same as score"),
    "encode": ("llm_embedder.retrieval.encode_cli:main", "embed a corpus or queries into .npy shards (--num_shards/--shard_index)"),
    "search": ("llm_embedder.retrieval.search_cli:main", "merged top-k over .npy key shards -> run file (tsv or TREC)"),
    "convert": ("llm_embedder.convert:main", "convert other layouts into schema files (convert beir BEIR_DIR --output_dir DIR)"),
    "report": ("llm_embedder.report:main", "print the before/after metrics table of a training run"),
    "validate": ("llm_embedder.validate:main", "check schema files and report every problem as file:line: field: what"),
}


def mine(argv: list[str]) -> int:
    """``llm-embedder mine``: ``evaluate`` with ``--metrics collate_neg`` unless ``--metrics`` is given."""
    from .retrieval.eval_cli import main as evaluate

    argv = list(argv)
    if "-h" not in argv and "--help" not in argv and not any(a == "--metrics" or a.startswith("--metrics=") for a in argv):
        argv += ["--metrics", "collate_neg"]
    return evaluate(argv)


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
        import difflib

        close = difflib.get_close_matches(name, list(table), n=1)
        guess = f"did you mean '{close[0]}'? " if close else ""
        raise UserError(f"{where}unknown {kind} '{name}' ({guess}known: {', '.join(sorted(table))})")
    module_name, func_name = table[name][0].split(":")
    result = getattr(importlib.import_module(module_name), func_name)(rest)
    return result if isinstance(result, int) else 0  # run_dense's main returns its metrics: success


@cli_guard
def main(argv: list[str] | None = None) -> int:
    from .noise import pop_verbose, quiet_third_party

    argv, verbose = pop_verbose(list(sys.argv[1:] if argv is None else argv))
    quiet_third_party(verbose)  # --verbose anywhere on the line; LLM_EMBEDDER_VERBOSE=1 tells the subcommand too
    return dispatch(SUBCOMMANDS, argv, "llm-embedder", "command", hint="   (--verbose: show third-party startup messages)")


if __name__ == "__main__":
    raise SystemExit(main())
