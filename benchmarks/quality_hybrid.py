"""The quality table's trained encoders, each fused with BM25 (``eval_retrieval --retrieval_method hybrid``).

For every finished unit of the given rows under a table folder (``benchmarks/quality.py``'s
``runs/quality/{dataset}/{split}/{recipe}``) that saved a model, this runs the unit's own evaluation command again
with ``--retrieval_method hybrid`` (so the data, lengths and instructions are the unit's) into
``{unit}/hybrid-{fusion}/``, and writes the table: each row's dense nDCG@10 (from the unit) beside its hybrid
nDCG@10, mean ± std over seeds. Resumable: a unit whose hybrid result exists is not evaluated again. The corpus
vectors come from the embedding cache the unit's evaluation filled, so pass the ``--cache_dir`` it used
(``.cache`` of the checkout it ran in).

    python benchmarks/quality_hybrid.py --table runs/quality/scifact/test/default --rows base ours-bm25 st-mnrl
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "benchmarks"))

from quality_plan import TABLE_METRICS, finished_units, format_cell, mean_std  # noqa: E402

from llm_embedder.io import atomic_write, write_json  # noqa: E402


def hybrid_command(eval_command: str, out: Path, fusion: str, cache_dir: str | None) -> list[str]:
    """The unit's dense evaluation command, made a hybrid one writing into ``out``."""
    argv = eval_command.split()
    if "--retrieval_method" not in argv or argv[argv.index("--retrieval_method") + 1] != "dense":
        raise ValueError(f"not a dense evaluation command: {eval_command}")
    argv[argv.index("--retrieval_method") + 1] = "hybrid"
    for flag, value in (("--output_dir", str(out)), ("--save_name", "hybrid"), ("--fusion", fusion)) + (
            (("--cache_dir", cache_dir),) if cache_dir else ()):
        if flag in argv:
            argv[argv.index(flag) + 1] = value
        else:
            argv += [flag, value]
    argv[0] = sys.executable
    return argv


def eval_command_of(result: dict) -> str | None:
    """The unit's (last) dense ``eval_retrieval`` command, or None (BM25 and restored units have none)."""
    cmds = [c for c in result.get("commands", []) if "evaluation.eval_retrieval" in c and "--retrieval_method dense" in c]
    return cmds[-1] if cmds else None


def missing_encoder(eval_command: str) -> str | None:
    """The ``--query_encoder`` of the command when it names a model folder that is gone from a unit folder that
    is there (a unit restored from a record), else None (an alias such as ``minilm``, a hub id, a model that is
    there)."""
    argv = eval_command.split()
    if "--query_encoder" not in argv:
        return None
    encoder = argv[argv.index("--query_encoder") + 1]
    path = Path(encoder) if Path(encoder).is_absolute() else REPO / encoder
    return encoder if not path.exists() and path.parent.is_dir() and path.parent != REPO else None


def run_unit(unit: Path, result: dict, fusion: str, cache_dir: str | None) -> dict | None:
    """The unit's hybrid metrics (evaluated now, or read back); None when the unit has no dense evaluation."""
    out = unit / f"hybrid-{fusion}"
    done = out / "hybrid.result.json"
    if done.is_file():
        return json.loads(done.read_text())
    command = eval_command_of(result)
    if command is None:
        return None
    encoder = missing_encoder(command)
    if encoder is not None:
        print(f"{unit}: skipped, its encoder {encoder} is not here (a unit restored from a record keeps no model)")
        return None
    argv = hybrid_command(command, out, fusion, cache_dir)
    started = time.time()
    subprocess.run(argv, cwd=REPO, check=True)
    summary = next(out.glob("*.eval.hybrid.json"))
    metrics = json.loads(summary.read_text())["metrics"]
    record = {"metrics": metrics, "dense_metrics": result["metrics"], "seed": result.get("seed"),
              "wall_time_s": round(time.time() - started, 1),
              "command": " ".join(["python", *argv[1:]])}
    write_json(done, record)
    return record


def table(units_by_row: dict[str, list[dict]]) -> dict:
    rows = {}
    for row, records in units_by_row.items():
        if not records:
            continue
        entry = {"seeds": [r["seed"] for r in records]}
        for side, key in (("dense", "dense_metrics"), ("hybrid", "metrics")):
            for m in TABLE_METRICS:
                mean, std = mean_std([r[key][m] for r in records])
                entry[f"{side} {m}"] = {"mean": mean, "std": std}
        rows[row] = entry
    return rows


def markdown(rows: dict, bm25: dict | None) -> str:
    lines = ["| row | seeds | dense nDCG@10 | hybrid nDCG@10 | hybrid R@100 | hybrid MRR@10 |", "|---|---|---|---|---|---|"]
    if bm25:
        lines.append(f"| BM25 alone | – | – | {bm25['ndcg@10']:.4f} | {bm25['recall@100']:.4f} | {bm25['mrr@10']:.4f} |")
    for row, e in rows.items():
        cells = [format_cell(e[k]) for k in ("dense ndcg@10", "hybrid ndcg@10", "hybrid recall@100", "hybrid mrr@10")]
        lines.append(f"| {row} | {len(e['seeds'])} | {' | '.join(cells)} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--table", required=True, help="a quality table folder: runs/quality/{dataset}/{split}/{recipe}")
    p.add_argument("--rows", nargs="+", required=True)
    p.add_argument("--bm25_table", default=None, help="the table folder whose bm25/once unit gives BM25 alone "
                                                      "(default --table)")
    p.add_argument("--fusion", choices=("rrf", "interpolation"), default="rrf")
    p.add_argument("--cache_dir", default=None, help="the embedding cache the units' evaluations filled")
    p.add_argument("--output", required=True, help="results stem: writes STEM.json and STEM.md")
    args = p.parse_args(argv)
    root = Path(args.table)
    for flag, folder in (("--table", root), ("--bm25_table", args.bm25_table)):
        if folder is not None and not Path(folder).is_dir():
            p.error(f"{flag}: {folder} is not a folder (a quality table's runs/quality/DATASET/SPLIT/RECIPE)")
    units_by_row = {}
    for row in args.rows:
        records = []
        for unit, result in finished_units(root, row):
            record = run_unit(unit, result, args.fusion, args.cache_dir)
            if record is not None:
                records.append(record)
        units_by_row[row] = records
    bm25_units = finished_units(Path(args.bm25_table or root), "bm25")
    bm25 = bm25_units[0][1]["metrics"] if bm25_units else None
    rows = table(units_by_row)
    out = {"table": str(root), "fusion": args.fusion, "bm25_alone": bm25, "rows": rows,
           "units": units_by_row, "command": " ".join(sys.argv)}
    write_json(Path(args.output + ".json"), out)
    text = markdown(rows, bm25)
    atomic_write(Path(args.output + ".md"), lambda f: f.write(text))
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
