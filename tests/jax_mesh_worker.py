"""Run with XLA_FLAGS=--xla_force_host_platform_device_count=2: mesh-of-2 vs one-device loss and gradients.

Prints one JSON line: for cross-device negatives (global-batch loss, dropout on) and per-device negatives
(dropout off, against the mean of the two halves computed on one device), the loss on each setup and the
largest gradient difference.
"""
from __future__ import annotations

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
from jax_helpers import enable_compilation_cache, loaded_and_batch, loss_options, max_abs_diff  # noqa: E402

from llm_embedder.jax.step import Embedder, StepOptions, TrainStep, make_mesh  # noqa: E402


def main(model_dir: str) -> None:
    assert len(jax.devices()) == 2, jax.devices()
    enable_compilation_cache()
    loaded, batch = loaded_and_batch(model_dir, batch_size=4, group_size=3)
    embed = Embedder(loaded.model)
    one, two = TrainStep(embed, None, make_mesh(1)), TrainStep(embed, None, make_mesh(2))
    key = jax.random.key(7)
    lp = loss_options(stable_distill=True)
    out = {}

    cross = StepOptions(3, True, lp)
    g1, m1 = one.grads_fn(cross)(one.replicate(embed.params), one.shard_batch(batch.arrays()), key)
    g2, m2 = two.grads_fn(cross)(two.replicate(embed.params), two.shard_batch(batch.arrays()), key)
    sharded = two.shard_batch(batch.arrays())["key_ids"].sharding
    out["cross"] = {"loss_one": float(m1["loss"]), "loss_mesh": float(m2["loss"]), "grad_diff": max_abs_diff(g1, g2),
                    "batch_devices": len(sharded.device_set)}

    per = StepOptions(3, True, lp, per_device_groups=2, dropout=False)
    g2p, m2p = two.grads_fn(per)(two.replicate(embed.params), two.shard_batch(batch.arrays()), key)
    single = StepOptions(3, True, lp, dropout=False)
    halves = []
    for h in range(2):
        arrays = {name: value[h * len(value) // 2:(h + 1) * len(value) // 2] for name, value in batch.arrays().items()}
        halves.append(one.grads_fn(single)(embed.params, one.shard_batch(arrays), key))
    mean_grads = jax.tree_util.tree_map(lambda a, b: (a + b) / 2, halves[0][0], halves[1][0])
    out["per_device"] = {"loss_halves": float(jnp.mean(jnp.stack([h[1]["loss"] for h in halves]))),
                         "loss_mesh": float(m2p["loss"]), "grad_diff": max_abs_diff(mean_grads, g2p),
                         "differs_from_cross": float(np.abs(float(m2p["loss"]) - float(one.grads_fn(single)(
                             embed.params, one.shard_batch(batch.arrays()), key)[1]["loss"])))}
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1])
