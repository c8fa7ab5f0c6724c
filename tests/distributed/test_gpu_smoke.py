"""scripts/gpu-smoke.sh cannot run without a GPU; here: its syntax, its one-line refusal on a CPU machine,
and its Python checks (scripts/gpu_smoke_check.py) on CPU (collectives under torchrun + gloo)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
SCRIPT, CHECK = REPO / "scripts" / "gpu-smoke.sh", REPO / "scripts" / "gpu_smoke_check.py"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def check(*args, launcher=()):
    return subprocess.run([*launcher, str(CHECK), *map(str, args)], capture_output=True, text=True, env=ENV,
                          timeout=300, cwd=REPO)


def test_script_is_valid_bash():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible: the script would run for real")
def test_script_refuses_without_a_gpu_in_one_line():
    proc = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, env=ENV, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "gpu-smoke: no CUDA GPU visible (torch.cuda.is_available() is False); this script needs at least one GPU"]


@pytest.mark.slow
@pytest.mark.distributed
def test_collectives_check_under_torchrun_gloo():
    proc = check("collectives", launcher=(sys.executable, "-m", "torch.distributed.run", "--standalone",
                                          "--nproc_per_node", "2"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ok: collectives on 2 rank(s), backend gloo, group device cpu" in proc.stdout


@pytest.mark.slow
def test_model_and_scored_checks(tmp_path, tiny_bert_dir):
    from llm_embedder.modeling.encoder import DenseEncoder

    saved = DenseEncoder.from_pretrained(tiny_bert_dir).save_pretrained(tmp_path / "model")
    proc = check("model", saved, saved, launcher=(sys.executable,))
    assert proc.returncode == 0 and "loads in sentence-transformers" in proc.stdout, proc.stderr[-3000:]

    scored = tmp_path / "qa.scored.smoke.json"
    scored.write_text(json.dumps({"query": "q", "teacher_scores": [-1.5, -2.0]}) + "\n")
    (tmp_path / "qa.scored.smoke.meta.json").write_text(json.dumps({"world_size": 2}))
    assert check("scored", scored, 2, launcher=(sys.executable,)).returncode == 0
    wrong = check("scored", scored, 1, launcher=(sys.executable,))
    assert wrong.returncode == 1 and wrong.stderr.startswith("FAILED: ") and "expected 1" in wrong.stderr
