"""Top-k rows of a whole corpus for each query: the retrievers of eval_lm's ``--task qa`` and ``--task icl``.

Unlike the lrlm mode (a small candidate pool per target, :mod:`.retrievers`), these modes search one shared
corpus (PubMedQA's 1,000 abstracts, or the train questions for demonstrations) with the project's own
retrievers: ``bm25`` is :class:`~llm_embedder.retrieval.bm25.BM25Retriever` (pyserini by default),
``dense`` is :class:`~llm_embedder.retrieval.retriever.DenseRetriever` (faiss, exact inner product) over
any alias or saved encoder with the instructions eval_retrieval would use; ``random`` draws k rows seeded
per query; ``oracle`` is the record's labelled positives (``pos_index``; for PubMedQA, the gold abstract).
Rows listed in ``exclude`` (icl: the test question itself, if it is in the pool) are never returned.
"""
from __future__ import annotations

import random
from typing import Sequence

from ..corpus import Corpus
from ..errors import UserError


def top_rows(method: str, queries: Sequence[str], query_ids: Sequence, corpus: Corpus, k: int, *, task: str,
             seed: int = 0, encoder_dir=None, bm25_backend: str = "pyserini", positives=None,
             exclude: Sequence[set[int]] | None = None) -> list[list[int]]:
    """Per query, ``k`` corpus rows best first (fewer only where BM25 matches fewer documents)."""
    exclude = exclude or [set() for _ in queries]
    if method == "random":
        out = []
        for qid, skip in zip(query_ids, exclude):
            pool = [r for r in range(len(corpus)) if r not in skip]
            out.append(random.Random(f"{seed}:{qid}").sample(pool, k))
        return out
    if method == "oracle":
        return [list(p[:k]) for p in positives]
    hits = k + max((len(s) for s in exclude), default=0)
    if method == "bm25":
        from ..retrieval.bm25 import BM25Retriever

        retriever = BM25Retriever(bm25_backend, show_progress=False)
    elif method == "dense":
        from ..modeling.encoder import DenseEncoder
        from ..resources import cache_dir
        from ..retrieval.retriever import DenseRetriever, eval_instructions

        encoder = DenseEncoder.from_pretrained(encoder_dir)
        q_inst, k_inst = eval_instructions(task, None, encoder.instructions)
        retriever = DenseRetriever(encoder, q_inst, k_inst, cache_dir=cache_dir(), model_dir=encoder_dir,
                                   show_progress=False)
    else:
        raise UserError(f"--retrieval_method: {method!r} does not rank a corpus")
    _, rows = retriever.index(corpus).search(list(queries), min(hits, len(corpus)))
    return [[int(r) for r in row if r >= 0 and int(r) not in skip][:k] for row, skip in zip(rows, exclude)]
