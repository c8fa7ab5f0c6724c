"""Is the 3-iteration row's gain the re-mining or the extra epochs? Round R of a 3-iteration unit has trained R
epochs in all (one per round); this compares it, per test query, with the distillation row trained R epochs in
one go (``--set ... epochs=R``), same seed, and writes the paired differences with bootstrap intervals.

    python benchmarks/iter_vs_epochs.py --set fast_attention_dropout=true lr=1e-4 --seed 0
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality_rows import REPO, Recipe  # noqa: E402

from llm_embedder.schema import write_json  # noqa: E402
from llm_embedder.stats import bootstrap_ci  # noqa: E402


def per_query(path: Path, metric: str) -> dict[str, float]:
    with open(path, encoding="utf-8") as f:
        return {str(q["query_id"]): float(q[metric]) for q in map(json.loads, filter(str.strip, f))}


def recipe_folder(overrides: list[str], epochs: float | None = None) -> str:
    """quality.py's folder name of the recipe ``--set OVERRIDES`` (with ``epochs=`` when given)."""
    return Recipe().with_overrides(overrides + ([f"epochs={epochs}"] if epochs is not None else [])).tag()


def compare(root: Path, overrides: list[str], seed: int, rounds: int, metric: str) -> list[dict]:
    """Round R of the 3-iteration unit at ``overrides`` (one epoch per round) against distillation at R epochs."""
    rows = []
    for r in range(1, rounds + 1):
        a = per_query(root / recipe_folder(overrides) / "ours-3iter" / f"seed{seed}" / "3iter" / f"round-{r}" / "test.metrics.eval.jsonl", metric)
        b = per_query(root / recipe_folder(overrides, r) / "ours-distill" / f"seed{seed}" / "test.metrics.model.jsonl", metric)
        common = sorted(set(a) & set(b))
        d = [a[q] - b[q] for q in common]
        lo, hi = bootstrap_ci(d, seed)
        rows.append({"round": r, "epochs": r, "iter": statistics.fmean(a[q] for q in common),
                     "distill": statistics.fmean(b[q] for q in common), "mean": statistics.fmean(d), "ci95": [lo, hi],
                     "queries": len(d), "wins": sum(x > 0 for x in d), "losses": sum(x < 0 for x in d)})
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", default="runs/quality/scifact/test", help="quality.py's units root of the split")
    p.add_argument("--set", dest="overrides", nargs="*", default=[], metavar="NAME=VALUE",
                   help="the 3-iteration unit's recipe as quality.py's --set, one epoch per round (epochs=1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--metric", default="ndcg@10")
    p.add_argument("--output", default="benchmarks/results/quality_scifact_iter_vs_epochs.json")
    args = p.parse_args(argv)
    rows = compare(REPO / args.root, args.overrides, args.seed, args.rounds, args.metric)
    write_json(REPO / args.output, {"command": "python benchmarks/iter_vs_epochs.py " + " ".join(argv or sys.argv[1:]),
                                    "metric": args.metric, "seed": args.seed, "rows": rows})
    print(f"| round = epochs in all | 3-iteration | distillation, same epochs | difference [95% CI] | wins/losses |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['round']} | {r['iter']:.4f} | {r['distill']:.4f} | {r['mean']:+.4f} [{r['ci95'][0]:+.4f}, {r['ci95'][1]:+.4f}] | {r['wins']}/{r['losses']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
