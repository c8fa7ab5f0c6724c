"""The JAX train step: gradient caching equals the uncached gradients (dropout on); the 2-device mesh equals one
device on the global batch (subprocess with 2 host devices); AdamW schedule; bad layouts fail before compiling."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("jax")

import jax  # noqa: E402

from jax_helpers import enable_compilation_cache, loaded_and_batch, loss_options, max_abs_diff  # noqa: E402
from llm_embedder.errors import UserError  # noqa: E402
from llm_embedder.jax.step import Embedder, StepOptions, TrainStep, check_batch_layout, make_mesh, make_optimizer  # noqa: E402

HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def setup(tiny_bert_dir):
    enable_compilation_cache()
    loaded, batch = loaded_and_batch(tiny_bert_dir, batch_size=4, group_size=3)
    embed = Embedder(loaded.model)
    return embed, TrainStep(embed, None, make_mesh(1)), batch


@pytest.mark.slow
@pytest.mark.parametrize("loss", [dict(stable_distill=True), dict(distill_loss="kl", inbatch_negatives=False)])
def test_grad_cache_equals_uncached_gradients_with_dropout(setup, loss):
    embed, step, batch = setup
    arrays, key = step.shard_batch(batch.arrays()), jax.random.key(3)
    plain = StepOptions(3, True, loss_options(**loss))
    cached = StepOptions(3, True, loss_options(**loss), grad_cache=True, query_num_chunks=2, passage_num_chunks=3)
    g_plain, m_plain = step.grads_fn(plain)(embed.params, arrays, key)
    g_cached, m_cached = step.grads_fn(cached)(embed.params, arrays, key)
    diff, scale = max_abs_diff(g_plain, g_cached)
    assert diff <= 1e-5 * max(scale, 1.0), (diff, scale)
    np.testing.assert_allclose(float(m_cached["loss"]), float(m_plain["loss"]), rtol=1e-5)
    # guards: dropout is on (another key changes the gradients) and the gradients are not all zero
    g_other, _ = step.grads_fn(plain)(embed.params, arrays, jax.random.key(4))
    assert max_abs_diff(g_plain, g_other)[0] > 1e3 * diff + 1e-6
    assert scale > 1e-3


@pytest.mark.slow
@pytest.mark.distributed
def test_two_host_devices_equal_one_device_on_the_global_batch(tiny_bert_dir):
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, str(HERE / "jax_mesh_worker.py"), str(tiny_bert_dir)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    cross, per = out["cross"], out["per_device"]
    assert cross["batch_devices"] == 2  # the batch really is split over both devices
    np.testing.assert_allclose(cross["loss_mesh"], cross["loss_one"], rtol=1e-5)
    assert cross["grad_diff"][0] <= 1e-5 * max(cross["grad_diff"][1], 1.0)
    np.testing.assert_allclose(per["loss_mesh"], per["loss_halves"], rtol=1e-5)
    assert per["grad_diff"][0] <= 1e-5 * max(per["grad_diff"][1], 1.0)
    assert per["differs_from_cross"] > 1e-3  # guard: per-device negatives are a different loss


def test_mesh_that_does_not_divide_the_batch_fails_before_compiling():
    mesh = make_mesh(1)
    check_batch_layout(4, 3, mesh, StepOptions(3, False, ()))

    class TwoDevices:
        size = 2

    with pytest.raises(UserError, match="--mesh_shape: the global batch of 5 queries does not divide over 2 devices"):
        check_batch_layout(5, 3, TwoDevices(), StepOptions(3, False, ()))
    with pytest.raises(UserError, match="--passage_num_chunks"):
        check_batch_layout(4, 3, mesh, StepOptions(3, False, (), grad_cache=True, passage_num_chunks=5))
    with pytest.raises(UserError, match="--mesh_shape: 4 devices requested"):
        make_mesh(4, devices=jax.devices()[:1])


def test_learning_rate_warms_up_then_decays_linearly_to_zero():
    import jax.numpy as jnp
    import optax
    from flax import nnx

    class Tiny(nnx.Module):
        def __init__(self):
            self.dense = nnx.Linear(2, 2, rngs=nnx.Rngs(0))

    _, params = nnx.split(Tiny(), nnx.Param)
    tx = make_optimizer(params, 1.0, total_steps=10, warmup_steps=2)
    params = jax.tree_util.tree_map(jnp.zeros_like, params)
    grads = jax.tree_util.tree_map(jnp.ones_like, params)  # Adam's first update = -lr * sign
    state, seen = tx.init(params), []
    for _ in range(10):
        updates, state = tx.update(grads, state, params)
        seen.append(-float(jax.tree_util.tree_leaves(updates)[0].ravel()[0]))
    np.testing.assert_allclose(seen, [0.0, 0.5, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125], atol=1e-3)
    assert isinstance(tx, optax.GradientTransformation)


@pytest.mark.slow
def test_gradient_checkpointing_gives_the_same_gradients(tiny_bert_dir, setup):
    embed, step, batch = setup
    loaded, _ = loaded_and_batch(tiny_bert_dir, batch_size=4, group_size=3)
    loaded.model.set_gradient_checkpointing(True)
    remat = Embedder(loaded.model)
    assert remat.graphdef != embed.graphdef  # guard: the remat program is a different one
    options = StepOptions(3, True, loss_options(stable_distill=True))
    arrays, key = step.shard_batch(batch.arrays()), jax.random.key(3)
    g_plain, _ = step.grads_fn(options)(embed.params, arrays, key)
    g_remat, _ = TrainStep(remat, None, make_mesh(1)).grads_fn(options)(remat.params, arrays, key)
    diff, scale = max_abs_diff(g_plain, g_remat)
    assert diff <= 1e-5 * max(scale, 1.0)
