"""TaskBatchSampler: every global batch (all ranks of one step together) comes from one training file.

Multi-task training needs task-homogeneous batches (one recipe, one instruction pair, in-batch negatives of
the same kind). The sampler plans an epoch as a list of *global* batches of ``world_size ×
per_device_batch_size`` indices of one file; each rank yields its own slice of every global batch. The plan
is a pure function of ``(seed, epoch)``, so all ranks compute the same one without communicating, dataloader
workers need nothing from it (it runs in the main process; the dataset is stateless), and a resumed run
replays the same plan and skips the batches it already consumed.

Modes:

- ``epoch``: each file is shuffled and cut into global batches; the batches of all files are shuffled
  together, so files appear in proportion to their number of batches and every example is seen once per
  epoch. A file's tail smaller than a global batch is dropped for this epoch with ``drop_last`` (a fresh
  shuffle next epoch drops other examples; counted in :attr:`dropped`), or padded to a full batch with
  examples from the start of the same file's shuffle without it.
- ``random``: each step draws a file with probability ∝ its size (or ∝ ``dataset_weights``) and takes the
  next global batch of that file's current shuffle (no example repeats before the file's shuffle is used
  up; the tail rule is the same as above). An epoch has as many steps as ``epoch`` mode.

Items are ``(epoch, index)`` pairs, index global over the concatenated files, as
:class:`~llm_embedder.data.dataset.TrainDataset` expects.
"""
from __future__ import annotations

import math
from typing import Iterator, Sequence

import numpy as np
import torch

from ..errors import UserError

MODES = ("epoch", "random")


class TaskBatchSampler(torch.utils.data.Sampler):
    """Task-homogeneous, rank-sliced, seeded, resumable batch sampler (see the module docstring)."""

    def __init__(self, dataset_sizes: Sequence[int], per_device_batch_size: int, world_size: int = 1, rank: int = 0,
                 mode: str = "epoch", dataset_weights: Sequence[float] | None = None, seed: int = 42,
                 drop_last: bool = True):
        self.dataset_sizes = [int(n) for n in dataset_sizes]
        if not self.dataset_sizes or any(n < 0 for n in self.dataset_sizes) or sum(self.dataset_sizes) == 0:
            raise UserError(f"--train_data: no training examples (file sizes {self.dataset_sizes})")
        if per_device_batch_size < 1:
            raise UserError(f"--per_device_train_batch_size: must be >= 1, got {per_device_batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in a world of size {world_size}")
        if mode not in MODES:
            raise UserError(f"--inbatch_same_dataset: unknown mode '{mode}' (choose {' or '.join(MODES)})")
        self.per_device_batch_size = int(per_device_batch_size)
        self.world_size = int(world_size)
        self.rank = int(rank)
        self.mode = mode
        self.seed = int(seed)
        self.drop_last = bool(drop_last)
        self.global_batch_size = self.per_device_batch_size * self.world_size
        self.offsets = np.cumsum([0] + self.dataset_sizes).tolist()
        self.weights = self._check_weights(dataset_weights)
        too_small = [f for f, n in enumerate(self.dataset_sizes) if n < self.global_batch_size]
        if too_small and self.drop_last:
            f = too_small[0]
            raise UserError(f"--train_data: file #{f} has {self.dataset_sizes[f]} examples, fewer than one global batch "
                            f"(per_device_train_batch_size {self.per_device_batch_size} × {self.world_size} processes "
                            f"= {self.global_batch_size}): it would never be trained on; lower --per_device_train_batch_size "
                            "or use fewer processes (run_dense.py drops each file's last partial batch)")
        self.epoch = 0
        self._skip = 0  # batches of ``self.epoch`` already consumed before a resume
        self._yielded = 0  # batches yielded so far in the current epoch (including the skipped ones)

    def _check_weights(self, weights: Sequence[float] | None) -> np.ndarray:
        if weights is None:
            return np.asarray(self.dataset_sizes, dtype=np.float64) / sum(self.dataset_sizes)
        if self.mode != "random":
            raise UserError("--dataset_weights: only used with --inbatch_same_dataset random "
                            "(epoch mode visits every example once)")
        w = np.asarray(list(weights), dtype=np.float64)
        if w.shape != (len(self.dataset_sizes),):
            raise UserError(f"--dataset_weights: {w.size} weights for {len(self.dataset_sizes)} train files")
        if not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
            raise UserError(f"--dataset_weights: must be finite, >= 0 and not all 0, got {list(weights)}")
        if np.any((w > 0) & (np.asarray(self.dataset_sizes) == 0)):
            raise UserError("--dataset_weights: a file with no examples has a weight > 0")
        return w / w.sum()

    # ------------------------------------------------------------------ the plan
    def _batches_per_file(self) -> list[int]:
        if self.drop_last:
            return [n // self.global_batch_size for n in self.dataset_sizes]
        return [math.ceil(n / self.global_batch_size) for n in self.dataset_sizes]

    def __len__(self) -> int:
        """Batches per epoch (each rank yields this many)."""
        return sum(self._batches_per_file())

    @property
    def dropped(self) -> list[int]:
        """Per file, how many examples an epoch leaves out (the tail smaller than a global batch)."""
        if not self.drop_last:
            return [0] * len(self.dataset_sizes)
        return [n % self.global_batch_size for n in self.dataset_sizes]

    def _permutation(self, epoch: int, f: int, stream: int, cycle: int = 0) -> np.ndarray:
        rng = np.random.default_rng([self.seed, epoch, stream, f, cycle])
        return rng.permutation(self.dataset_sizes[f]) + self.offsets[f]

    def _pad(self, tail: np.ndarray, perm: np.ndarray) -> np.ndarray:
        """A full global batch from a short tail, completed with the start of the file's shuffle."""
        return np.concatenate([tail, np.resize(perm, self.global_batch_size - len(tail))])

    def global_batches(self, epoch: int) -> list[tuple[int, list[int]]]:
        """The epoch's plan: ``(file, global batch of indices)`` per step, identical on every rank."""
        gb = self.global_batch_size
        plan: list[tuple[int, list[int]]] = []
        if self.mode == "epoch":
            for f, size in enumerate(self.dataset_sizes):
                if size == 0:
                    continue
                perm = self._permutation(epoch, f, stream=0)
                full, tail = divmod(size, gb)
                plan += [(f, perm[j * gb:(j + 1) * gb].tolist()) for j in range(full)]
                if tail and not self.drop_last:
                    plan.append((f, self._pad(perm[full * gb:], perm).tolist()))
            order = np.random.default_rng([self.seed, epoch, 1]).permutation(len(plan))
            return [plan[j] for j in order]

        files = np.random.default_rng([self.seed, epoch, 2]).choice(len(self.dataset_sizes), size=len(self), p=self.weights)
        perms: dict[int, np.ndarray] = {}
        cursor = [0] * len(self.dataset_sizes)
        cycle = [0] * len(self.dataset_sizes)
        for f in files.tolist():
            perm = perms.get(f)
            remaining = 0 if perm is None else len(perm) - cursor[f]
            if perm is None or remaining == 0 or (remaining < gb and self.drop_last):
                perm = perms[f] = self._permutation(epoch, f, stream=3, cycle=cycle[f])
                cycle[f] += 1
                cursor[f] = 0
                remaining = len(perm)
            if remaining >= gb:
                batch = perm[cursor[f]:cursor[f] + gb]
                cursor[f] += gb
            else:  # drop_last off: pad the tail, start a new shuffle next time
                batch = self._pad(perm[cursor[f]:], perm)
                cursor[f] = len(perm)
            plan.append((f, batch.tolist()))
        return plan

    # ------------------------------------------------------------------ iteration and resume
    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch, skip = self.epoch, self._skip
        self._skip = 0  # a second pass over the same epoch starts from its beginning
        self._yielded = skip
        lo, hi = self.rank * self.per_device_batch_size, (self.rank + 1) * self.per_device_batch_size
        for _, batch in self.global_batches(epoch)[skip:]:
            self._yielded += 1
            yield [(epoch, i) for i in batch[lo:hi]]

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's plan (call before iterating, as with DistributedSampler)."""
        if int(epoch) != self.epoch:
            self._skip = 0
            self._yielded = 0
        self.epoch = int(epoch)

    def state_dict(self, batches_consumed: int | None = None) -> dict:
        """``{"epoch", "batches_consumed", ...}`` to resume from.

        ``batches_consumed`` defaults to the batches this sampler has yielded in the current epoch; a
        DataLoader that prefetches (``num_workers > 0``) has pulled more than the training loop used, so
        pass the number the loop actually consumed (e.g. steps × gradient_accumulation_steps).
        """
        consumed = self._yielded if batches_consumed is None else int(batches_consumed)
        return {"epoch": self.epoch, "batches_consumed": consumed, "seed": self.seed, "mode": self.mode,
                "dataset_sizes": list(self.dataset_sizes), "global_batch_size": self.global_batch_size,
                "drop_last": self.drop_last,
                "dataset_weights": None if self.mode != "random" else self.weights.tolist()}

    def load_state_dict(self, state: dict) -> None:
        """Resume: the next iteration yields the rest of ``state["epoch"]``'s plan."""
        for name in ("seed", "mode", "dataset_sizes", "global_batch_size", "drop_last"):
            mine = self.state_dict()[name]
            if name in state and state[name] != mine:
                raise UserError(f"cannot resume the batch sampler: {name} was {state[name]!r}, now {mine!r} "
                                "(the remaining batches would differ)")
        if state.get("dataset_weights") is not None and not np.allclose(state["dataset_weights"], self.weights):
            raise UserError("cannot resume the batch sampler: --dataset_weights changed")
        consumed = int(state["batches_consumed"])
        if not 0 <= consumed <= len(self):
            raise UserError(f"cannot resume the batch sampler: {consumed} batches consumed of an epoch of {len(self)}")
        self.epoch = int(state["epoch"])
        self._skip = consumed
        self._yielded = consumed
