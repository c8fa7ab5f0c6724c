"""Shared builders for the JAX tests (and the 2-device subprocess worker): a loaded tiny BERT and toy batches."""
from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TOY_QA = REPO / "data" / "llm_embedder_toy" / "qa.json"
LENGTHS = {"query": 32, "key": 64}


def loaded_and_batch(model_dir, batch_size: int = 4, group_size: int = 3, seed: int = 0):
    """``(LoadedEncoder, Batch)``: the toy qa file (teacher-scored) through the project's pipeline."""
    from llm_embedder.data.collator import EmbedderCollator
    from llm_embedder.data.dataset import TrainDataArgs, TrainDataset
    from llm_embedder.jax.data import BatchStream, BucketTokenizer
    from llm_embedder.jax.weights import load_encoder

    loaded = load_encoder(model_dir, query_max_length=LENGTHS["query"], key_max_length=LENGTHS["key"])
    dataset = TrainDataset([TOY_QA], args=TrainDataArgs(train_group_size=group_size), seed=seed)
    collator = EmbedderCollator(BucketTokenizer(loaded.tokenizer, LENGTHS), tasks=dataset.tasks)
    return loaded, next(iter(BatchStream(dataset, collator, batch_size, seed=seed).epoch(0)))


def loss_options(**loss):
    from llm_embedder.modeling.losses import LossParams

    return tuple(sorted(vars(LossParams(**{"cos_temperature": 0.05, **loss})).items()))


def max_abs_diff(a, b) -> tuple[float, float]:
    """(largest |a - b| over a gradient tree, largest |a|)."""
    import jax
    import numpy as np

    diffs = jax.tree_util.tree_map(lambda x, y: float(np.abs(np.asarray(x) - np.asarray(y)).max()), a, b)
    return max(jax.tree_util.tree_leaves(diffs)), max(float(np.abs(np.asarray(x)).max()) for x in jax.tree_util.tree_leaves(a))
