"""Committed records of the quality table's finished units, so that a table survives a fresh clone.

The work folder (``runs/quality``: models, mined files, logs) is not in git, and a new checkout starts
without it; a table that took hours of CPU would otherwise start again from nothing. So every finished unit's
small files, its ``result.json`` and its per-query metric lines (what the aggregate and the paired comparisons
read), are *published* to ``benchmarks/results/quality_units/{dataset}/{split}/{recipe}/{row}/{unit}/``, which
is committed. Before it plans, ``quality.py`` *restores* those records into the work folder, so a unit finished
in any earlier checkout is done, and the aggregate and comparisons read the files they always read.

A table aggregated before records existed can be turned into records with ``import``: each unit's metrics,
wall time and commands from the aggregate JSON, marked ``restored_from``, without per-query lines (such units
count in the seed view of the comparisons, not in the query view).

    python benchmarks/quality_records.py import benchmarks/results/quality_scifact_test_...json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "src")]

from quality_compare import per_query_lines  # noqa: E402
from quality_plan import RESULT_NAME, finished_units, read_result  # noqa: E402
from quality_rows import Recipe  # noqa: E402

from llm_embedder.io import copy_atomic, write_json  # noqa: E402

RECORDS_DIR = "quality_units"


def records_root(results: Path, dataset: str, split: str, recipe_tag: str) -> Path:
    """Where the records of one table (dataset, split, recipe) live under the results folder."""
    return Path(results) / RECORDS_DIR / dataset / split / recipe_tag


def _finished(root: Path) -> list[tuple[Path, dict]]:
    """``({row}/{unit} folder, result)`` of every finished unit under a table's root, all rows."""
    rows = sorted(d.name for d in Path(root).iterdir() if d.is_dir()) if Path(root).is_dir() else []
    return [found for row in rows for found in finished_units(root, row)]


def _same_bytes(a: Path, b: Path) -> bool:
    return b.is_file() and a.read_bytes() == b.read_bytes()


def _copy_unit(source: Path, result: dict, dest: Path) -> bool:
    """Copy a unit's result and per-query lines into ``dest`` (each file atomically, the result last, so a
    half-copied unit is not finished); True when anything changed."""
    files = [p for p in [per_query_lines(source, result)] if p is not None] + [source / RESULT_NAME]
    changed = False
    for path in files:
        target = dest / path.name
        if not _same_bytes(path, target):
            dest.mkdir(parents=True, exist_ok=True)
            copy_atomic(path, target)
            changed = True
    return changed


def publish(root: Path, records: Path) -> list[str]:
    """Copy every finished unit of the work folder ``root`` to ``records``; the units copied or updated."""
    done = []
    for unit, result in _finished(root):
        name = str(unit.relative_to(root))
        if _copy_unit(unit, result, Path(records) / name):
            done.append(name)
    return done


def restore(records: Path, root: Path) -> list[str]:
    """Copy into ``root`` every recorded unit that ``root`` does not hold finished; the units restored. A unit
    folder left by an interrupted attempt is replaced by the record (the unit is finished)."""
    done = []
    for record, result in _finished(records):
        name = str(record.relative_to(records))
        unit = Path(root) / name
        if read_result(unit / RESULT_NAME) is None:
            _copy_unit(record, result, unit)
            done.append(name)
    return done


def import_aggregate(aggregate_json: Path, results: Path) -> list[str]:
    """Records for the units of an aggregate written before records existed (metrics, wall time, commands;
    no per-query lines). Units that already have a record are left alone; the units written."""
    agg = json.loads(Path(aggregate_json).read_text(encoding="utf-8"))
    for key in ("rows", "dataset", "split", "recipe"):
        if key not in agg:
            raise ValueError(f"{aggregate_json}: not a quality table aggregate (no {key!r})")
    tag = Recipe(**agg["recipe"]).tag()
    records = records_root(results, agg["dataset"], agg["split"], tag)
    written = []
    for row in agg["rows"]:
        for u in row["units"]:
            dest = records / row["row"] / u["unit"] / RESULT_NAME
            if read_result(dest) is not None:
                continue
            write_json(dest, {"row": row["row"], "seed": u["seed"], "dataset": agg["dataset"], "metrics": u["metrics"],
                              "wall_time_s": u["wall_time_s"], "commands": u["commands"], "recipe": agg["recipe"],
                              "restored_from": f"{Path(aggregate_json).name} (written {agg.get('written', '?')})"})
            written.append(f"{row['row']}/{u['unit']}")
    return written


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/quality_records.py", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    imp = sub.add_parser("import", help="records from aggregate JSON files written before records existed")
    imp.add_argument("aggregates", nargs="+", type=Path)
    imp.add_argument("--results", type=Path, default=HERE / "results")
    args = p.parse_args(argv)
    for path in args.aggregates:
        if not path.is_file():
            p.error(f"{path}: no such file")
        try:
            written = import_aggregate(path, args.results)
        except (ValueError, TypeError, KeyError, json.JSONDecodeError) as err:
            print(f"error: {path}: {err}", file=sys.stderr)
            return 2
        print(f"{path}: {len(written)} unit records written{': ' + ', '.join(written) if written else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
