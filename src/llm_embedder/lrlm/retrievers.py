"""Rank each lrlm record's candidate keys: none, random, bm25, dense (any saved encoder or alias), oracle,
privileged (the chunk holding the definition a defref target uses).

Every ranker returns, per record, key indices best first. ``oracle`` ranks by the LM's own score of each
key alone (mean target log-probability over the tokens it is given), so it needs those scores.
"""
from __future__ import annotations

import random
from typing import Callable, Sequence

import numpy as np

from ..errors import UserError
from .lexical import bm25_rank

METHODS = ("none", "random", "bm25", "dense", "oracle", "privileged", "fitted")  # fitted: .fitted, in eval_cli


def rank_random(records: Sequence[dict], seed: int = 0) -> list[list[int]]:
    out = []
    for r in records:
        order = list(range(len(r["neg"])))
        random.Random(f"{seed}:{r['query_id']}").shuffle(order)
        out.append(order)
    return out


def rank_bm25(records: Sequence[dict]) -> list[list[int]]:
    return [bm25_rank(r["query"], r["neg"]) for r in records]


def rank_by_scores(scores: Sequence[Sequence[float]]) -> list[list[int]]:
    """Indices by descending score; ties keep the lower index first."""
    return [sorted(range(len(s)), key=lambda i: (-s[i], i)) for s in scores]


def rank_dense(records: Sequence[dict], encoder, batch_size: int = 32) -> list[list[int]]:
    """Cosine (inner product of the encoder's embeddings) between the query chunk and each key."""
    queries = encoder.encode([r["query"] for r in records], side="query", instruction=_instruction(encoder, "query"),
                             batch_size=batch_size, show_progress=False)
    flat = [k for r in records for k in r["neg"]]
    keys = encoder.encode(flat, side="key", instruction=_instruction(encoder, "key"), batch_size=batch_size, show_progress=False)
    out, at = [], 0
    for q, r in zip(queries, records):
        n = len(r["neg"])
        s = keys[at:at + n] @ q
        at += n
        out.append(rank_by_scores([s.tolist()])[0])
    return out


def _instruction(encoder, side: str) -> str:
    """The lrlm instruction when the encoder was trained with instructions, else none."""
    instructions = getattr(encoder, "instructions", None) or {}
    pair = instructions.get("lrlm") if isinstance(instructions, dict) else None
    if not pair:
        return ""
    return pair[0] if side == "query" else pair[1]


def rank_privileged(records: Sequence[dict]) -> list[list[int]]:
    out = []
    for i, r in enumerate(records):
        p = r.get("privileged_key")
        if p is None:
            raise UserError(f"record {i} ({r.get('query_id')}): no privileged_key (build with --targets defref)")
        out.append([p] + [j for j in range(len(r["neg"])) if j != p])
    return out


def load_encoder(name: str) -> Callable:
    """Resolve (one line if it cannot be) now; load later. Returns a loader."""
    from ..resources import resolve_encoder

    path = resolve_encoder(name, "--model_name_or_path")

    def load():
        from ..modeling.encoder import DenseEncoder

        return DenseEncoder.from_pretrained(path)
    return load


def mean_logprob_scores(token_logprobs: Sequence[Sequence[Sequence[float]]], part: slice = slice(None)) -> list[list[float]]:
    """Per record, per key: mean of the key's target log-probs over ``part`` of the target tokens."""
    return [[float(np.mean(lp[part])) for lp in keys] for keys in token_logprobs]
