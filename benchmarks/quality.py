"""The retrieval quality table: base MiniLM, BM25, sentence-transformers and our recipes, several seeds each.

Every trained row starts from the same MiniLM with the same budget (``quality_rows.Recipe``) and is evaluated
by the same ``python -m evaluation.eval_retrieval`` command; rows and their commands are in ``quality_rows.py``.
A unit of work is one (row, seed); it writes ``result.json`` atomically under
``{out}/{dataset}/{split}/{recipe}/{row}/seed{k}/`` and is skipped when that file is there, so an interrupted
table continues where it stopped. Each finished unit's result and per-query lines are also copied to
``benchmarks/results/quality_units/`` (committed) and restored from there, so a fresh clone continues too
(``quality_records.py``). Shared inputs (BM25 negatives, SmolLM2 scores) are made once; the scoring
runs in the background while the rows that do not need it train. The aggregate (per-seed values, mean, std,
wall time and commands of every unit) goes to ``benchmarks/results/quality_{dataset}.json`` and ``.md``.

    python benchmarks/quality.py --dataset scifact --seeds 0 1 2            # the table (hours on 2 cores)
    python benchmarks/quality.py --dataset scifact --dry_run                # the plan and what is done
    python benchmarks/quality.py --split dev --rows ours-bm25 --set temperature=0.02   # tuning, dev split of train
    python benchmarks/quality.py --steps_plot ours-distill st-mnrl          # nDCG@10 over training steps (PNG)
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "src")]
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import quality_inputs as qi  # noqa: E402
from quality_compare import carry_query_views, comparisons, markdown_comparisons  # noqa: E402
from quality_plan import Unit, aggregate, markdown_table, pending, plan, read_result  # noqa: E402
from quality_records import publish, records_root, restore  # noqa: E402
from quality_rows import DATASETS, ITER_ROW, ROWS, Context, Recipe, recorded_step_seconds, subprocess_runner  # noqa: E402

from llm_embedder.io import atomic_write, write_json  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python benchmarks/quality.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--dataset", choices=sorted(DATASETS), default="scifact")
    p.add_argument("--rows", nargs="+", default=[r for r in ROWS if r != ITER_ROW],
                   help=f"any of {', '.join(ROWS)}, run in the order given (the table keeps its own order)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--seed_order", choices=("seed", "row"), default="seed",
                   help="seed: the first seed of every row, then the next seed (an interrupted table has a full "
                        "first column); row: all seeds of a row before the next row")
    p.add_argument("--iter_seeds", nargs="*", type=int, default=None,
                   help=f"seeds of {ITER_ROW} when it is in --rows (default: the first of --seeds); run last")
    p.add_argument("--iter_queries", type=int, default=None, help=f"{ITER_ROW}: training queries per round (default all)")
    p.add_argument("--iter_rounds", type=int, default=3)
    p.add_argument("--split", choices=("test", "dev"), default="test",
                   help="test: the table; dev: train minus --dev_queries, evaluated on those (for tuning)")
    p.add_argument("--dev_queries", type=int, default=100)
    p.add_argument("--dev_corpus_subsample", type=int, default=1000,
                   help="dev evaluation searches the dev positives plus this many other corpus rows (seeded)")
    p.add_argument("--max_train_queries", type=int, default=None, help="train on the first N training queries")
    p.add_argument("--set", dest="overrides", nargs="*", default=[], metavar="NAME=VALUE",
                   help=f"recipe changes, one of: {', '.join(Recipe.__dataclass_fields__)}")
    p.add_argument("--neg_depth", type=int, default=3, help="BM25 negatives mined per query (the hard-negative pool)")
    p.add_argument("--score_keys", type=int, default=4, help="keys per query the LM scores (positive first)")
    p.add_argument("--score_key_max_length", type=int, default=192, help="tokens of each key the LM sees")
    p.add_argument("--threads", type=int, default=2, help="torch threads for training and encoding")
    p.add_argument("--score_processes", type=int, default=1,
                   help="LM scoring processes (torchrun ranks). The shared scoring runs them one thread each "
                        "beside the training units (1 leaves a core to those; the number of cores is fastest when "
                        "only scored rows are left); ours-3iter's scoring steps share --threads among them")
    p.add_argument("--stop_after", default=None, metavar="HH:MM",
                   help="UTC time after which no new unit starts (the aggregate is still written)")
    p.add_argument("--steps_plot", nargs="*", default=None, metavar="ROW",
                   help="instead of the table: evaluate the checkpoints of these rows' first seed and plot nDCG@10 "
                        f"over training steps ({ITER_ROW}: the end of each round, from the rounds' own evaluations)")
    p.add_argument("--steps_corpus_subsample", type=int, default=None, metavar="N",
                   help="--steps_plot on a cheaper corpus: the positives plus N seeded other rows, every point "
                        "(step 0 and the last step too) evaluated on it")
    p.add_argument("--out", default="runs/quality", help="work folder (units, shared inputs, log.txt)")
    p.add_argument("--results", default=str(HERE / "results"), help="where the aggregate JSON and markdown go")
    p.add_argument("--img", default=str(HERE.parent / "docs" / "img"), help="where the steps plot goes")
    p.add_argument("--aggregate_only", action="store_true", help="write the aggregate of finished units, run nothing")
    p.add_argument("--dry_run", action="store_true", help="print the plan and each unit's state, run nothing")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    p = build_parser()
    args = p.parse_args(argv)
    unknown = [r for r in args.rows + (args.steps_plot or []) if r not in ROWS]
    if unknown:
        p.error(f"--rows/--steps_plot: unknown row {unknown[0]!r}; choose from {', '.join(ROWS)}")
    if len(set(args.rows)) != len(args.rows):
        p.error("--rows: a row is listed twice")
    try:
        args.recipe = Recipe().with_overrides(args.overrides)
    except ValueError as err:
        p.error(str(err))
    if args.recipe.group_size < 2 or args.score_keys < args.recipe.group_size:
        p.error(f"--score_keys {args.score_keys} must be >= group_size {args.recipe.group_size} >= 2 "
                "(the distillation row trains on the scored keys)")
    if args.neg_depth < args.recipe.group_size - 1:
        p.error(f"--neg_depth {args.neg_depth}: needs at least group_size - 1 = {args.recipe.group_size - 1}")
    if args.score_processes < 1:
        p.error(f"--score_processes: {args.score_processes} must be at least 1")
    if args.stop_after is not None:
        try:
            hh, mm = (int(x) for x in args.stop_after.split(":"))
            now = dt.datetime.now(dt.timezone.utc)
            args.stop_at = now.replace(hour=hh, minute=mm, second=0, microsecond=0)
        except ValueError:
            p.error(f"--stop_after: {args.stop_after!r} is not HH:MM (UTC)")
    else:
        args.stop_at = None
    if args.iter_seeds is None:
        args.iter_seeds = args.seeds[:1]
    return args


class Log:
    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def __call__(self, message: str) -> None:
        line = f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M:%S}Z {message}"
        print(line, flush=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line + "\n")


# settings outside the recipe that change what a unit trains on or is evaluated on (dev_*: the dev split only)
TABLE_SETTINGS = ("neg_depth", "score_keys", "score_key_max_length", "max_train_queries", "dev_queries",
                  "dev_corpus_subsample")


def table_tag(args) -> str:
    """The recipe's tag plus every table setting that differs from its default (``neg_depth=10``), so a table
    made from other inputs never shares a units folder, records or aggregate with the default one."""
    defaults = build_parser().parse_args([])
    extra = [f"{name}={getattr(args, name)}" for name in TABLE_SETTINGS
             if getattr(args, name) != getattr(defaults, name) and (args.split == "dev" or not name.startswith("dev_"))]
    tag = args.recipe.tag()
    return ",".join(([] if tag == "default" else [tag]) + extra) if extra else tag


def units_root(args) -> Path:
    return Path(args.out) / args.dataset / args.split / table_tag(args)


def unit_records(args) -> Path:
    """The committed copies of this table's finished units (``quality_records.py``)."""
    return records_root(Path(args.results), args.dataset, args.split, table_tag(args))


def all_units(args) -> list[Unit]:
    rows = [r for r in args.rows if r != ITER_ROW]
    units = plan(rows, args.seeds, {r: ROWS[r].trained for r in ROWS}, args.seed_order)
    if ITER_ROW in args.rows:
        units += [Unit(ITER_ROW, s) for s in args.iter_seeds]
    return units


def results_stem(args) -> str:
    extra = "" if args.split == "test" and table_tag(args) == "default" else f"_{args.split}_{table_tag(args)}"
    return f"quality_{args.dataset}{extra.replace(',', '_').replace('=', '-')}"


def machine() -> dict:
    return {"cpus": os.cpu_count(), "platform": platform.platform(), "processor": platform.processor() or None,
            "load_average": os.getloadavg()}


def run_unit(unit: Unit, ctx: Context, root: Path, log: Log, argv: list[str]) -> dict:
    folder = unit.folder(root)
    if folder.exists():  # an interrupted attempt: start the unit over, except the steps 3iter.sh resumes itself
        for entry in folder.iterdir():
            if unit.row == ITER_ROW and entry.name == "3iter":
                continue
            if entry.is_dir():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    folder.mkdir(parents=True, exist_ok=True)
    commands: list[str] = []
    run = subprocess_runner(folder / "log.txt", ctx.threads, commands)
    started, load_start = time.time(), os.getloadavg()
    eval_json = ROWS[unit.row].runner(ctx, unit, folder, run)
    metrics = json.loads(Path(eval_json).read_text())["metrics"]
    this_run = time.time() - started
    steps = recorded_step_seconds(folder / "3iter") if unit.row == ITER_ROW else None  # every run's steps
    result = {"row": unit.row, "seed": unit.seed, "dataset": ctx.dataset, "eval_data": ctx.eval_data,
              "metrics": metrics, "wall_time_s": round(steps if steps is not None else this_run, 1),
              "wall_time_this_run_s": round(this_run, 1), "commands": commands,
              "eval_file": str(eval_json), "recipe": ctx.recipe.__dict__, "n_train_queries": ctx.n_train,
              "started": dt.datetime.fromtimestamp(started, dt.timezone.utc).isoformat(timespec="seconds"),
              "load_average_start": load_start, "load_average_end": os.getloadavg(), "machine": machine(),
              "table_command": "python benchmarks/quality.py " + " ".join(argv)}
    write_json(unit.result_path(root), result)
    log(f"done {unit.name}: nDCG@10 {metrics.get('ndcg@10', float('nan')):.4f} in {result['wall_time_s'] / 60:.1f} min")
    return result


def write_aggregate(args, root: Path, log: Log, argv: list[str]) -> dict:
    published = publish(root, unit_records(args))
    if published:
        log(f"published to {unit_records(args)}: {', '.join(published)}")
    table_rows = [r for r in ROWS if r in args.rows]  # the table's order, whatever order the units ran in
    labels = {r: ROWS[r].label for r in ROWS}
    agg = aggregate(root, table_rows, labels)
    agg["comparisons"] = comparisons(root, table_rows)
    stem = Path(args.results) / results_stem(args)
    agg_path = stem.with_name(stem.name + ".json")  # read (the previous aggregate), then replaced
    carried = carry_query_views(agg["comparisons"], json.loads(agg_path.read_text()) if agg_path.is_file() else None)
    if carried:
        log(f"per-query views kept from the previous aggregate (units without lines now): {', '.join(carried)}")
    agg.update({"dataset": args.dataset, "split": args.split, "recipe": args.recipe.__dict__,
                "command": "python benchmarks/quality.py " + " ".join(argv), "machine": machine(),
                "written": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")})
    write_json(agg_path, agg)
    text = markdown_table(agg)
    if agg["comparisons"]:
        text += "\n" + markdown_comparisons(agg["comparisons"])
    atomic_write(stem.with_name(stem.name + ".md"), lambda f: f.write(text))
    log(f"aggregate: {stem}.json / .md")
    return agg


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    spec = DATASETS[args.dataset]
    root = units_root(args)
    log = Log(Path(args.out) / "log.txt")
    try:
        inputs = qi.shared_inputs(Path(args.out), args.dataset, args.neg_depth, args.score_keys,
                                  args.score_key_max_length)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    restored = restore(unit_records(args), root)
    if restored:
        log(f"restored from {unit_records(args)}: {', '.join(restored)}")
    units = all_units(args)
    if args.dry_run:
        todo = set(pending(units, root))
        print(f"{args.dataset}, split {args.split}, recipe {table_tag(args)}: {root}")
        print(f"shared inputs in {inputs.folder}: mined {'yes' if inputs.mined.is_file() else 'no'}, "
              f"scored {'yes' if inputs.scored.is_file() else 'no'}"
              f"{' (scoring running, pid %d)' % qi.scoring_pid(inputs) if qi.scoring_pid(inputs) else ''}")
        for i, u in enumerate(units, 1):
            state = "todo" if u in todo else "done %.4f" % read_result(u.result_path(root))["metrics"]["ndcg@10"]
            print(f"{i:3d}. {u.name:24s} {state}")
        return 0
    if args.steps_plot is not None:
        from quality_plot import steps_plot
        split = qi.make_split(Path(args.out), args.dataset, spec, inputs, args.split, args.dev_queries,
                              args.max_train_queries)
        ctx = make_context(args, spec, split)
        if args.steps_corpus_subsample:
            ctx.corpus_subsample = args.steps_corpus_subsample
        steps_plot(args, ctx, root, log, argv, results_stem(args))
        return 0
    if not args.aggregate_only:
        run_table(args, spec, inputs, root, units, log, argv)
    write_aggregate(args, root, log, argv)
    return 0


def make_context(args, spec, split: qi.Split) -> Context:
    return Context(args.dataset, spec, args.recipe, split.train, split.mined, split.scored, split.eval_data,
                   split.n_train, threads=args.threads,
                   corpus_subsample=args.dev_corpus_subsample if args.split == "dev" else None,
                   iter_queries=args.iter_queries, iter_rounds=args.iter_rounds, score_processes=args.score_processes)


def run_table(args, spec, inputs, root: Path, units: list[Unit], log: Log, argv: list[str]) -> None:
    inputs.folder.mkdir(parents=True, exist_ok=True)
    qi.record_settings(inputs)
    todo = pending(units, root)
    log(f"{args.dataset} {args.split} {table_tag(args)}: {len(todo)} of {len(units)} units to run: "
        + ", ".join(u.name for u in todo))
    needs = {n for u in todo for n in ROWS[u.row].needs}
    run_shared = subprocess_runner(inputs.folder / "log.txt", args.threads, [])
    if needs and not inputs.mined.is_file():
        log("mining BM25 negatives for the training queries")
        run_shared(qi.mine_cmd(spec, inputs))
    if "scored" in needs and not inputs.scored.is_file():
        log(f"LM scoring in the background (pid {qi.start_scoring(spec, inputs, inputs.folder / 'score.log', args.score_processes)})")
    split = qi.make_split(Path(args.out), args.dataset, spec, inputs, args.split, args.dev_queries,
                          args.max_train_queries)
    ctx = make_context(args, spec, split)
    first_seed = {u.row: u.seed for u in reversed(units)}
    queue = list(todo)
    while queue:
        if args.stop_at is not None and dt.datetime.now(dt.timezone.utc) >= args.stop_at:
            log(f"--stop_after {args.stop_after}: not starting {', '.join(u.name for u in queue)}")
            break
        ready = [u for u in queue if "scored" not in ROWS[u.row].needs or inputs.scored.is_file()]
        if not ready:
            if qi.scoring_pid(inputs) is None:  # died or was stopped: resume it
                log(f"LM scoring restarted (pid {qi.start_scoring(spec, inputs, inputs.folder / 'score.log', args.score_processes)})")
            time.sleep(30)
            continue
        unit = ready[0]
        queue.remove(unit)
        qi.refresh_split(split, inputs)
        log(f"start {unit.name}")
        ctx.checkpoints = ROWS[unit.row].trained and unit.seed == first_seed[unit.row] and unit.row != ITER_ROW
        try:
            run_unit(unit, ctx, root, log, argv)
        except (RuntimeError, ValueError) as err:
            log(f"FAILED {unit.name}: {err}")
        else:
            publish(root, unit_records(args))  # committed with the table: a fresh clone resumes from here


if __name__ == "__main__":
    sys.exit(main())
