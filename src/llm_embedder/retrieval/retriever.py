"""The Retriever interface every evaluation, search and mining path uses, its dense implementation, and
which instructions an evaluation uses.

A retriever is ``index(corpus) -> self`` then ``search(queries, hits) -> (scores [Q, hits], corpus rows
[Q, hits])`` with row ``-1`` where fewer than ``hits`` keys exist. :class:`~.bm25.BM25Retriever` (Lucene /
bm25s / rank_bm25) and :class:`DenseRetriever` (an encoder + faiss) implement it, so
:func:`~.evaluate.evaluate` -- the one evaluator behind ``eval_retrieval``, the trainer's evaluation and
mining -- does not care which one it gets.
"""
from __future__ import annotations

from typing import Protocol, Sequence

import numpy as np

from ..corpus import Corpus
from .dense import IndexParams, search


class Retriever(Protocol):
    """``index(corpus)`` once, then ``search(queries, hits) -> (scores, rows)``."""

    def index(self, corpus: Corpus) -> "Retriever": ...

    def search(self, queries: Sequence[str], hits: int) -> tuple[np.ndarray, np.ndarray]: ...


class DenseRetriever:
    """Dense retrieval with an encoder: corpus vectors (cached, or given) searched with faiss.

    ``rows_subset`` restricts the search to those corpus rows (the cheap seeded-subsample evaluation);
    ``key_embeddings`` (vectors of every corpus row, e.g. encoded by torchrun ranks) skips corpus encoding.
    """

    def __init__(self, encoder, query_instruction: str = "", key_instruction: str = "", batch_size: int = 64,
                 cache_dir=None, model_dir=None, faiss_index: str = "flat", index_params: IndexParams | None = None,
                 rows_subset: np.ndarray | None = None, key_embeddings: np.ndarray | None = None,
                 show_progress: bool = True):
        self.encoder = encoder
        self.query_instruction, self.key_instruction = query_instruction, key_instruction
        self.batch_size, self.cache_dir, self.model_dir = batch_size, cache_dir, model_dir
        self.faiss_index, self.index_params = faiss_index, index_params
        self.rows_subset, self.key_embeddings, self.show_progress = rows_subset, key_embeddings, show_progress
        self._keys: np.ndarray | None = None

    def index(self, corpus: Corpus) -> "DenseRetriever":
        from .encode import encode_texts

        subset = self.rows_subset
        if self.key_embeddings is not None:
            if len(self.key_embeddings) != len(corpus):
                raise ValueError(f"key_embeddings has {len(self.key_embeddings)} rows for a corpus of {len(corpus)}")
            self._keys = self.key_embeddings if subset is None else self.key_embeddings[subset]
            return self
        texts = corpus.texts if subset is None else [corpus.texts[r] for r in subset]
        ids = corpus.ids if subset is None else [corpus.ids[r] for r in subset]
        self._keys = encode_texts(self.encoder, texts, side="key", instruction=self.key_instruction,
                                  batch_size=self.batch_size, cache_dir=self.cache_dir, model_dir=self.model_dir,
                                  ids=ids, show_progress=self.show_progress)
        return self

    def search(self, queries: Sequence[str], hits: int) -> tuple[np.ndarray, np.ndarray]:
        from .encode import encode_texts

        if self._keys is None:
            raise RuntimeError("DenseRetriever.search before index(corpus)")
        query_emb = encode_texts(self.encoder, list(queries), side="query", instruction=self.query_instruction,
                                 batch_size=self.batch_size, show_progress=self.show_progress)
        scores, rows = search(query_emb, self._keys, hits, index=self.faiss_index, params=self.index_params)
        if self.rows_subset is not None:
            rows = np.where(rows >= 0, self.rows_subset[np.clip(rows, 0, None)], -1)
        return scores, rows


def eval_task(records: Sequence[dict], explicit: str | None = None, default: str = "qa") -> str:
    """The task whose instructions an evaluation uses: ``explicit``, else the records' one task, else ``default``."""
    from ..errors import UserError

    if explicit:
        return explicit
    tasks = {r.get("task") for r in records if r.get("task")}
    if len(tasks) > 1:
        raise UserError(f"--task: the records mix tasks ({', '.join(sorted(tasks))}); pass --task to pick the instructions")
    return tasks.pop() if tasks else default


def eval_instructions(task: str, add_instruction: bool | None, saved: dict | None = None) -> tuple[str, str]:
    """``(query, key)`` instructions for evaluating ``task``, the same in eval_retrieval and during training.

    ``add_instruction`` true: the model's own saved instructions for the task, else the task registry's;
    false: none; None (not given): the model's own if it saved some for the task, else none.
    """
    saved = saved or {}
    if add_instruction is False:
        return "", ""
    if task in saved:
        return tuple(saved[task])
    if add_instruction is None:
        return "", ""
    from ..tasks import get_task

    recipe = get_task(task)
    return recipe.query_instruction, recipe.key_instruction
