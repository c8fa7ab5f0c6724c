"""The "At a glance" section of docs/results.md, written from the committed result files.

A user choosing a trainer reads the headline numbers first; typing them by hand lets the page drift from the
files. This script reads the quality aggregates (``quality.py``) and the speed benchmarks (``bench_train.py``,
``bench_encode.py``) named in ``QUALITY_TABLES`` / ``SPEED_RUNS`` and replaces the text between the page's
summary markers. ``--check`` writes nothing and exits 1 when the page is not what the files say (a test runs it).

    python benchmarks/summary.py            # rewrite the section after a table or benchmark changed
    python benchmarks/summary.py --check    # is the page in step with the files?
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from quality_rows import ROWS

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
PAGE = REPO / "docs" / "results.md"
START, END = "<!-- summary:start -->", "<!-- summary:end -->"


@dataclass(frozen=True)
class QualityTable:
    """One column of a dataset's at-a-glance table: an aggregate written by quality.py."""
    dataset: str
    column: str
    file: str


QUALITY_TABLES = (
    QualityTable("SciFact", "first recipe: lr 2e-5, 1 epoch", "quality_scifact.json"),
    QualityTable("SciFact", "lr 1e-4, 1 epoch", "quality_scifact_test_lr-0.0001_fast_attention_dropout-True.json"),
    QualityTable("SciFact", "**dev-chosen: lr 1e-4, 2 epochs**",
                 "quality_scifact_test_epochs-2.0_lr-0.0001_fast_attention_dropout-True.json"),
    QualityTable("SciFact", "the same, negatives from BM25's top 10",
                 "quality_scifact_test_epochs-2.0_lr-0.0001_fast_attention_dropout-True_neg_depth-10.json"),
    QualityTable("SciFact", "lr 1e-4, 3 epochs (a test control)",
                 "quality_scifact_test_epochs-3.0_lr-0.0001_fast_attention_dropout-True.json"),
    QualityTable("PubMedQA", "first recipe: lr 2e-5, 1 epoch", "quality_pubmedqa.json"),
)

# (what, file, side): the speed runs the page quotes; side is the encode backend compared (None: training)
SPEED_RUNS = (
    ("training step", "bench_train_s25_run1.json", None),
    ("training step", "bench_train_s25_run2.json", None),
    ("encoding (`--encode_backend onednn`)", "bench_encode_idle_residual.json",
     "llm_embedder.DenseEncoder.encode --encode_backend onednn"),
    ("encoding (`--encode_backend onednn`)", "bench_encode_idle_residual_run2.json",
     "llm_embedder.DenseEncoder.encode --encode_backend onednn"),
    ("encoding (`--encode_backend onednn`)", "bench_encode_s26.json",
     "llm_embedder.DenseEncoder.encode --encode_backend onednn"),
)


def cell(row: dict) -> str:
    """``mean ± sd (seeds)`` of nDCG@10; one seed without the spread; an untrained row (no seeds) the value alone."""
    s = row["summary"]["ndcg@10"]
    if not ROWS[row["row"]].trained:
        return f"{s['mean']:.4f}"
    if s["n"] > 1 and s.get("std") is not None:
        return f"{s['mean']:.4f} ± {s['std']:.4f} ({s['n']})"
    return f"{s['mean']:.4f} ({s['n']})"


def host(platform: str) -> str:
    """The host part of ``platform.platform()`` (``Linux-6.18.44-fc-v669-x86_64-...`` -> ``fc-v669``): runs on
    different hosts are not comparable by wall time."""
    found = re.match(r"^[^-]+-[^-]+-(.+?)-(x86_64|aarch64|arm64)", platform)
    return found.group(1) if found else platform


def quality_section(results: Path, dataset: str) -> list[str]:
    tables = [t for t in QUALITY_TABLES if t.dataset == dataset and (results / t.file).is_file()]
    aggregates = [json.loads((results / t.file).read_text(encoding="utf-8")) for t in tables]
    labels: dict[str, str] = {}
    cells: dict[str, dict[int, str]] = {}
    for i, agg in enumerate(aggregates):
        for row in agg["rows"]:
            labels.setdefault(row["row"], row["label"])
            if "ndcg@10" in row["summary"]:  # a row listed but with no finished unit ("not run") stays "–"
                cells.setdefault(row["row"], {})[i] = cell(row)
    lines = [f"| {dataset} test nDCG@10 | " + " | ".join(t.column for t in tables) + " |",
             "|---|" + "---|" * len(tables)]
    for row_id, label in labels.items():
        lines.append(f"| {label} | " + " | ".join(cells.get(row_id, {}).get(i, "–") for i in range(len(tables))) + " |")
    lines.append("")
    lines.append("Files: " + ", ".join(f"`{t.file}`" for t in tables) + ".")
    return lines


def speed_section(results: Path) -> list[str]:
    lines = ["| what | file | ours / sentence-transformers, wall (CPU time) | also | host |", "|---|---|---|---|---|"]
    for what, file, side in SPEED_RUNS:
        path = results / file
        if not path.is_file():
            continue
        run = json.loads(path.read_text(encoding="utf-8"))
        if side is None:
            ours = next(v for k, v in run["per_side"].items() if k.startswith("llm_embedder"))
            theirs = next(v for k, v in run["per_side"].items() if k.startswith("sentence-transformers"))
            ratio = f"{run['ratio_ours_over_sentence_transformers']:.3f} ({run['cpu_ratio_ours_over_sentence_transformers']:.3f})"
            also = (f"{ours['share_of_gemm_peak']:.1%} of the fp32 GEMM peak ({theirs['share_of_gemm_peak']:.1%} theirs), "
                    f"{run['rounds']} rounds × {run['steps_per_round']} steps")
        else:
            ratio = f"{run['ratio_over_sentence_transformers'][side]:.3f} ({run['cpu_ratio_over_sentence_transformers'][side]:.3f})"
            also = (f"vectors within {run['max_abs_vector_difference_from_sentence_transformers'][side]:.1e}, "
                    f"{run['docs']} docs × {run['rounds']} rounds")
        lines.append(f"| {what} | `{file}` | {ratio} | {also} | {host(run['machine']['platform'])} |")
    return lines


def render(results: Path = RESULTS) -> str:
    lines = [START, "## At a glance", "",
             "Written by `python benchmarks/summary.py` from the result files it names (the sections below give each "
             "command, the machine and the caveats); `tests/test_summary.py` fails when this section and the files "
             "disagree. Cells: mean ± sd (seeds); every trained row starts from all-MiniLM-L6-v2 with the column's "
             "budget; the recipe was chosen on a dev split of SciFact train.", ""]
    for dataset in dict.fromkeys(t.dataset for t in QUALITY_TABLES):
        lines += quality_section(results, dataset) + [""]
    lines += speed_section(results) + ["", END]
    return "\n".join(lines)


def replace_section(page: str, section: str, name: Path = PAGE) -> str:
    """``page`` with the text between its summary markers replaced by ``section``; ``name`` is the file the
    error names when the markers are missing."""
    if START not in page or END not in page:
        raise ValueError(f"{name}: no {START} ... {END} markers")
    head, rest = page.split(START, 1)
    return head + section + rest.split(END, 1)[1]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--check", action="store_true", help="exit 1 when the page differs from the files; write nothing")
    p.add_argument("--page", type=Path, default=PAGE)
    p.add_argument("--results", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    page = args.page.read_text(encoding="utf-8")
    try:
        new = replace_section(page, render(args.results), args.page)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.check:
        if new != page:
            print(f"{args.page}: the at-a-glance section is not what the result files say; "
                  "run python benchmarks/summary.py", file=sys.stderr)
            return 1
        return 0
    tmp = args.page.with_suffix(".md.tmp")
    tmp.write_text(new, encoding="utf-8")
    tmp.replace(args.page)
    return 0


if __name__ == "__main__":
    sys.exit(main())
