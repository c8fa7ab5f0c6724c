"""``scripts/lrlm-study.sh`` end to end at toy size: every stage runs, the study table is written, a second
run resumes (nothing is rebuilt, rescored or retrained), and the settings sweep measures another setting."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from test_lm_fixtures import tiny_lm_dir  # noqa: F401  (fixture)
from test_lrlm import _module

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_study_script_runs_every_stage_and_resumes(tmp_path, tiny_lm_dir, tiny_bert_dir):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(7):
        (src / f"mod{i}.py").write_text(_module(i))
    out = tmp_path / "out"
    env = dict(os.environ, PYTHON=sys.executable, OUT=str(out), SOURCE=str(src), LM=str(tiny_lm_dir), LM_NAME="tiny",
               ENCODER=str(tiny_bert_dir), CHUNK="16", N_CAND="4", TEST_FILES="2", VALID_FILES="1", N_TRAIN="12",
               N_VALID="4", N_TEST="6", N_REL="6", SCORE_TRAIN="12", SCORE_VALID="4", SCORE_TEST="6", SCORE_REL="6",
               SEEDS="1", RECIPES="kl", BATCH="4", THREADS="1")
    run = lambda *stages: subprocess.run(["bash", str(REPO / "scripts" / "lrlm-study.sh"), *stages], env=env,  # noqa: E731
                                         cwd=tmp_path, capture_output=True, text=True, timeout=900)
    first = run()
    assert first.returncode == 0, first.stderr[-3000:]
    study = json.loads((out / "study.json").read_text())
    rows = json.dumps(study)
    for label in ("bm25", "oracle", "fitted", "trained:kl", "chosen_vs_fitted"):
        assert label in rows, label
    assert (out / "eval-test" / "fitted.json").is_file() and (out / "reliability-defref" / "reliability.json").is_file()
    stamps = {p: p.stat().st_mtime for p in [*out.glob("data*/*.json"), *out.glob("runs/*/model.safetensors")]}
    assert len(stamps) >= 8
    second = run()
    assert second.returncode == 0, second.stderr[-3000:]
    assert "exists" in second.stdout
    assert [p for p, t in stamps.items() if p.stat().st_mtime != t] == []  # data, scores and models were reused
    # the settings sweep: reliability of another setting (here: 5 train targets) on train files
    env["SWEEP"] = f"tiny-5:{tiny_lm_dir}:5:16:chunk"
    sweep = run("sweep")
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    rel = json.loads((out / "sweep" / "tiny-5" / "reliability" / "reliability.json").read_text())
    assert rel["targets"] == 5 and "fitted_model" in rel["rows_second_half"]
