"""run_dense.py under torchrun (2 CPU processes, gloo; plain DDP and DeepSpeed ZeRO) equals one process holding the global batch."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[2]
TOY = "llm-embedder:llm_embedder_toy"

pytestmark = [pytest.mark.slow, pytest.mark.distributed]


def train(model_dir, out, nproc: int, *extra):
    global_batch = 4
    args = ["--model_name_or_path", str(model_dir), "--output_dir", str(out), "--train_data", f"{TOY}/qa.json",
            "--per_device_train_batch_size", str(global_batch // nproc), "--train_group_size", "3",
            "--max_steps", "2", "--logging_steps", "1", "--learning_rate", "1e-3", "--seed", "3",
            "--query_max_length", "32", "--key_max_length", "32", "--disable_tqdm", "True", *extra]
    if nproc == 1:
        cmd = [sys.executable, str(REPO / "run_dense.py"), *args, "--use_cpu"]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
               str(REPO / "run_dense.py"), *args]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return load_file(str(Path(out) / "model.safetensors"))


@pytest.mark.parametrize("extra", [["--negative_cross_device"], ["--negative_cross_device", "--contrastive_weight", "0.5"]])
def test_two_processes_with_cross_device_negatives_equal_one_process(tiny_bert_nodrop_dir, tmp_path, extra):
    single = train(tiny_bert_nodrop_dir, tmp_path / "single", 1, *extra)
    double = train(tiny_bert_nodrop_dir, tmp_path / "ddp", 2, *extra)
    initial = load_file(str(tiny_bert_nodrop_dir / "model.safetensors"))
    moved = max(float((single[n] - initial[n]).abs().max()) for n in single)
    assert moved > 1e-4, "training did not change the weights"
    for name in single:
        torch.testing.assert_close(double[name], single[name], atol=2e-5, rtol=1e-4, msg=name)


def test_without_cross_device_negatives_the_runs_differ(tiny_bert_nodrop_dir, tmp_path):
    """Guard for the test above: the equality is not trivial (local in-batch negatives change the loss)."""
    single = train(tiny_bert_nodrop_dir, tmp_path / "single", 1)
    double = train(tiny_bert_nodrop_dir, tmp_path / "ddp", 2)
    assert any(not torch.allclose(double[n], single[n], atol=2e-5, rtol=1e-4) for n in single)


@pytest.mark.parametrize("stage", [2])
def test_deepspeed_zero_on_cpu_equals_one_process(tiny_bert_nodrop_dir, tmp_path, stage):
    """DeepSpeed ZeRO (gloo, torch AdamW) over 2 processes trains the same weights as plain single-process AdamW."""
    config = REPO / "data" / "deepspeed" / f"stage{stage}.json"
    single = train(tiny_bert_nodrop_dir, tmp_path / "single", 1, "--negative_cross_device")
    zero = train(tiny_bert_nodrop_dir, tmp_path / "zero", 2, "--negative_cross_device", "--deepspeed", str(config))
    for name in single:
        torch.testing.assert_close(zero[name], single[name], atol=2e-5, rtol=1e-4, msg=name)
