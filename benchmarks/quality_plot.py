"""nDCG@10 over training steps for chosen rows of the quality table (one seed each), as a PNG.

The first seed of every trained row keeps checkpoints at 1/3 and 2/3 of training (``--save_steps``); this
evaluates them with the rows' own evaluation command (each result kept under ``{unit}/steps/``, so the plot
resumes too), takes step 0 from the base-model row and the last step from the unit's result, and draws one
line per row.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

from quality_plan import Unit, read_result
from quality_rows import Context, dense_method, eval_cmd, eval_file, steps_per_epoch, subprocess_runner

from llm_embedder.io import write_json


def checkpoints(model_dir: Path) -> list[tuple[int, Path]]:
    found = [(int(m.group(1)), p) for p in Path(model_dir).glob("checkpoint-*")
             if p.is_dir() and (m := re.fullmatch(r"checkpoint-(\d+)", p.name))]
    return sorted(found)


def curve(ctx: Context, root: Path, row: str, seed: int, log) -> list[dict]:
    """Points ``{"step", "ndcg@10", ...}`` of one row's first seed: base at 0, checkpoints, the final model."""
    base = read_result(Unit("base", None).result_path(root))
    final = read_result(Unit(row, seed).result_path(root))
    if base is None or final is None:
        raise ValueError(f"--steps_plot {row}: needs finished units base/once and {row}/seed{seed} first")
    folder = Unit(row, seed).folder(root)
    points = [{"step": 0, **base["metrics"]}]
    total = math.ceil(steps_per_epoch(ctx) * ctx.recipe.epochs)
    for step, path in checkpoints(folder / "model"):
        if step >= total:  # the last step is the saved model, evaluated by the unit itself
            continue
        out = folder / "steps"
        result = out / f"step{step}.json"
        if not result.is_file():
            log(f"steps plot: evaluating {path}")
            commands: list[str] = []
            run = subprocess_runner(out / "log.txt", ctx.threads, commands)
            run(eval_cmd(ctx, out, f"step{step}", dense_method(ctx, str(path))))
            metrics = json.loads(eval_file(ctx.eval_data, out, f"step{step}").read_text())["metrics"]
            write_json(result, {"step": step, "metrics": metrics, "commands": commands})
        points.append({"step": step, **json.loads(result.read_text())["metrics"]})
    points.append({"step": total, **final["metrics"]})
    return points


def draw(curves: dict[str, list[dict]], labels: dict[str, str], png: Path, title: str) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    for row, points in curves.items():
        ax.plot([p["step"] for p in points], [p["ndcg@10"] for p in points], marker="o", label=labels.get(row, row))
    ax.set_xlabel("training step (batch 32)")
    ax.set_ylabel("test nDCG@10")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png)
    plt.close(fig)
    return png


def steps_plot(args, ctx: Context, root: Path, log, argv: list[str]) -> dict:
    from quality_rows import ROWS
    seed = args.seeds[0]
    curves = {row: curve(ctx, root, row, seed, log) for row in args.steps_plot}
    png = draw(curves, {r: ROWS[r].label for r in ROWS}, Path(args.img) / f"quality_{args.dataset}_steps.png",
               f"{args.dataset} test nDCG@10 during training (seed {seed})")
    out = {"dataset": args.dataset, "seed": seed, "curves": curves, "png": str(png),
           "command": "python benchmarks/quality.py " + " ".join(argv)}
    write_json(Path(args.results) / f"quality_{args.dataset}_steps.json", out)
    log(f"steps plot: {png}")
    return out
