"""Public Python API for LM scoring: records in, records with ``teacher_scores`` out.

``score_records`` is what ``run_lm_score.py`` does, without files: every row is checked first (the same
messages as the CLI, ``<records>:N`` instead of ``file:line``), then the (key, answer) pairs are scored in
length-sorted batches and combined per key. ``teacher_scores_from_pairs`` is the last step on its own,
for callers that score pairs themselves (e.g. sharded over several processes).
"""
from __future__ import annotations

from typing import Sequence

from ..corpus import Corpus
from ..schema import RecordFile
from .loading import LoadedLM
from .pairs import AUTO, ScoringPlan, build_plan
from .scorer import LMScorer

ANSWER_POLICIES = ("mean", "max")


def teacher_scores_from_pairs(plan: ScoringPlan, pair_scores: Sequence[float], policy: str = "mean") -> list[list[float]]:
    """Per row, per key (in the order ``pos + neg`` or ``history``): ``policy`` over the key's per-answer scores.

    ``pair_scores[i]`` scores ``plan.pairs[i]``; ``policy`` is ``mean`` or ``max`` over a key's answers.
    """
    if policy not in ANSWER_POLICIES:
        raise ValueError(f"policy: expected one of {ANSWER_POLICIES}, got {policy!r}")
    if len(pair_scores) != len(plan.pairs):
        raise ValueError(f"{len(pair_scores)} scores for {len(plan.pairs)} pairs")
    combine = {"mean": lambda xs: sum(xs) / len(xs), "max": max}[policy]
    per_key: list[list[list[float]]] = [[[] for _ in rp.keys] for rp in plan.row_plans]
    for pair, score in zip(plan.pairs, pair_scores):
        per_key[pair.row][pair.key].append(score)
    return [[combine(answers) for answers in row] for row in per_key]


def score_records(records: Sequence[dict] | RecordFile, lm: LoadedLM, template: str = AUTO, *,
                  corpus: Corpus | None = None, answer_policy: str = "mean", max_length: int = 1024,
                  key_max_length: int = 256, token_budget: int = 8192, max_keys: int | None = None,
                  max_pos: int | None = None, progress: bool = False) -> list[dict]:
    """New records (copies, every field kept, in order) with ``teacher_scores`` aligned with their keys.

    ``lm`` comes from :func:`llm_embedder.lm.loading.load_lm`; ``template`` is ``auto`` (each row's
    ``task`` picks it) or a template name such as ``qa`` or ``query_likelihood``; ``corpus`` (from
    :func:`llm_embedder.corpus.load_corpus`) is needed when keys are given as ``pos_index``/``neg_index``.
    A score is the LM's mean log-probability per target token (larger = better). Bad input raises
    :class:`llm_embedder.errors.UserError` listing every problem, before anything is scored.
    """
    if token_budget < max_length:
        raise ValueError(f"token_budget ({token_budget}) must be at least max_length ({max_length})")
    plan = build_plan(records, lm.tokenizer, template=template, corpus=corpus, max_length=max_length,
                      key_max_length=key_max_length, max_keys=max_keys, max_pos=max_pos)
    pad_id = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    sequences = [(p.prompt_ids, p.target_ids) for p in plan.pairs]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(sequences), unit="pair", desc="LM scoring")
    try:
        pair_scores = LMScorer(lm.model, pad_id=pad_id).score(sequences, token_budget, progress=bar)
    finally:
        if bar is not None:
            bar.close()
    per_key = teacher_scores_from_pairs(plan, pair_scores, answer_policy)
    return [dict(row, teacher_scores=values) for row, values in zip(plan.rows, per_key)]
