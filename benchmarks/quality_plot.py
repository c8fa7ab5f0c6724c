"""nDCG@10 over training steps for chosen rows of the quality table (one seed each), as a PNG.

The first seed of every trained row keeps checkpoints at 1/3 and 2/3 of training (``--save_steps``); this
evaluates them with the rows' own evaluation command (each result kept under ``{unit}/steps/``, so the plot
resumes too), takes step 0 from the base-model row and the last step from the unit's result, and draws one
line per row. The 3-iteration row keeps no checkpoints: its points are the end of each round (the round's own
test evaluation, at the steps its rounds trained so far).
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

from quality_plan import Unit, read_result
from quality_rows import ITER_ROW, REPO, Context, dense_method, eval_cmd, eval_file, steps_per_epoch, subprocess_runner

from llm_embedder.io import write_json


def checkpoints(model_dir: Path) -> list[tuple[int, Path]]:
    found = [(int(m.group(1)), p) for p in Path(model_dir).glob("checkpoint-*")
             if p.is_dir() and (m := re.fullmatch(r"checkpoint-(\d+)", p.name))]
    return sorted(found)


def rounds(unit_folder: Path) -> list[tuple[int, Path]]:
    """``(steps trained so far, round folder)`` of a 3-iteration unit's finished rounds, in order. A round's steps
    are the last ``step`` its trainer logged (``model/train_log.jsonl``)."""
    found = sorted((int(m.group(1)), p) for p in Path(unit_folder, "3iter").glob("round-*")
                   if (m := re.fullmatch(r"round-(\d+)", p.name)) and int(m.group(1)) > 0 and (p / "model" / ".complete").exists())
    out, steps = [], 0
    for _, folder in found:
        log = folder / "model" / "train_log.jsonl"
        logged = [json.loads(line) for line in log.read_text().splitlines() if line.strip()] if log.is_file() else []
        if not logged:
            raise ValueError(f"--steps_plot {ITER_ROW}: {log} has no logged step")
        steps += max(int(entry.get("step", 0)) for entry in logged)
        out.append((steps, folder))
    return out


def evaluated(ctx: Context, out: Path, name: str, encoder: str, log) -> dict:
    """Metrics of ``encoder`` with the rows' evaluation command, kept in ``out/{name}.json`` (resumable)."""
    result = out / f"{name}.json"
    if not result.is_file():
        log(f"steps plot: evaluating {encoder}")
        commands: list[str] = []
        run = subprocess_runner(out / "log.txt", ctx.threads, commands)
        run(eval_cmd(ctx, out, name, dense_method(ctx, encoder)))
        metrics = json.loads(eval_file(ctx.eval_data, out, name).read_text())["metrics"]
        write_json(result, {"encoder": encoder, "metrics": metrics, "commands": commands})
    return json.loads(result.read_text())["metrics"]


def curve(ctx: Context, root: Path, row: str, seed: int, log) -> list[dict]:
    """Points ``{"step", "ndcg@10", ...}`` of one row's first seed: base at 0, checkpoints, the final model.

    On the full corpus, step 0 and the last step are the table's own results. With ``ctx.corpus_subsample``
    (a cheaper curve: positives plus N seeded other rows) every point is evaluated on that subsample."""
    base = read_result(Unit("base", None).result_path(root))
    final = read_result(Unit(row, seed).result_path(root))
    if base is None or final is None:
        raise ValueError(f"--steps_plot {row}: needs finished units base/once and {row}/seed{seed} first")
    folder = Unit(row, seed).folder(root)
    sub = f"-sub{ctx.corpus_subsample}" if ctx.corpus_subsample else ""
    if sub:
        points = [{"step": 0, **evaluated(ctx, Unit("base", None).folder(root) / f"steps{sub}", "step0", "minilm", log)}]
    else:
        points = [{"step": 0, **base["metrics"]}]
    known: dict[int, dict] = {}  # steps the run evaluated itself on the full corpus (a 3-iteration round's test)
    if row == ITER_ROW:
        ends = rounds(folder)
        if not ends:
            raise ValueError(f"--steps_plot {row}: {folder / '3iter'} has no finished round")
        inner = [(step, round_folder / "model") for step, round_folder in ends[:-1]]
        total, last = ends[-1][0], ends[-1][1] / "model"
        if not sub:
            known = {step: json.loads(own.read_text())["metrics"] for step, round_folder in ends[:-1]
                     if (own := eval_file(ctx.eval_data, round_folder, "eval")).is_file()}
    else:
        total, last = math.ceil(steps_per_epoch(ctx) * ctx.recipe.epochs), folder / "model"
        inner = [(step, path) for step, path in checkpoints(last) if step < total]  # the last step is the saved model
    for step, path in inner:
        metrics = known.get(step) or evaluated(ctx, folder / f"steps{sub}", f"step{step}", str(path), log)
        points.append({"step": step, **metrics})
    if sub:
        points.append({"step": total, **evaluated(ctx, folder / f"steps{sub}", f"step{total}", str(last), log)})
    else:
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
    ax.set_ylabel("nDCG@10")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png)
    plt.close(fig)
    return png


def _repo_relative(path: Path) -> str:
    """``path`` relative to the checkout when it lies inside it (the committed JSON names no machine's folders)."""
    try:
        return str(Path(path).resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def steps_plot(args, ctx: Context, root: Path, log, argv: list[str], stem: str | None = None) -> dict:
    """``{stem}_steps.png`` / ``.json`` (``stem``: the table's results name, which names a recipe other than the
    default, so each recipe's plot has its own files)."""
    from quality_rows import ROWS
    stem = stem or f"quality_{args.dataset}"
    seed = args.seeds[0]
    curves = {row: curve(ctx, root, row, seed, log) for row in args.steps_plot}
    corpus = f"positives + {ctx.corpus_subsample} other docs" if ctx.corpus_subsample else "full corpus"
    png = draw(curves, {r: ROWS[r].label for r in ROWS}, Path(args.img) / f"{stem}_steps.png",
               f"{args.dataset} {Path(ctx.eval_data).stem} nDCG@10 during training (seed {seed}, {corpus})")
    out = {"dataset": args.dataset, "seed": seed, "corpus": corpus, "curves": curves, "png": _repo_relative(png),
           "command": "python benchmarks/quality.py " + " ".join(argv)}
    write_json(Path(args.results) / f"{stem}_steps.json", out)
    log(f"steps plot: {png}")
    return out
