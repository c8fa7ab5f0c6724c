"""The quality table's bookkeeping: units of work (row x seed), their order, resume, and the aggregate.

Pure functions over folders and JSON files, no model code, so the resume and aggregate rules are tested with
tiny fakes (``tests/test_quality.py``). A unit is finished exactly when its ``result.json`` exists and holds
``metrics``; ``atomic_write`` makes that file appear whole or not at all, so a unit interrupted half-way
(a model saved, no result yet) is run again, never counted.
"""
from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

RESULT_NAME = "result.json"
TABLE_METRICS = ("ndcg@10", "recall@100", "mrr@10")


@dataclass(frozen=True)
class Unit:
    """One row trained (or evaluated) once. ``seed`` is None for rows without training (base model, BM25)."""
    row: str
    seed: int | None

    @property
    def name(self) -> str:
        return f"{self.row}/{'once' if self.seed is None else f'seed{self.seed}'}"

    def folder(self, root: Path) -> Path:
        return Path(root) / self.name

    def result_path(self, root: Path) -> Path:
        return self.folder(root) / RESULT_NAME


def plan(rows: Sequence[str], seeds: Sequence[int], trained: dict[str, bool], order: str = "seed") -> list[Unit]:
    """Units in run order. ``order="seed"``: the first seed of every row, then the next seed of every row
    (an interrupted table has a full first column); ``order="row"``: every seed of a row before the next row.
    Rows without training get one unit (seed None), placed with the first seed."""
    if order not in ("seed", "row"):
        raise ValueError(f"--seed_order: {order!r} is not one of seed, row")
    if not seeds:
        raise ValueError("--seeds: give at least one seed")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds: repeated seed in {list(seeds)}")

    def units_of(row: str, seed_list: Sequence[int]) -> list[Unit]:
        if not trained[row]:
            return [Unit(row, None)] if seed_list and seed_list[0] == seeds[0] else []
        return [Unit(row, s) for s in seed_list]

    if order == "row":
        return [u for row in rows for u in units_of(row, seeds)]
    return [u for i, seed in enumerate(seeds) for row in rows for u in units_of(row, seeds[i:i + 1])]


def read_result(path: Path) -> dict | None:
    """The unit's result, or None when it is missing or not a finished result (then the unit runs again)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("metrics"), dict):
        return None
    return data


def pending(units: Iterable[Unit], root: Path) -> list[Unit]:
    """Units without a finished result, in the given order."""
    return [u for u in units if read_result(u.result_path(root)) is None]


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (n-1); the std is None for a single value."""
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else None)


def finished_units(root: Path, row: str) -> list[tuple[Path, dict]]:
    """``(unit folder, result)`` of every finished unit of ``row`` under ``root`` (any seed), in folder order."""
    folder = Path(root) / row
    found = []
    for result_file in sorted(folder.glob(f"*/{RESULT_NAME}")) if folder.is_dir() else []:
        result = read_result(result_file)
        if result is not None:
            found.append((result_file.parent, result))
    return found


def aggregate(root: Path, rows: Sequence[str], labels: dict[str, str]) -> dict:
    """Collect every finished unit under ``root`` into per-row entries: per-seed metrics, wall times and
    commands, then mean and std per metric over the seeds found."""
    table = []
    for row in rows:
        units = [{"unit": unit_folder.name, "seed": result.get("seed"),
                  "metrics": {m: result["metrics"][m] for m in TABLE_METRICS if m in result["metrics"]},
                  "wall_time_s": result.get("wall_time_s"), "commands": result.get("commands", [])}
                 for unit_folder, result in finished_units(root, row)]
        units.sort(key=lambda u: (-1 if u["seed"] is None else u["seed"]))
        summary = {}
        for m in TABLE_METRICS:
            values = [u["metrics"][m] for u in units if m in u["metrics"]]
            if values:
                mean, std = mean_std(values)
                summary[m] = {"mean": mean, "std": std, "n": len(values)}
        table.append({"row": row, "label": labels.get(row, row), "n_seeds": len(units), "summary": summary,
                      "units": units})
    return {"rows": table}


def format_cell(entry: dict | None) -> str:
    """``mean ± std`` of a ``{"mean", "std"}`` entry (the mean alone without a spread; ``not run`` for None)."""
    if entry is None:
        return "not run"
    if entry["std"] is None or math.isnan(entry["std"]):
        return f"{entry['mean']:.4f}"
    return f"{entry['mean']:.4f} ± {entry['std']:.4f}"


def _minutes(seconds: float | None) -> str:
    return "?" if seconds is None else f"{seconds / 60:.1f}"


def markdown_table(agg: dict) -> str:
    """The results page's table: mean ± std over the seeds present, how many seeds, and each unit's minutes."""
    lines = ["| row | nDCG@10 | R@100 | MRR@10 | seeds | minutes per unit (seed: min) |", "|---|---|---|---|---|---|"]
    for r in agg["rows"]:
        cells = [format_cell(r["summary"].get(m)) for m in TABLE_METRICS]
        times = ", ".join(f"{'-' if u['seed'] is None else u['seed']}: {_minutes(u['wall_time_s'])}" for u in r["units"])
        seeds = str(r["n_seeds"]) if any(u["seed"] is not None for u in r["units"]) else ("n/a" if r["units"] else "0")
        lines.append(f"| {r['label']} | {' | '.join(cells)} | {seeds} | {times or '-'} |")
    return "\n".join(lines) + "\n"
