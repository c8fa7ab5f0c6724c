"""Cross-device losses for real: 2 gloo processes under torchrun vs one process holding the global batch.

For every case of ``cross_device_loss_worker.CASES`` (infonce and stable distillation with
``negative_cross_device``, combinations, uneven rank sizes) it checks that each rank's reported loss
terms equal the single-process values, that its local q/k gradients are world_size x the single-process
gradients of those rows (the loss is scaled by the world size for DDP), and that the DDP-averaged
gradient of the shared layer equals the single-process gradient.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torchrun_launch import load_worker, run_worker_ranks

from llm_embedder.modeling.losses import LossParams, compute_loss

WORKER = Path(__file__).with_name("cross_device_loss_worker.py")
WORLD_SIZE = 2
worker = load_worker(WORKER)

pytestmark = [pytest.mark.slow, pytest.mark.distributed]


@pytest.fixture(scope="module")
def rank_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("cross_device")
    results = run_worker_ranks(WORKER, out, WORLD_SIZE, timeout=240)
    assert all(r["world_size"] == WORLD_SIZE for r in results)
    return results


def single_process(options: dict, num_queries: int) -> dict:
    """The same case in this (non-distributed) process with the whole global batch."""
    x_q, x_k, teacher = worker.global_batch(num_queries)
    layer = worker.build_layer()
    q, k = worker.embed(layer, x_q, x_k)
    out = compute_loss(q, k, teacher, worker.GROUP, LossParams(negative_cross_device=True, **options))
    out["loss"].backward()
    return {**{name: float(out[name].detach()) for name in ("loss", "unscaled_loss", "contrastive", "distill")},
            "q_grad": q.grad, "k_grad": k.grad, "weight_grad": layer.weight.grad, "bias_grad": layer.bias.grad}


def close(a, b):
    return torch.allclose(torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64),
                          rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("case", list(worker.CASES))
def test_cross_device_equals_single_process(rank_results, case):
    options, sizes = worker.CASES[case]
    expected = single_process(options, sum(sizes))
    local_terms_only_global = case != "infonce_plus_kl"  # the KL term is a per-rank (local-batch) value
    start = 0
    for rank, size in enumerate(sizes):
        got = rank_results[rank]["cases"][case]
        assert got["contrastive"] == pytest.approx(expected["contrastive"], rel=1e-10)
        if local_terms_only_global:
            assert got["distill"] == pytest.approx(expected["distill"], rel=1e-10)
            assert got["unscaled_loss"] == pytest.approx(expected["unscaled_loss"], rel=1e-10)
            assert got["loss"] == pytest.approx(WORLD_SIZE * expected["loss"], rel=1e-10)
        rows = slice(start, start + size)
        key_rows = slice(start * worker.GROUP, (start + size) * worker.GROUP)
        assert close(got["q_grad"], WORLD_SIZE * expected["q_grad"][rows]), (case, rank, "q")
        assert close(got["k_grad"], WORLD_SIZE * expected["k_grad"][key_rows]), (case, rank, "k")
        assert close(got["weight_grad"], expected["weight_grad"]), (case, rank, "weight")
        assert close(got["bias_grad"], expected["bias_grad"]), (case, rank, "bias")
        start += size


def test_without_the_world_size_scale_ddp_would_halve_the_gradient(rank_results):
    """Why compute_loss scales gathered terms: backpropagated as is, the gathered InfoNCE's gradient reaches
    only each rank's own embeddings, and DDP's average then gives 1/world_size of the true gradient."""
    options, sizes = worker.CASES["infonce"]
    expected = single_process(options, sum(sizes))
    for result in rank_results:
        assert close(result["unscaled_infonce_weight_grad"], expected["weight_grad"] / WORLD_SIZE)
