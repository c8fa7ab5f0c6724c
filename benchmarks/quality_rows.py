"""The quality table's rows: which project command each row runs, with one shared recipe.

Every trained row starts from the same MiniLM with the same budget (``Recipe``: epochs, batch, lr, warm-up,
temperature, lengths) and is evaluated by the same ``python -m evaluation.eval_retrieval`` command, so rows
differ only in what the row names (negatives, loss, trainer). The commands are the project's own tools run as
subprocesses: ``run_dense.py``, ``run_lm_score.py``, ``scripts/lib/3iter.sh``, and ``quality_st.py``
(sentence-transformers' trainer) for the peer row.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
ITER_ROW = "ours-3iter"   # the 3-iteration row: rounds of scripts/lib/3iter.sh, run after the others


@dataclass(frozen=True)
class DatasetSpec:
    train: str
    test: str
    corpus: str
    lm_template: str  # query_likelihood where the data has no answers, qa (answer likelihood) where it has


DATASETS = {
    "scifact": DatasetSpec("llm-embedder:scifact/train.json", "llm-embedder:scifact/test.json",
                           "llm-embedder:scifact/corpus.jsonl", "query_likelihood"),
    "pubmedqa": DatasetSpec("llm-embedder:pubmedqa/train.json", "llm-embedder:pubmedqa/test.json",
                            "llm-embedder:pubmedqa/corpus.jsonl", "qa"),
}


@dataclass(frozen=True)
class Recipe:
    """The budget every trained row shares (``--set NAME=VALUE`` changes one; tuned on the dev split only)."""
    epochs: float = 1.0
    batch: int = 32
    lr: float = 2e-5
    warmup: float = 0.1
    temperature: float = 0.05
    group_size: int = 2          # keys per query: 1 positive + group_size-1 negatives (random, BM25, or LM-scored)
    query_max_length: int = 64
    key_max_length: int = 256
    instruction: bool = False
    # ours: PyTorch's attention dropout, as every unit of the table so far ran (before modeling/attention_dropout.py
    # became run_dense.py's default); `--set fast_attention_dropout=true` is another recipe, in its own folder
    fast_attention_dropout: bool = False

    def with_overrides(self, pairs: list[str]) -> "Recipe":
        """``["temperature=0.02", ...]`` -> a new recipe; unknown names and bad values are one-line errors."""
        fields = {f.name: f.type for f in dataclasses.fields(self)}
        changes = {}
        for pair in pairs:
            name, sep, value = pair.partition("=")
            if not sep or name not in fields:
                raise ValueError(f"--set: {pair!r} is not NAME=VALUE with NAME one of {', '.join(fields)}")
            kind = type(getattr(self, name))
            try:
                changes[name] = (value.lower() in ("1", "true", "yes")) if kind is bool else kind(value)
            except ValueError:
                raise ValueError(f"--set: {name}={value!r} is not a {kind.__name__}") from None
        return dataclasses.replace(self, **changes)

    def tag(self) -> str:
        """'default', or the overridden fields (a folder name: dev tuning runs never mix with the table's)."""
        diff = [f"{f.name}={getattr(self, f.name)}" for f in dataclasses.fields(self)
                if getattr(self, f.name) != f.default]
        return ",".join(diff) if diff else "default"


@dataclass
class Context:
    """Where a unit's inputs are (already split) and how it evaluates."""
    dataset: str
    spec: DatasetSpec
    recipe: Recipe
    train: str                 # training records of this split (all train queries, or train minus dev)
    mined: str | None          # BM25-mined negatives of those queries
    scored: str | None         # the same, LM-scored
    eval_data: str             # test (the table) or dev (tuning)
    n_train: int
    threads: int = 2
    corpus_subsample: int | None = None   # dev evaluation searches positives + N other rows
    checkpoints: bool = False             # keep checkpoints at 1/3 and 2/3 of training (for the steps plot)
    iter_queries: int | None = None
    iter_rounds: int = 3
    score_processes: int = 1              # ours-3iter: LM scoring ranks (3iter.sh's SCORE_PROCESSES)
    env: dict = field(default_factory=dict)


def eval_cmd(ctx: Context, out_dir: Path, save_name: str, method: list[str], eval_data: str | None = None) -> list[str]:
    """The one evaluation command of every row (dense rows add the encoder)."""
    cmd = [PY, "-m", "evaluation.eval_retrieval", "--eval_data", eval_data or ctx.eval_data, "--corpus", ctx.spec.corpus,
           "--metrics", "ndcg", "recall", "mrr", "--cutoffs", "10", "100", "--hits", "100",
           "--output_dir", str(out_dir), "--save_name", save_name, *method]
    if ctx.corpus_subsample:
        cmd += ["--corpus_subsample", str(ctx.corpus_subsample), "--seed", "0"]
    return cmd


def dense_method(ctx: Context, encoder: str) -> list[str]:
    r = ctx.recipe
    return ["--retrieval_method", "dense", "--query_encoder", encoder, "--query_max_length", str(r.query_max_length),
            "--key_max_length", str(r.key_max_length), "--batch_size", "32", "--add_instruction", str(r.instruction).lower()]


def eval_file(eval_data: str, out_dir: Path, save_name: str) -> Path:
    stem = Path(eval_data.split(":", 1)[-1]).name.removesuffix(".json")
    return Path(out_dir) / f"{stem}.eval.{save_name}.json"


def steps_per_epoch(ctx: Context) -> int:
    """Full batches per epoch: both trainers drop the last partial batch (809 queries, batch 32: 25 steps)."""
    return max(1, ctx.n_train // ctx.recipe.batch)


def checkpoint_steps(ctx: Context) -> int:
    """Save every third of training, so the steps plot has points at 1/3 and 2/3 (the end is the model)."""
    return max(1, math.ceil(steps_per_epoch(ctx) * ctx.recipe.epochs / 3))


def run_dense_cmd(ctx: Context, out: Path, seed: int, train_files: list[str], group_size: int, extra=()) -> list[str]:
    r = ctx.recipe
    cmd = [PY, str(REPO / "run_dense.py"), "--model_name_or_path", "minilm", "--train_data", *train_files,
           "--corpus", ctx.spec.corpus, "--output_dir", str(out), "--overwrite_output_dir",
           "--train_group_size", str(group_size), "--per_device_train_batch_size", str(r.batch),
           "--num_train_epochs", str(r.epochs), "--learning_rate", str(r.lr), "--warmup_ratio", str(r.warmup),
           "--cos_temperature", str(r.temperature), "--query_max_length", str(r.query_max_length),
           "--key_max_length", str(r.key_max_length), "--add_instruction", str(r.instruction).lower(),
           "--weight_decay", "0", "--negative_cross_device", "false", "--logging_steps", "5", "--seed", str(seed),
           "--disable_tqdm", "true", "--report_to", "none",
           "--fast_attention_dropout", str(r.fast_attention_dropout).lower(), *extra]
    if ctx.checkpoints:
        cmd += ["--save_strategy", "steps", "--save_steps", str(checkpoint_steps(ctx)), "--save_only_model", "true"]
    else:
        cmd += ["--save_strategy", "no"]
    return cmd


def st_cmd(ctx: Context, out: Path, seed: int) -> list[str]:
    r = ctx.recipe
    cmd = [PY, str(REPO / "benchmarks" / "quality_st.py"), "--train_data", ctx.mined, "--corpus", ctx.spec.corpus,
           "--output_dir", str(out), "--seed", str(seed), "--negatives", str(r.group_size - 1), "--batch", str(r.batch),
           "--epochs", str(r.epochs), "--lr", str(r.lr), "--warmup", str(r.warmup), "--temperature", str(r.temperature),
           "--max_seq_length", str(r.key_max_length)]
    if ctx.checkpoints:
        cmd += ["--save_steps", str(checkpoint_steps(ctx))]
    return cmd


Runner = Callable[[Context, "Unit", Path, Callable], Path]  # noqa: F821 (Unit: quality_plan.Unit)


def _base(ctx, unit, folder, run) -> Path:
    run(eval_cmd(ctx, folder, "minilm", dense_method(ctx, "minilm")))
    return eval_file(ctx.eval_data, folder, "minilm")


def _bm25(ctx, unit, folder, run) -> Path:
    run(eval_cmd(ctx, folder, "bm25", ["--retrieval_method", "bm25", "--bm25_backend", "pyserini"]))
    return eval_file(ctx.eval_data, folder, "bm25")


def _trained(train: Callable[[Context, Path, int], list[str]]) -> Runner:
    def runner(ctx, unit, folder, run) -> Path:
        model = folder / "model"
        run(train(ctx, model, unit.seed))
        run(eval_cmd(ctx, folder, "model", dense_method(ctx, str(model))))
        return eval_file(ctx.eval_data, folder, "model")
    return runner


def iter_epochs_per_round(ctx: Context) -> float:
    """The recipe's epochs shared among the rounds, so the 3-iteration row trains as many epochs in all as every
    other row (the table's same-budget rule): what it adds is re-mining and re-scoring, not more training."""
    return ctx.recipe.epochs / ctx.iter_rounds


def _three_iterations(ctx, unit, folder, run) -> Path:
    """``three_iterations`` of scripts/lib/3iter.sh with the table's recipe; the last round's test evaluation."""
    if ctx.corpus_subsample:
        raise ValueError("--rows ours-3iter: the 3-iteration row runs on the test split only (not --split dev)")
    check_setup_is_noop()
    r = ctx.recipe
    extra_train = (f"--warmup_ratio {r.warmup} --cos_temperature {r.temperature} "
                   f"--query_max_length {r.query_max_length} --key_max_length {r.key_max_length} "
                   f"--add_instruction {str(r.instruction).lower()} "
                   f"--fast_attention_dropout {str(r.fast_attention_dropout).lower()} --disable_tqdm true --report_to none")
    extra_eval = f"--query_max_length {r.query_max_length} --key_max_length {r.key_max_length}"
    out = folder / "3iter"
    copy_seed_independent_steps(ctx, folder, out)
    env = {"OUT": str(out), "N_QUERIES": str(ctx.iter_queries or ctx.n_train), "N_KEYS": str(r.group_size),
           "ROUNDS": str(ctx.iter_rounds), "EPOCHS": str(iter_epochs_per_round(ctx)), "BATCH": str(r.batch), "LR": str(r.lr),
           "TEMPLATE": ctx.spec.lm_template, "TORCH_THREADS": str(ctx.threads),
           "SCORE_PROCESSES": str(ctx.score_processes), "SEED": str(unit.seed),  # round R: data seed SEED+R-1
           "EXTRA_TRAIN_ARGS": extra_train, "EXTRA_EVAL_ARGS": extra_eval}
    script = (f'source "{REPO}/scripts/lib/3iter.sh"; three_iterations {ctx.dataset} '
              f'{ctx.train} {ctx.spec.test} {ctx.spec.corpus}')
    run(["bash", "-c", script], env=env)
    return eval_file(ctx.spec.test, out / f"round-{ctx.iter_rounds}", "eval")


def _stem(data: str) -> str:
    """The file stem 3iter.sh names outputs by (``llm-embedder:scifact/train.json`` -> ``train``)."""
    return Path(data.removeprefix("llm-embedder:")).name.removesuffix(".json")


def copy_seed_independent_steps(ctx: Context, folder: Path, out: Path) -> list[Path]:
    """Copy, from another unit's finished steps, the 3-iteration outputs that neither the seed nor the training
    budget enters: round 0's evaluation of the base model and round 1's BM25 mining and LM scoring (BM25 and
    float32 scoring are deterministic). Sources are the other seeds of this recipe first, then units of other
    recipes of the same split whose steps did the same work (``_same_work``). 3iter.sh then reuses them as it
    reuses its own earlier steps, which saves ~20 minutes per unit on 2 cores. Only complete steps are copied
    (the step's final file exists; tools rename it into place last); the copies' meta files keep the path they
    were made at. Returns the copied files (named in the unit's log)."""
    steps = [("round-0", _stem(ctx.spec.test), f"{_stem(ctx.spec.test)}.eval.eval.json"),
             ("round-1", _stem(ctx.train), f"{_stem(ctx.train)}.neg.bm25.scored.lm.json")]
    row, recipe_dir = folder.parent.name, folder.parent.parent
    copied = []
    for round_dir, stem, final in steps:
        if (out / round_dir / final).exists():
            continue
        found = (sorted(folder.parent.glob(f"seed*/3iter/{round_dir}/{final}"))
                 + sorted(recipe_dir.parent.glob(f"*/{row}/seed*/3iter/{round_dir}/{final}")))
        sources = [p.parent for p in dict.fromkeys(found)
                   if p.parent != out / round_dir and _same_work(ctx, p.parent, stem, round_dir)]
        if not sources:
            continue
        (out / round_dir).mkdir(parents=True, exist_ok=True)
        names = []
        for source in sorted(sources[0].glob(f"{stem}.*")):
            if source.is_file() and not source.name.endswith(".partial"):
                shutil.copy2(source, out / round_dir / source.name)
                names.append(source.name)
                copied.append(out / round_dir / source.name)
        with open(folder / "log.txt", "a", encoding="utf-8") as log:
            log.write(f"{round_dir}: copied {', '.join(names)} from {sources[0]} (neither seed nor budget enters these steps)\n")
    return copied


def _same_work(ctx: Context, source: Path, stem: str, round_dir: str) -> bool:
    """The source step did what this unit's would: round 0 evaluated the same base model at the same lengths;
    round 1 mined as many queries and negatives (``--iter_queries`` is not part of the units' folder) and scored
    them with the same template and keys per query."""
    r = ctx.recipe
    if round_dir == "round-0":
        args = json.loads((source / f"{stem}.eval.eval.json").read_text()).get("args", {})
        return (args.get("query_encoder") == "minilm" and args.get("query_max_length") == r.query_max_length
                and args.get("key_max_length") == r.key_max_length)
    mined = json.loads((source / f"{stem}.neg.bm25.meta.json").read_text())
    scored = json.loads((source / f"{stem}.neg.bm25.scored.lm.meta.json").read_text())
    return (mined["counts"]["rows"] == min(ctx.iter_queries or ctx.n_train, ctx.n_train)
            and mined["retrieval"]["max_neg_num"] == r.group_size - 1
            and scored.get("template_argument") == ctx.spec.lm_template and scored.get("max_keys") == r.group_size)


def recorded_step_seconds(out: Path) -> float | None:
    """Seconds the 3-iteration steps took over every run (3iter.sh's ``timings.tsv``; the latest run of each
    step counts), so a resumed unit reports what it cost, not only its last run. Steps copied from another
    seed have no line and cost this seed nothing. None when no step was timed."""
    path = out / "timings.tsv"
    if not path.is_file():
        return None
    latest = {}
    for line in path.read_text().splitlines():
        round_, step, seconds = line.split("\t")
        latest[(round_, step)] = float(seconds)
    return sum(latest.values())


def check_setup_is_noop() -> None:
    """scripts/lib/common.sh runs scripts/setup.sh; refuse unless that is a no-op for the venv in use
    (same stamp as setup.sh computes), so the 3-iteration row never reinstalls a shared environment."""
    stamp = REPO / ".venv" / ".llm_embedder_setup"
    digest = hashlib.sha256()
    lines = "".join(f"{hashlib.sha256((REPO / n).read_bytes()).hexdigest()}  {n}\n"
                    for n in ("constraints.txt", "pyproject.toml"))
    digest.update(lines.encode())
    want = digest.hexdigest()[:16]
    if not stamp.is_file() or stamp.read_text().strip() != want:
        raise RuntimeError(f"ours-3iter: {stamp} does not match constraints.txt + pyproject.toml, so "
                           "scripts/setup.sh would reinstall the venv; run setup yourself first")


def _ours_random(ctx, model, seed):
    return run_dense_cmd(ctx, model, seed, [ctx.train], ctx.recipe.group_size)


def _ours_bm25(ctx, model, seed):
    return run_dense_cmd(ctx, model, seed, [ctx.mined], ctx.recipe.group_size)


def _ours_distill(ctx, model, seed):
    return run_dense_cmd(ctx, model, seed, [ctx.scored], ctx.recipe.group_size, ["--stable_distill", "true"])


def _st(ctx, model, seed):
    return st_cmd(ctx, model, seed)


@dataclass(frozen=True)
class Row:
    name: str
    label: str
    trained: bool
    needs: tuple[str, ...]   # shared inputs: "mined", "scored"
    runner: Runner


ROWS = {r.name: r for r in [
    Row("base", "MiniLM, untrained", False, (), _base),
    Row("bm25", "BM25 (pyserini)", False, (), _bm25),
    Row("ours-random", "ours, contrastive, random negatives (the quickstart)", True, (), _trained(_ours_random)),
    Row("ours-bm25", "ours, contrastive, BM25 hard negatives", True, ("mined",), _trained(_ours_bm25)),
    Row("st-mnrl", "sentence-transformers MNRL, BM25 hard negatives", True, ("mined",), _trained(_st)),
    Row("ours-distill", "ours, contrastive + stable distillation (SmolLM2)", True, ("mined", "scored"),
        _trained(_ours_distill)),
    Row(ITER_ROW, "ours, 3-iteration pipeline (mine, score, train)", True, (), _three_iterations),
]}


def subprocess_runner(log_file: Path, threads: int, commands: list[str]) -> Callable:
    """``run(cmd, env=None)``: one command, output appended to the unit's log, its text kept in ``commands``;
    a failure raises with the command and the log's path."""
    def run(cmd: list[str], env: dict | None = None) -> None:
        full_env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
                    "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", **(env or {})}
        shown = " ".join(f"{k}={v!r}" for k, v in (env or {}).items())
        text = (shown + " " if shown else "") + " ".join(_quote(c) for c in cmd)
        commands.append(text.replace(str(REPO) + "/", "").replace(PY, "python"))
        log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(log_file, "a", encoding="utf-8") as log:
            log.write(f"$ {text}\n")
            log.flush()
            code = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, env=full_env, cwd=REPO)
        if code != 0:
            raise RuntimeError(f"command failed (exit {code}), see {log_file}: {text[:300]}")
    return run


def _quote(text: str) -> str:
    import shlex
    return shlex.quote(text)
