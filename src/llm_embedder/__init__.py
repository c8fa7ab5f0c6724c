"""llm-embedder: one dense embedder for every retrieval need of an LLM.

The public Python API is imported lazily (so ``llm-embedder validate`` starts without loading torch)::

    from llm_embedder import DenseEncoder, TrainDataset, EmbedderCollator, EmbedderTrainer
    from llm_embedder import ModelArguments, DataArguments, RetrievalTrainingArguments
"""
__version__ = "0.1.0"

_LAZY = {
    "DenseEncoder": "llm_embedder.modeling.encoder",
    "TrainDataset": "llm_embedder.data.dataset",
    "TaskBatchSampler": "llm_embedder.data.sampler",
    "EmbedderCollator": "llm_embedder.data.collator",
    "EmbedderTrainer": "llm_embedder.training.trainer",
    "EmbedderModel": "llm_embedder.training.model",
    "RetrievalEvaluator": "llm_embedder.training.evaluation",
    "ModelArguments": "llm_embedder.training.arguments",
    "DataArguments": "llm_embedder.training.arguments",
    "RetrievalTrainingArguments": "llm_embedder.training.arguments",
    "LossParams": "llm_embedder.modeling.losses",
    "compute_loss": "llm_embedder.modeling.losses",
    "load_corpus": "llm_embedder.corpus",
    "read_records": "llm_embedder.schema",
    "write_records": "llm_embedder.schema",
    "UserError": "llm_embedder.errors",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'llm_embedder' has no attribute {name!r}")
