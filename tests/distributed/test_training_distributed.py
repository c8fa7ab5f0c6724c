"""run_dense.py over 2 CPU processes (torchrun, gloo: DDP, DeepSpeed ZeRO-2 and ZeRO-3, GradCache) and with
gradient accumulation, against one process holding the global batch.

Every run takes ONE plain SGD step (lr 1, no clipping, no weight decay, constant schedule), so the weight
change *is* minus the gradient: unlike weights after AdamW, it shows a gradient scaled by a constant. Each
comparison has a guard asserting that the same comparison fails for half and for twice the gradient (a
missing or doubled world-size / accumulation factor). The training file has exactly one global batch (4
records), so every variant sees the same examples.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[2]
TOY = REPO / "data" / "llm_embedder_toy" / "qa.json"

pytestmark = [pytest.mark.slow, pytest.mark.distributed]

SGD = ["--optim", "sgd", "--learning_rate", "1.0", "--max_grad_norm", "0", "--weight_decay", "0",
       "--lr_scheduler_type", "constant", "--max_steps", "1"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, tiny_bert_nodrop_dir):
    root = tmp_path_factory.mktemp("scale")
    four = root / "qa4.json"
    four.write_text("".join(TOY.read_text(encoding="utf-8").splitlines(keepends=True)[:4]), encoding="utf-8")
    return {"root": root, "data": four, "model": tiny_bert_nodrop_dir, "runs": {}}


def deepspeed_config(workdir, stage: int) -> Path:
    """The shipped stage config with HF's optimizer (SGD) instead of its AdamW; ZeRO-3 partitions every
    tensor of the tiny model (the default persistence threshold would keep them all whole)."""
    config = json.loads((REPO / "data" / "deepspeed" / f"stage{stage}.json").read_text())
    config.pop("optimizer")
    config["zero_allow_untested_optimizer"] = True
    if stage == 3:
        config["zero_optimization"]["stage3_param_persistence_threshold"] = 0
    path = workdir["root"] / f"stage{stage}_sgd.json"
    path.write_text(json.dumps(config))
    return path


def run(workdir, name: str, nproc: int, *extra, global_batch: int = 4):
    """Train (cached per name) and return (weight change per tensor, output dir)."""
    if name in workdir["runs"]:
        return workdir["runs"][name]
    out = workdir["root"] / name
    args = ["--model_name_or_path", str(workdir["model"]), "--output_dir", str(out), "--train_data", str(workdir["data"]),
            "--per_device_train_batch_size", str(global_batch // nproc), "--train_group_size", "3",
            "--logging_steps", "1", "--seed", "3", "--query_max_length", "32", "--key_max_length", "32",
            "--disable_tqdm", "True", *SGD, *extra]
    if nproc == 1:
        cmd = [sys.executable, str(REPO / "run_dense.py"), *args, "--use_cpu"]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
               str(REPO / "run_dense.py"), *args]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    initial = load_file(str(workdir["model"] / "model.safetensors"))
    trained = load_file(str(out / "model.safetensors"))
    delta = {n: trained[n] - initial[n] for n in trained if n in initial}
    workdir["runs"][name] = (delta, out)
    return delta, out


def assert_same_step(got: dict, expected: dict):
    """Equal weight changes (= gradients), and a comparison that would see a factor of 2 either way."""
    scale = max(float(d.abs().max()) for d in expected.values())
    assert scale > 1e-3, "the SGD step did not move the weights"
    for factor in (1.0, 0.5, 2.0):
        same = all(torch.allclose(got[n], factor * expected[n], rtol=1e-3, atol=1e-5 * scale) for n in expected)
        assert same == (factor == 1.0), f"factor {factor}: {'equal' if same else 'different'}"


def test_ddp_with_cross_device_negatives_equals_one_process(workdir):
    single, _ = run(workdir, "single_xdev", 1, "--negative_cross_device")
    ddp, _ = run(workdir, "ddp_xdev", 2, "--negative_cross_device")
    assert_same_step(ddp, single)


def test_ddp_grad_cache_with_cross_device_negatives_equals_one_process(workdir):
    """GradCache under HF's DDP (find_unused_parameters, sync after the last chunk), separate chunk sizes."""
    single, _ = run(workdir, "single_xdev", 1, "--negative_cross_device")
    cached, _ = run(workdir, "ddp_gc_xdev", 2, "--negative_cross_device", "--grad_cache_query_chunk_size", "1",
                    "--grad_cache_key_chunk_size", "2")
    assert_same_step(cached, single)


def test_deepspeed_zero2_with_grad_cache_equals_one_process(workdir):
    single, _ = run(workdir, "single_xdev", 1, "--negative_cross_device")
    zero2, _ = run(workdir, "zero2_xdev", 2, "--negative_cross_device", "--deepspeed", str(deepspeed_config(workdir, 2)))
    zero2_gc, _ = run(workdir, "zero2_gc_xdev", 2, "--negative_cross_device", "--grad_cache_chunk_size", "1",
                      "--deepspeed", str(deepspeed_config(workdir, 2)))
    assert_same_step(zero2, single)
    assert_same_step(zero2_gc, single)


def test_gradient_accumulation_equals_the_whole_batch(workdir):
    """Per-query losses (contrastive without in-batch negatives; no distillation, whose stable variant ranks
    against every key of the batch): 2 micro-batches of 2 with accumulation == one batch of 4."""
    local = ["--inbatch_negatives", "False", "--distill_weight", "0"]
    whole, _ = run(workdir, "single_local", 1, *local)
    accumulated, _ = run(workdir, "single_accum", 1, *local,
                         "--gradient_accumulation_steps", "2", global_batch=2)
    assert_same_step(accumulated, whole)


def test_zero3_trains_saves_consolidated_weights_and_evaluates(workdir):
    """ZeRO-3 over 2 processes: the saved model holds the full (consolidated) weights, equal to the
    single-process step, loads in sentence-transformers, and the in-training evaluation (all ranks take
    part, since every ZeRO-3 forward gathers shards) finishes and is recorded."""
    from sentence_transformers import SentenceTransformer

    single, single_dir = run(workdir, "single_xdev", 1, "--negative_cross_device")
    zero3, out = run(workdir, "zero3_xdev", 2, "--negative_cross_device", "--deepspeed",
                     str(deepspeed_config(workdir, 3)), "--eval_data", str(workdir["data"]), "--eval_on_groups",
                     "--per_device_eval_batch_size", "4")
    assert_same_step(zero3, single)
    metrics = json.loads((out / "metrics.json").read_text())
    assert "eval_mrr@1" in metrics["final"], metrics["final"]
    texts = ["what is a dense retriever?", "BM25 is a sparse ranking function"]
    emb = SentenceTransformer(str(out), device="cpu").encode(texts)
    reference = SentenceTransformer(str(single_dir), device="cpu").encode(texts)
    assert abs(emb - reference).max() < 1e-4
