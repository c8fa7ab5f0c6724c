"""BM25 over one target's small candidate pool (bm25s: an index per pool costs well under a millisecond,
where a Lucene index per query would cost a JVM round trip each). Parameters k1 0.9, b 0.4 as the
project's pyserini BM25; tokens are bm25s's lowercase word tokens without English stop words."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ..retrieval.bm25 import import_bm25s


def bm25_scores(query: str, docs: Sequence[str], k1: float = 0.9, b: float = 0.4) -> np.ndarray:
    """BM25 score of every doc for the query (0 where nothing matches)."""
    bm25s = import_bm25s()
    corpus_tokens = bm25s.tokenize(list(docs), stopwords="en", show_progress=False)
    retriever = bm25s.BM25(k1=k1, b=b)
    retriever.index(corpus_tokens, show_progress=False)
    q = bm25s.tokenize([query], stopwords="en", show_progress=False, return_ids=False)[0]
    if not q:  # a query of stop words and punctuation only (e.g. a chunk of brackets): nothing matches
        return np.zeros(len(docs), dtype=np.float64)
    return np.asarray(retriever.get_scores(q), dtype=np.float64)


def bm25_rank(query: str, docs: Sequence[str]) -> list[int]:
    """Doc indices, best BM25 score first; ties (including all-zero pools) keep file order."""
    scores = bm25_scores(query, docs)
    return sorted(range(len(docs)), key=lambda i: (-scores[i], i))
