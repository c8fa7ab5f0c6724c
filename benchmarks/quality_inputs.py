"""Inputs the quality table's rows share, computed once per dataset and reused (and resumed):

* ``train.neg.bm25.json``: BM25 (pyserini) negatives for every training query (``eval_retrieval --metrics
  collate_neg``);
* ``train.neg.bm25.scored.smollm2.json``: the positive and the first negatives of each query scored by SmolLM2
  (``run_lm_score.py``, resumable), run in the background because it is the longest step;
* the split: the table trains on all training queries (or the first ``--max_train_queries``) and evaluates on
  test; ``--split dev`` carves a deterministic dev set out of *train* for tuning, never touching test.

``inputs.json`` in the shared folder records the sizes the files were made with; asking for other sizes with
the same folder is an error before any work starts, so a resumed table never mixes two settings.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from quality_rows import PY, REPO, DatasetSpec

from llm_embedder.io import write_json, write_records
from llm_embedder.resources import resolve_data_path

LM_SAVE_NAME = "smollm2"
# every row trains on a query's first positive, so the LM scores that one and gives the other keys to negatives
# (without it, a SciFact query with four positives kept no negative under --score_keys 4)
SCORED_POSITIVES = 1


@dataclass(frozen=True)
class SharedInputs:
    folder: Path
    mined: Path
    scored: Path
    settings: dict

    @property
    def pid_file(self) -> Path:
        return self.folder / "score.pid"


def read_jsonl(path) -> list[dict]:
    with open(resolve_data_path(path), encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def shared_inputs(root: Path, dataset: str, neg_depth: int, score_keys: int, score_key_max_length: int) -> SharedInputs:
    folder = Path(root) / dataset / "shared"
    settings = {"neg_depth": neg_depth, "score_keys": score_keys, "score_key_max_length": score_key_max_length,
                "score_positives": SCORED_POSITIVES, "lm": LM_SAVE_NAME}
    recorded = folder / "inputs.json"
    if recorded.is_file():
        old = json.loads(recorded.read_text())
        if old != settings:
            raise ValueError(f"{recorded}: shared inputs were made with {old}, this run asks for {settings} "
                             f"(use another --out, or the same sizes)")
    return SharedInputs(folder, folder / "train.neg.bm25.json", folder / f"train.neg.bm25.scored.{LM_SAVE_NAME}.json",
                        settings)


def mine_cmd(spec: DatasetSpec, inputs: SharedInputs) -> list[str]:
    return [PY, "-m", "evaluation.eval_retrieval", "--eval_data", spec.train, "--corpus", spec.corpus,
            "--retrieval_method", "bm25", "--bm25_backend", "pyserini", "--metrics", "collate_neg",
            "--max_neg_num", str(inputs.settings["neg_depth"]), "--hits", "100", "--output_dir", str(inputs.folder),
            "--save_name", "bm25"]


def score_cmd(spec: DatasetSpec, inputs: SharedInputs, processes: int = 1) -> list[str]:
    """``run_lm_score.py`` on the mined file; with ``processes`` > 1 under torchrun (pairs dealt over the ranks,
    one thread each: on 2 cores, 2 ranks scored SciFact's 3,236 pairs in 17 min against about an hour for one
    process beside a training unit)."""
    launcher = [PY] if processes == 1 else [PY, "-m", "torch.distributed.run", "--standalone",
                                           "--nproc_per_node", str(processes)]
    return [*launcher, str(REPO / "run_lm_score.py"), "--eval_data", str(inputs.mined), "--corpus", spec.corpus,
            "--model_name_or_path", LM_SAVE_NAME, "--template", spec.lm_template, "--save_name", LM_SAVE_NAME,
            "--max_keys", str(inputs.settings["score_keys"]), "--max_pos", str(inputs.settings["score_positives"]),
            "--key_max_length", str(inputs.settings["score_key_max_length"]), "--save_every", "50",
            "--output_dir", str(inputs.folder)]


def record_settings(inputs: SharedInputs) -> None:
    if not (inputs.folder / "inputs.json").is_file():
        write_json(inputs.folder / "inputs.json", inputs.settings)


def scoring_pid(inputs: SharedInputs) -> int | None:
    """The pid of a scorer started earlier that is still running, else None."""
    try:
        pid = int(inputs.pid_file.read_text().strip())
        os.kill(pid, 0)
    except (FileNotFoundError, ValueError, ProcessLookupError, PermissionError):
        return None
    try:  # a scorer that exited but was not reaped yet (our own child) is a zombie: not running
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return None
    except (FileNotFoundError, IndexError):
        pass
    return pid


def start_scoring(spec: DatasetSpec, inputs: SharedInputs, log_file: Path, processes: int = 1) -> int:
    """Start (or resume: run_lm_score keeps a .partial folder, whatever the number of processes that wrote it)
    LM scoring in the background, nice, one thread per process."""
    running = scoring_pid(inputs)
    if running is not None:
        return running
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    with open(log_file, "a", encoding="utf-8") as log:
        cmd = score_cmd(spec, inputs, processes)
        log.write("$ nice -n 5 " + " ".join(cmd) + "\n")
        log.flush()
        proc = subprocess.Popen(["nice", "-n", "5", *cmd], stdout=log, stderr=subprocess.STDOUT,
                                env=env, cwd=REPO, start_new_session=True)
    inputs.pid_file.write_text(str(proc.pid))
    return proc.pid


def stop_scoring(inputs: SharedInputs) -> None:
    pid = scoring_pid(inputs)
    if pid is not None:
        os.kill(pid, signal.SIGTERM)


def dev_query_ids(records: list[dict], n_dev: int) -> set[str]:
    """A deterministic dev set: the ``n_dev`` training queries whose id hashes lowest (stable across runs and
    independent of file order)."""
    if not 0 < n_dev < len(records):
        raise ValueError(f"--dev_queries: {n_dev} must be between 1 and {len(records) - 1}")
    ids = sorted((hashlib.sha1(str(r["query_id"]).encode()).hexdigest(), str(r["query_id"])) for r in records)
    return {qid for _, qid in ids[:n_dev]}


@dataclass(frozen=True)
class Split:
    train: str
    mined: str
    scored: str
    eval_data: str
    n_train: int


def make_split(root: Path, dataset: str, spec: DatasetSpec, inputs: SharedInputs, split: str, n_dev: int,
               max_train_queries: int | None) -> Split:
    """Files for one split. ``test``: training records (all, or the first ``max_train_queries``), evaluation on
    test. ``dev``: training minus the dev queries, evaluation on the dev queries. Written once (atomically)."""
    train = read_jsonl(spec.train)
    if split == "dev":
        dev_ids = dev_query_ids(train, n_dev)
        keep = [r for r in train if str(r["query_id"]) not in dev_ids]
        dev = [r for r in train if str(r["query_id"]) in dev_ids]
    else:
        keep, dev = train, None
    if max_train_queries:
        keep = keep[:max_train_queries]
    if split == "test" and not max_train_queries:
        return Split(spec.train, str(inputs.mined), str(inputs.scored), spec.test, len(keep))
    folder = Path(root) / dataset / f"split-{split}{n_dev if split == 'dev' else ''}-q{max_train_queries or 'all'}"
    ids = {str(r["query_id"]) for r in keep}

    def subset(source: Path, name: str) -> str:
        target = folder / name
        if not target.is_file() and source.is_file():
            write_records(target, (r for r in read_jsonl(source) if str(r["query_id"]) in ids))
        return str(target)

    if not (folder / "train.json").is_file():
        write_records(folder / "train.json", keep)
    if dev is not None and not (folder / "dev.json").is_file():
        write_records(folder / "dev.json", dev)
    return Split(str(folder / "train.json"), subset(inputs.mined, inputs.mined.name),
                 subset(inputs.scored, inputs.scored.name), str(folder / "dev.json") if dev is not None else spec.test,
                 len(keep))


def refresh_split(split: Split, inputs: SharedInputs) -> None:
    """Write the split's copy of a shared file that appeared after the split was made (the scored file)."""
    for source, target in ((inputs.mined, split.mined), (inputs.scored, split.scored)):
        if Path(target) != source and not Path(target).is_file() and source.is_file():
            ids = {str(r["query_id"]) for r in read_jsonl(split.train)}
            write_records(target, (r for r in read_jsonl(source) if str(r["query_id"]) in ids))
