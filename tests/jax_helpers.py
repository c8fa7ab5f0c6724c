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
    """The JAX loss terms of ``LossParams(cos_temperature=0.05, **loss)``."""
    from llm_embedder.jax.losses import task_terms
    from llm_embedder.modeling.losses import LossParams

    return task_terms(LossParams(**{"cos_temperature": 0.05, **loss}))


def max_abs_diff(a, b) -> tuple[float, float]:
    """(largest |a - b| over a gradient tree, largest |a|)."""
    import jax
    import numpy as np

    diffs = jax.tree_util.tree_map(lambda x, y: float(np.abs(np.asarray(x) - np.asarray(y)).max()), a, b)
    return max(jax.tree_util.tree_leaves(diffs)), max(float(np.abs(np.asarray(x)).max()) for x in jax.tree_util.tree_leaves(a))


def enable_compilation_cache() -> None:
    """Reuse compiled XLA programs across runs and tests (repeated builds of the same step compile once)."""
    import jax

    jax.config.update("jax_compilation_cache_dir", str(REPO / ".cache" / "jax-test-compilation"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def train_args(model_dir, output_dir, *extra: str) -> list[str]:
    """Command-line arguments of a small run on the toy qa (teacher-scored) and tool (unscored) files."""
    return ["--model_name_or_path", str(model_dir), "--train_data", str(TOY_QA), str(TOY_QA.parent / "tool.json"),
            "--train_group_size", "3", "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "2",
            "--query_max_length", str(LENGTHS["query"]), "--key_max_length", str(LENGTHS["key"]),
            "--learning_rate", "1e-3", "--warmup_steps", "1", "--logging_steps", "1", "--seed", "5",
            "--output_dir", str(output_dir), *extra]
