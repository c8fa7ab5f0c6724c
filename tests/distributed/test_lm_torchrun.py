"""run_lm_score.py under torchrun (2 gloo processes) writes the same file as one process, while resuming the
partial scores left by a killed single-process run (one torchrun launch checks both)."""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from llm_embedder.lm import run as lm_run
from llm_embedder.lm.scorer import LMScorer

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("test_lm_fixtures", REPO / "tests" / "test_lm_fixtures.py")
fixtures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fixtures)

pytestmark = [pytest.mark.slow, pytest.mark.distributed]
WORLD_SIZE = 2


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def torchrun(args: list[str]) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
           "--nproc_per_node", str(WORLD_SIZE), str(REPO / "run_lm_score.py"), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert proc.returncode == 0, f"torchrun failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"


class Killed(Exception):
    pass


@pytest.fixture
def one_thread():
    """The ranks run with OMP_NUM_THREADS=1; this process matches them (same kernels, same numbers)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_two_ranks_equal_one_process_and_resume_partial_scores(tmp_path, toy_dir, monkeypatch, one_thread):
    model_dir = fixtures.build_tiny_lm(tmp_path / "tiny_lm")
    data = tmp_path / "qa.json"
    shutil.copy(toy_dir / "qa.json", data)
    common = ["--eval_data", str(data), "--model_name_or_path", str(model_dir), "--max_queries", "4",
              "--max_keys", "12", "--max_length", "128", "--token_budget", "512", "--save_every", "4"]

    lm_run.run(lm_run.build_parser().parse_args(common + ["--save_name", "one", "--output_dir", str(tmp_path / "single")]))
    single = rows(tmp_path / "single" / "qa.scored.one.json")

    # a single process is killed after 3 batches; two ranks then finish the job from its partial scores
    real, calls = LMScorer.score_batch, []

    def dies(self, sequences):
        if len(calls) == 3:
            raise Killed
        calls.append(len(sequences))
        return real(self, sequences)

    monkeypatch.setattr(LMScorer, "score_batch", dies)
    with pytest.raises(Killed):
        lm_run.run(lm_run.build_parser().parse_args(common + ["--save_name", "two"]))
    monkeypatch.undo()
    torchrun(common + ["--save_name", "two"])
    two = rows(tmp_path / "qa.scored.two.json")
    meta = json.loads((tmp_path / "qa.scored.two.meta.json").read_text())
    assert meta["world_size"] == WORLD_SIZE and meta["counts"]["pairs"] == 48
    assert 0 < meta["counts"]["pairs_resumed_from_partial"] <= sum(calls) < 48 - 2 * 4  # both ranks had batches left

    assert len(two) == len(single) == 4
    for a, b in zip(single, two):
        assert {k: v for k, v in a.items() if k != "teacher_scores"} == {k: v for k, v in b.items() if k != "teacher_scores"}
        assert b["teacher_scores"] == pytest.approx(a["teacher_scores"], abs=1e-6)
    assert len({round(s, 4) for r in single for s in r["teacher_scores"]}) > 10  # scores really differ
