"""Paired comparisons between rows of the quality table: is one row's lead over another larger than its noise?

Two views of the same question, both read from finished units (nothing is typed in):

* **seeds**: the two rows' metric paired by seed number, the mean of the differences, their sample sd and a
  paired t-test (scipy) when there are at least two pairs. Seeds pair runs by number only: two trainers use
  their random draws differently, so this is a plain comparison of run-to-run spread.
* **queries**: each row's per-query metric (the evaluation's ``{split}.metrics.{save_name}.jsonl`` lines)
  averaged over the row's seeds that kept them, the mean difference over the test queries both rows cover, and
  its paired 95 % bootstrap interval (queries resampled). This interval counts the sampling of test queries,
  which three seeds cannot.

A unit restored from an aggregate (no per-query lines) still counts in the seed view; a comparison whose rows
have no per-query lines says so instead of printing an interval.
"""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Sequence

from quality_plan import RESULT_NAME, finished_units, read_result
from quality_rows import REPO

from llm_embedder.stats import bootstrap_ci

# (row A, row B): "does A beat B?", in the order the results page asks them
COMPARISONS = (
    ("ours-distill", "ours-bm25"),    # the question: distillation vs contrastive only, same negatives
    ("ours-bm25", "st-mnrl"),         # ours vs the peer on the same mined file and budget
    ("ours-distill", "st-mnrl"),
    ("ours-bm25", "ours-random"),     # hard negatives vs the quickstart's random ones
    ("ours-3iter", "ours-distill"),   # three rounds of mine -> score -> train vs one round of distillation
    ("ours-3iter", "st-mnrl"),
)

METRIC_LABELS = {"ndcg@10": "nDCG@10", "recall@100": "R@100", "mrr@10": "MRR@10"}


def seed_values(root: Path, row: str, metric: str) -> dict[int, float]:
    """``{seed: metric}`` of a row's finished seeded units."""
    return {int(result["seed"]): float(result["metrics"][metric]) for _, result in finished_units(root, row)
            if result.get("seed") is not None and metric in result["metrics"]}


def per_query(root: Path, row: str, metric: str) -> tuple[dict[str, float], int]:
    """The row's per-query metric averaged over the finished units that kept per-query lines, and how many did."""
    sums: dict[str, list[float]] = {}
    units = 0
    for unit_folder, result in finished_units(root, row):
        lines = per_query_lines(unit_folder, result)
        if lines is None:
            continue
        units += 1
        for qid, value in read_per_query(lines, metric).items():
            sums.setdefault(qid, []).append(value)
    complete = {qid: statistics.fmean(v) for qid, v in sums.items() if len(v) == units}
    return complete, units


def per_query_lines(unit_folder: Path, result: dict) -> Path | None:
    """The unit's ``*.metrics.*.jsonl``: the one in its folder, else the one beside the evaluation file its
    result names (the 3-iteration row evaluates in ``3iter/round-R/``); None when there is none."""
    lines = sorted(unit_folder.glob("*.metrics.*.jsonl"))
    if len(lines) == 1:
        return lines[0]
    if lines or not result.get("eval_file"):
        return None
    eval_file = Path(result["eval_file"])
    if not eval_file.is_absolute():
        eval_file = REPO / eval_file
    beside = eval_file.with_name(eval_file.name.replace(".eval.", ".metrics.", 1)).with_suffix(".jsonl")
    return beside if beside.is_file() else None


def compare(root: Path, row_a: str, row_b: str, metric: str = "ndcg@10", seed: int = 0) -> dict | None:
    """One comparison (A minus B), or None when either row has no finished seeded unit."""
    a, b = seed_values(root, row_a, metric), seed_values(root, row_b, metric)
    if not a or not b:
        return None
    out: dict = {"a": row_a, "b": row_b, "metric": metric}
    pairs = sorted(set(a) & set(b))
    diffs = [a[s] - b[s] for s in pairs]
    out["seeds"] = {"paired_seeds": pairs, "differences": diffs,
                    "mean": statistics.fmean(diffs) if diffs else None,
                    "sd": statistics.stdev(diffs) if len(diffs) > 1 else None,
                    "t_test_p": _paired_t_p([a[s] for s in pairs], [b[s] for s in pairs])}
    qa, units_a = per_query(root, row_a, metric)
    qb, units_b = per_query(root, row_b, metric)
    out["queries"] = query_view(qa, qb, seed)
    if out["queries"] is not None:
        out["queries"].update(units_a=units_a, units_b=units_b)
    return out


def query_view(qa: dict[str, float], qb: dict[str, float], seed: int = 0) -> dict | None:
    """Mean per-query difference A minus B over the queries both have, its paired 95 % bootstrap interval,
    wins and losses; None when they share no query."""
    common = sorted(set(qa) & set(qb))
    if not common:
        return None
    d = [qa[q] - qb[q] for q in common]
    lo, hi = bootstrap_ci(d, seed)
    return {"queries": len(common), "mean": statistics.fmean(d), "ci95": [lo, hi],
            "significant": bool(lo > 0 or hi < 0), "wins": sum(x > 0 for x in d), "losses": sum(x < 0 for x in d)}


def unit_per_query(folder: Path, metric: str) -> dict[str, float]:
    """One finished unit's per-query metric, from any table (a one-line error when it has none)."""
    result = read_result(Path(folder) / RESULT_NAME)
    lines = per_query_lines(Path(folder), result) if result is not None else None
    if lines is None:
        raise ValueError(f"{folder}: not a finished unit with per-query lines")
    return read_per_query(lines, metric)


def read_per_query(lines: Path, metric: str) -> dict[str, float]:
    """``{query_id: metric}`` from a ``*.metrics.*.jsonl`` file (blank lines skipped)."""
    with open(lines, encoding="utf-8") as f:
        return {str(q["query_id"]): float(q[metric]) for q in map(json.loads, filter(str.strip, f))}


def main(argv=None) -> int:
    """Two units of any tables (e.g. a dev knob against the dev baseline), paired over their common queries."""
    import argparse
    p = argparse.ArgumentParser(prog="python benchmarks/quality_compare.py", description=main.__doc__)
    p.add_argument("unit_a", type=Path, help="a finished unit folder: runs/quality/{dataset}/{split}/{table}/{row}/{unit}")
    p.add_argument("unit_b", type=Path)
    p.add_argument("--metric", default="ndcg@10")
    args = p.parse_args(argv)
    try:
        qa, qb = unit_per_query(args.unit_a, args.metric), unit_per_query(args.unit_b, args.metric)
    except (ValueError, KeyError) as err:
        p.error(f"{err}")
    view = query_view(qa, qb)
    if view is None:
        p.error("the two units share no query")
    print(json.dumps({"a": str(args.unit_a), "b": str(args.unit_b), "metric": args.metric, **view}))
    return 0


def _paired_t_p(x: Sequence[float], y: Sequence[float]) -> float | None:
    if len(x) < 2:
        return None
    if statistics.pstdev([p - q for p, q in zip(x, y)]) < 1e-12:  # no spread: the t statistic is undefined
        return None
    from scipy.stats import ttest_rel

    return float(ttest_rel(x, y).pvalue)


def comparisons(root: Path, rows: Sequence[str], metric: str = "ndcg@10") -> list[dict]:
    """Every comparison in :data:`COMPARISONS` whose two rows are in ``rows`` and have finished units."""
    out = []
    for row_a, row_b in COMPARISONS:
        if row_a in rows and row_b in rows:
            result = compare(root, row_a, row_b, metric)
            if result is not None:
                out.append(result)
    return out


def carry_query_views(found: list[dict], previous: dict | None) -> list[str]:
    """Keep the per-query view of a comparison whose units lost their per-query lines (restored from seed-only
    records) when the table's previous aggregate had it for the same units: same rows and metric, same paired
    seeds and the same per-seed differences. The view is marked ``carried_from`` (the previous aggregate's
    time), so a re-aggregate never drops what an earlier one measured. Returns the comparisons carried."""
    if not previous:
        return []
    written = previous.get("written", "an earlier aggregate")
    old = {(c["a"], c["b"], c["metric"]): c for c in previous.get("comparisons", []) if c.get("queries")}
    carried = []
    for c in found:
        before = old.get((c["a"], c["b"], c["metric"]))
        if c["queries"] is not None or before is None:
            continue
        same_units = (before["seeds"]["paired_seeds"] == c["seeds"]["paired_seeds"]
                      and all(abs(x - y) < 1e-12 for x, y in zip(before["seeds"]["differences"], c["seeds"]["differences"])))
        if same_units:
            c["queries"] = {"carried_from": written, **before["queries"]}
            carried.append(f"{c['a']} minus {c['b']}")
    return carried


def markdown_comparisons(found: list[dict]) -> str:
    """The results page's comparison table, rows by their ``--rows`` names (A minus B; positive: A is ahead)."""
    if not found:
        return ""
    metric = METRIC_LABELS.get(found[0]["metric"], found[0]["metric"])
    lines = [f"| A minus B ({metric}) | per seed | mean ± sd (t-test p) | over test queries: mean [95% CI], units A/B |",
             "|---|---|---|---|"]
    for c in found:
        s, q = c["seeds"], c["queries"]
        per_seed = ", ".join(f"{seed}: {d:+.4f}" for seed, d in zip(s["paired_seeds"], s["differences"])) or "no common seed"
        if s["mean"] is None:
            spread = "-"
        else:
            spread = f"{s['mean']:+.4f}" + (f" ± {s['sd']:.4f}" if s["sd"] is not None else "")
            spread += f" (p = {s['t_test_p']:.2f})" if s["t_test_p"] is not None else ""
        if q is None:
            over = "no per-query lines"
        else:
            over = (f"{q['mean']:+.4f} [{q['ci95'][0]:+.4f}, {q['ci95'][1]:+.4f}]{' *' if q['significant'] else ''}, "
                    f"{q['units_a']}/{q['units_b']}{' †' if 'carried_from' in q else ''}")
        lines.append(f"| `{c['a']}` minus `{c['b']}` | {per_seed} | {spread} | {over} |")
    text = "\n".join(lines) + "\n\n(\\*: the interval excludes 0.) Per-query values are averaged over each row's seeds " \
                               "that kept per-query lines (units A/B); units restored from an aggregate have none.\n"
    carried = sorted({c["queries"]["carried_from"] for c in found if c["queries"] and "carried_from" in c["queries"]})
    if carried:
        text += (f"(†: from the aggregate written {', '.join(carried)}, when these units' per-query lines were on disk; "
                 "the same units, by their per-seed values.)\n")
    return text


if __name__ == "__main__":
    sys.exit(main())
