"""Orbax checkpoints of a JAX run: parameters, optimizer state, dropout RNG, step and sampler position.

One ``CheckpointManager`` item ``state`` holds the arrays (``{"params", "opt_state", "rng"}``, restored
onto the shardings of a freshly built state) and one JSON item ``meta`` holds the step and the
:class:`~llm_embedder.data.sampler.TaskBatchSampler` position, so a resumed run replays exactly the
batches, dropout masks and updates an uninterrupted one would have made. Orbax writes each step into a
temporary folder and renames it when complete, so a run killed mid-save leaves the previous checkpoint.
"""
from __future__ import annotations

from pathlib import Path

import jax
import orbax.checkpoint as ocp

from ..errors import UserError


class Checkpoints:
    """Save / find / restore the checkpoints under one directory (``<output_dir>/checkpoints``)."""

    def __init__(self, directory: str | Path, max_to_keep: int | None = None):
        self.directory = Path(directory).absolute()
        self.manager = ocp.CheckpointManager(self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep),
                                             item_names=("state", "meta"))

    def save(self, step: int, state: dict, meta: dict) -> None:
        self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def restore(self, like: dict, step: int | None = None) -> tuple[dict, dict]:
        """``(state, meta)`` of ``step`` (default: the latest), arrays placed like ``like``'s."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise UserError(f"--resume_from_checkpoint: no checkpoint in {self.directory}")
        abstract = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), like)
        restored = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                                      meta=ocp.args.JsonRestore()))
        return restored["state"], restored["meta"]

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
