"""The distributed helper and GradCache under ``torchrun --nproc_per_node 2`` (gloo): one launch of
``grad_cache_ddp_worker.py``, whose docstring lists what each rank records."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torchrun_launch import load_worker, run_worker_ranks

WORKER = Path(__file__).with_name("grad_cache_ddp_worker.py")
WORLD = 2
worker = load_worker(WORKER)

pytestmark = [pytest.mark.slow, pytest.mark.distributed]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("gc_ddp")
    return run_worker_ranks(WORKER, out, WORLD, timeout=300)


def tensors(grads: dict) -> dict:
    return {name: torch.tensor(value, dtype=torch.float64) for name, value in grads.items()}


def single_process_reference() -> dict:
    """One process, the whole global batch, no GradCache, no dropout: the gradients DDP must reproduce."""
    from llm_embedder.modeling.losses import compute_loss

    model = worker.gc_tests.TinyEncoder(dropout=0.0)
    queries, keys, teacher = worker.global_batch()
    q, k = model.embed(queries, "query"), model.embed(keys, "key")
    compute_loss(q, k, teacher, worker.G, worker.PARAMS)["loss"].backward()
    return {f"encoder.{name}": p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def assert_close_all(got: dict, expected: dict, factor: float = 1.0, rtol=1e-7, atol=1e-10):
    assert got.keys() == expected.keys() and len(got) > 10
    for name in expected:
        torch.testing.assert_close(got[name], factor * expected[name], rtol=rtol, atol=atol, msg=name)


def differs(got: dict, expected: dict, factor: float = 1.0) -> bool:
    return any(not torch.allclose(got[n], factor * expected[n], rtol=1e-7, atol=1e-10) for n in expected)


def test_helper_collectives_on_gloo(ranks):
    for r, result in enumerate(ranks):
        h = result["helper"]
        assert (h["rank"], h["world"], h["local_rank"]) == (r, WORLD, r)
        assert h["group_device"] == "cpu" and h["local_device"] == "cpu"  # gloo, no GPU
        assert h["broadcast"] == {"from": 0, "text": "é"}
        assert h["gathered"] == [{"rank": 0, "pad": ""}, {"rank": 1, "pad": "xxx"}]
        assert h["sum"] == [3.0, 20.0]


def test_grad_cache_equals_plain_ddp_with_dropout_and_cross_device_negatives(ranks):
    for result in ranks:
        grads = result["grads"]
        plain, cached = tensors(grads["plain_dropout"]), tensors(grads["gc_dropout"])
        assert_close_all(cached, plain, rtol=1e-5, atol=1e-8)
        assert differs(cached, plain, factor=0.5)  # guard: a halved gradient would not pass
    # DDP-averaged: identical on both ranks
    assert_close_all(tensors(ranks[0]["grads"]["gc_dropout"]), tensors(ranks[1]["grads"]["gc_dropout"]))


def test_grad_cache_ddp_equals_one_process_holding_the_global_batch(ranks):
    reference = single_process_reference()
    for result in ranks:
        cached = tensors(result["grads"]["gc_nodrop"])
        assert_close_all(cached, reference)
        # guards: a missing (or doubled) world-size factor, or no all-reduce after the last chunk, would fail
        assert differs(cached, reference, factor=0.5) and differs(cached, reference, factor=2.0)
        assert differs(tensors(result["grads"]["unsynced"]), reference)


def test_grad_cache_accumulates_across_no_sync_micro_steps(ranks):
    reference = single_process_reference()
    for result in ranks:
        assert_close_all(tensors(result["grads"]["accumulated"]), reference, factor=2.0)


def test_lora_with_grad_cache_under_ddp_equals_plain_ddp(ranks):
    for result in ranks:
        plain, cached = tensors(result["grads"]["lora_plain"]), tensors(result["grads"]["lora_gc"])
        assert plain.keys() == cached.keys()
        assert sum("lora_A" in n for n in plain) == 4 and sum("lora_B" in n for n in plain) == 4
        assert not any("attention.self.query.base_layer" in n for n in plain)  # the base stays frozen
        for name in plain:
            torch.testing.assert_close(cached[name], plain[name], rtol=1e-5, atol=1e-8, msg=name)
        assert differs(cached, plain, factor=0.5)
