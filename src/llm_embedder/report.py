"""``llm-embedder report RUN_DIR/metrics.json``: the before/after table of a training run.

Reads the evaluation history that the trainer appends to ``metrics.json`` and prints the first
evaluation (before training when ``--eval_on_start`` was given) next to the last one.
"""
from __future__ import annotations

import json
from pathlib import Path

from .argparsing import ArgParser
from .errors import UserError, cli_guard


def before_after(history: list[dict], metric_names: list[str] | None = None) -> list[tuple[str, float, float]]:
    """``(metric, first value, last value)`` for every retrieval metric in the history."""
    first, last = history[0], history[-1]
    names = metric_names or [k for k in first if k.startswith("eval_") and "@" in k]
    return [(n, first[n], last[n]) for n in names if n in first and n in last]


def format_table(rows: list[tuple[str, float, float]], first_label: str, last_label: str) -> str:
    lines = [f"| metric | {first_label} | {last_label} | change |", "|---|---|---|---|"]
    for name, a, b in rows:
        lines.append(f"| {name.removeprefix('eval_')} | {a:.4f} | {b:.4f} | {b - a:+.4f} |")
    return "\n".join(lines)


@cli_guard
def main(argv=None) -> int:
    parser = ArgParser(prog="llm-embedder report", description=__doc__.splitlines()[0])
    parser.add_argument("metrics_file", help="metrics.json written by run_dense.py")
    parser.add_argument("--metrics", nargs="*", help="metric names to show, e.g. eval_ndcg@10 (default: all)")
    args = parser.parse_args(argv)
    path = Path(args.metrics_file)
    if path.is_dir():
        path = path / "metrics.json"
    if not path.is_file():
        raise UserError(f"{path}: no metrics.json (did the run have --eval_data?)")
    history = json.loads(path.read_text())["history"]
    first, last = history[0], history[-1]
    print(f"corpus: {last.get('eval_corpus', 'full')}")
    if len(history) == 1:  # no --eval_on_start: the final evaluation alone
        rows = before_after(history, args.metrics)
        print("| metric | value |\n|---|---|\n" + "\n".join(f"| {n.removeprefix('eval_')} | {b:.4f} |" for n, _, b in rows))
        return 0
    print(format_table(before_after(history, args.metrics), f"step {first['step']}", f"step {last['step']}"))
    return 0
