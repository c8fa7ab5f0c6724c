"""Hybrid retrieval: a dense and a BM25 retriever, their rankings fused (``--retrieval_method hybrid``).

Many RAG systems put lexical and dense retrieval together because they fail on different queries (on SciFact,
BM25 is the stronger single retriever and an untuned MiniLM the weaker). :class:`HybridRetriever` implements
the :class:`~.retriever.Retriever` interface, so evaluation, TREC run files and hard-negative mining take it
unchanged. Both retrievers search ``depth`` keys per query; the fusion is pyserini's (``pyserini.fusion``):

- ``rrf`` (default): reciprocal rank fusion, score = sum over the two runs of 1 / (k + rank), ``k`` = 60
  (Cormack et al., 2009). No score scale to tune, which is why it is the default.
- ``interpolation``: each run's scores min-max normalised per query (pyserini's ``RescoreMethod.NORMALIZE``),
  then ``alpha`` x dense + (1 - alpha) x BM25; a key missing from one run gets 0 from it.

The fused score is what ``search`` returns; rows are the corpus rows of the fused top ``hits``.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ..corpus import Corpus
from ..errors import UserError

FUSIONS = ("rrf", "interpolation")


def check_fusion(fusion: str, rrf_k: float, alpha: float, depth: int | None) -> None:
    """One line per bad fusion argument, before any retriever is built."""
    if fusion not in FUSIONS:
        raise UserError(f"--fusion: expected one of {', '.join(FUSIONS)}, got {fusion!r}")
    if rrf_k <= 0:
        raise UserError(f"--fusion_rrf_k: must be > 0, got {rrf_k}")
    if not 0.0 <= alpha <= 1.0:
        raise UserError(f"--fusion_alpha: the dense weight must be between 0 and 1, got {alpha}")
    if depth is not None and depth < 1:
        raise UserError(f"--fusion_depth: must be at least 1, got {depth}")


def _trec_run(scores: np.ndarray, rows: np.ndarray, tag: str):
    """pyserini's TrecRun of a ``(scores, rows)`` search result; topics are query positions, docids corpus rows."""
    from pyserini.trectools import TrecRun

    table = [(q, "Q0", int(r), rank, float(s), tag)
             for q, (s_row, r_row) in enumerate(zip(scores, rows))
             for rank, (s, r) in enumerate(((s, r) for s, r in zip(s_row, r_row) if r >= 0), start=1)]
    return TrecRun.from_list(table) if table else None


def fuse(dense: tuple[np.ndarray, np.ndarray], bm25: tuple[np.ndarray, np.ndarray], hits: int, fusion: str = "rrf",
         rrf_k: float = 60, alpha: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Fused ``(scores [Q, hits], rows [Q, hits])`` of two search results (rows -1 / scores -inf past the end)."""
    from pyserini.fusion import interpolation, reciprocal_rank_fusion
    from pyserini.trectools import RescoreMethod

    n_queries = len(dense[0])
    out_scores = np.full((n_queries, hits), -np.inf, dtype=np.float32)
    out_rows = np.full((n_queries, hits), -1, dtype=np.int64)
    sides = [(run, weight) for run, weight in ((_trec_run(*dense, "dense"), alpha), (_trec_run(*bm25, "bm25"), 1 - alpha))
             if run is not None]
    if not sides:
        return out_scores, out_rows
    if fusion == "rrf":
        fused = reciprocal_rank_fusion([run for run, _ in sides], rrf_k=rrf_k, k=hits)
    elif len(sides) == 2:
        fused = interpolation([run.rescore(RescoreMethod.NORMALIZE) for run, _ in sides], alpha=alpha, k=hits)
    else:  # one retriever found nothing for any query: the other's normalised scores, with its weight
        run, weight = sides[0]
        fused = run.rescore(RescoreMethod.NORMALIZE).rescore(RescoreMethod.SCALE, scale=weight)
    for topic, group in fused.run_data.groupby("topic", sort=False):
        group = group.sort_values(["score", "docid"], ascending=[False, True]).head(hits)
        out_scores[int(topic), :len(group)] = group["score"].to_numpy(dtype=np.float32)
        out_rows[int(topic), :len(group)] = group["docid"].to_numpy(dtype=np.int64)
    return out_scores, out_rows


class HybridRetriever:
    """A dense and a BM25 retriever searched ``depth`` deep each and fused (see the module docstring)."""

    def __init__(self, dense, bm25, fusion: str = "rrf", rrf_k: float = 60, alpha: float = 0.5,
                 depth: int | None = None):
        check_fusion(fusion, rrf_k, alpha, depth)
        self.dense, self.bm25 = dense, bm25
        self.fusion, self.rrf_k, self.alpha, self.depth = fusion, rrf_k, alpha, depth

    def index(self, corpus: Corpus) -> "HybridRetriever":
        self.dense.index(corpus)
        self.bm25.index(corpus)
        return self

    def search(self, queries: Sequence[str], hits: int) -> tuple[np.ndarray, np.ndarray]:
        queries = list(queries)
        depth = max(hits, self.depth or hits)
        return fuse(self.dense.search(queries, depth), self.bm25.search(queries, depth), hits, self.fusion,
                    self.rrf_k, self.alpha)

    def describe(self) -> str:
        how = f"rrf k={self.rrf_k:g}" if self.fusion == "rrf" else f"interpolation alpha={self.alpha:g}"
        return f"hybrid({how}, depth={self.depth or 'hits'})"
