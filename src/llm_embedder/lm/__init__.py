"""LM scoring: an LLM's likelihood of the answer given each key becomes ``teacher_scores`` (docs/lm-scoring.md).

``loading`` (load_lm: alias or local folder, GGUF cached as safetensors), ``templates`` (per-task prompt
registry), ``pairs`` (records -> tokenised (prompt, answer) pairs, all input checks), ``scorer`` (batched
mean log-probability), ``checkpoint`` (resumable partial scores), ``distributed`` (torchrun sharding),
``run`` (the ``run_lm_score.py`` CLI), ``api`` (``score_records``: records in, records with ``teacher_scores`` out).
"""
from __future__ import annotations


def score_records(*args, **kwargs):
    """See :func:`llm_embedder.lm.api.score_records` (imported lazily: torch loads only when used)."""
    from .api import score_records as impl

    return impl(*args, **kwargs)


def load_lm(*args, **kwargs):
    """See :func:`llm_embedder.lm.loading.load_lm`."""
    from .loading import load_lm as impl

    return impl(*args, **kwargs)
