"""LM scoring: an LLM's likelihood of the answer given each key becomes ``teacher_scores`` (docs/lm-scoring.md).

``loading`` (load_lm: alias or local folder, GGUF cached as safetensors), ``templates`` (per-task prompt
registry), ``pairs`` (records -> tokenised (prompt, answer) pairs, all input checks), ``scorer`` (batched
mean log-probability), ``checkpoint`` (resumable partial scores), ``distributed`` (torchrun sharding),
``run`` (the ``run_lm_score.py`` CLI).
"""
