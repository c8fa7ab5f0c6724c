"""Numpy batches of a few fixed shapes from the project's own data pipeline (no second one).

Records are read, validated and selected by :class:`~llm_embedder.data.dataset.TrainDataset`, batches
are drawn by :class:`~llm_embedder.data.sampler.TaskBatchSampler` (task-homogeneous, seeded, resumable)
and assembled by :class:`~llm_embedder.data.collator.EmbedderCollator` (instructions, group size,
teacher scores). The only JAX-specific step is tokenisation through :class:`BucketTokenizer`, which pads
every side to the smallest *length bucket* that fits the batch, so XLA compiles one program per
(task, bucket pair), not one per batch. A batch without teacher scores carries zeros and
``has_teacher=False`` (a static flag of the compiled step).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np


def length_buckets(max_length: int, smallest: int = 16) -> list[int]:
    """Powers of two from ``smallest`` below ``max_length``, then ``max_length`` itself."""
    buckets, size = [], smallest
    while size < max_length:
        buckets.append(size)
        size *= 2
    return buckets + [max_length]


class BucketTokenizer:
    """``tokenize(texts, side, instruction)`` as DenseEncoder does, padded to a length bucket, as numpy."""

    def __init__(self, tokenizer, max_lengths: dict[str, int]):
        self.tokenizer = tokenizer
        self.max_lengths = dict(max_lengths)
        self.buckets = {side: length_buckets(n) for side, n in self.max_lengths.items()}

    def bucket(self, side: str, longest: int) -> int:
        return next(b for b in self.buckets[side] if b >= longest)

    def tokenize(self, texts, side: str = "query", instruction: str = "") -> dict[str, np.ndarray]:
        encoded = self.tokenizer([instruction + t for t in texts], truncation=True, max_length=self.max_lengths[side],
                                 padding="longest", return_tensors="np")
        ids, mask = encoded["input_ids"], encoded["attention_mask"]
        extra = self.bucket(side, ids.shape[1]) - ids.shape[1]
        if self.tokenizer.padding_side != "right":
            raise ValueError("BucketTokenizer pads on the right (BERT tokenizers do)")
        return {"input_ids": np.pad(ids, ((0, 0), (0, extra)), constant_values=self.tokenizer.pad_token_id).astype(np.int32),
                "attention_mask": np.pad(mask, ((0, 0), (0, extra))).astype(np.int32)}


@dataclass
class Batch:
    """One global batch: ``query_*`` ``[B, Lq]``, ``key_*`` ``[B*G, Lk]``, ``teacher`` ``[B, G]``."""

    query_ids: np.ndarray
    query_mask: np.ndarray
    key_ids: np.ndarray
    key_mask: np.ndarray
    teacher: np.ndarray
    has_teacher: bool
    task: str
    group_size: int

    def arrays(self) -> dict[str, np.ndarray]:
        return {"query_ids": self.query_ids, "query_mask": self.query_mask, "key_ids": self.key_ids,
                "key_mask": self.key_mask, "teacher": self.teacher}


def to_batch(collated: dict) -> Batch:
    """EmbedderCollator output -> :class:`Batch`."""
    q, k = collated["query_inputs"], collated["key_inputs"]
    batch, group = q["input_ids"].shape[0], collated["group_size"]
    teacher = collated["teacher_scores"]
    scores = np.zeros((batch, group), np.float32) if teacher is None else teacher.numpy().astype(np.float32)
    return Batch(q["input_ids"], q["attention_mask"], k["input_ids"], k["attention_mask"], scores,
                 teacher is not None, collated["task"], group)


class BatchStream:
    """Global batches of the training set in the sampler's order, resumable from :meth:`state_dict`."""

    def __init__(self, dataset, collator, batch_size: int, seed: int, mode: str = "epoch", dataset_weights=None):
        from ..data.sampler import TaskBatchSampler

        self.dataset = dataset
        self.collator = collator
        self.sampler = TaskBatchSampler(dataset.file_sizes, per_device_batch_size=batch_size, world_size=1, rank=0,
                                        mode=mode, dataset_weights=dataset_weights, seed=seed, drop_last=True)

    def __len__(self) -> int:
        return len(self.sampler)

    def epoch(self, epoch: int) -> Iterator[Batch]:
        """The rest of ``epoch``'s batches (all of them unless a resumed state skips some)."""
        self.sampler.set_epoch(epoch)
        for items in self.sampler:
            yield to_batch(self.collator([self.dataset[item] for item in items]))

    def state_dict(self, batches_consumed: int) -> dict:
        return self.sampler.state_dict(batches_consumed)

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state)
