"""Retrieval evaluation of schema records: dense (full corpus, seeded subsample, or own groups) and BM25.

Each record is one query; its relevant keys are ``pos_index`` (corpus rows) or, failing that, its ``pos``
texts matched exactly to corpus rows. Query ids are ``query_id`` or the record's position. Every result is
a dict::

    {"metrics": {"ndcg@10": ..}, "corpus": "full(N=5183)" | "subsample(N=.., seed=..)" | "groups(...)",
     "num_queries": Q, "run": {qid: {docid: score}}, "per_query": {qid: {metric: value}},
     "rows": int64 [Q, k] corpus rows (-1 = none), "scores": float32 [Q, k]}

``corpus`` labels how the numbers were obtained, so a cheap training-time number is never mistaken
for a full-corpus one. ``evaluate_dense`` is also what the trainer calls during training.
"""
from __future__ import annotations

import logging
from typing import Sequence

import numpy as np

from ..corpus import Corpus
from ..errors import UserError
from .dense import IndexParams
from .metrics import check_metrics, evaluate_run
from .retriever import DenseRetriever

logger = logging.getLogger(__name__)


def _where(records, i: int) -> str:
    return records.where(i) if hasattr(records, "where") else f"record {i + 1}"


def _records(records) -> list[dict]:
    return records.records if hasattr(records, "records") else list(records)


def query_ids(records) -> list[str]:
    """``query_id`` of each record as a string (default: its line in the file, as DESIGN §2 and the
    training data say; 1-based position for in-memory records); duplicates are a UserError."""
    ids, seen = [], {}
    lines = getattr(records, "lines", None) or []
    for i, record in enumerate(_records(records)):
        qid = str(record.get("query_id", lines[i] if i < len(lines) else i + 1))
        if any(c.isspace() for c in qid):
            raise UserError(f"{_where(records, i)}: query_id: {qid!r} contains whitespace (run files cannot hold it)")
        if qid in seen:
            raise UserError(f"{_where(records, i)}: query_id: {qid!r} repeats the one of {_where(records, seen[qid])}")
        seen[qid] = i
        ids.append(qid)
    return ids


def doc_ids(corpus: Corpus) -> list[str]:
    """Document id of every row: the corpus ids when unique and whitespace-free, else the row numbers."""
    ids = corpus.ids
    if len(set(ids)) == len(ids) and not any(any(c.isspace() for c in d) for d in ids):
        return list(ids)
    logger.warning("corpus ids are not unique (or contain spaces): run files use row numbers as document ids")
    return [str(i) for i in range(len(ids))]


def positive_rows(records, corpus: Corpus) -> list[list[int]]:
    """Corpus rows of each record's positives: ``pos_index``, else ``pos`` texts matched exactly to a row."""
    text_rows: dict[str, int] | None = None
    out = []
    for i, record in enumerate(_records(records)):
        rows = record.get("pos_index")
        if rows:
            bad = [r for r in rows if not 0 <= r < len(corpus)]
            if bad:
                raise UserError(f"{_where(records, i)}: pos_index: row {bad[0]} is beyond the corpus ({len(corpus)} rows)")
            out.append(list(dict.fromkeys(rows)))
            continue
        texts = record.get("pos") or []
        if not texts:
            raise UserError(f"{_where(records, i)}: pos: evaluation records need a positive (pos_index or pos)")
        if text_rows is None:
            text_rows = {}
            for row, text in enumerate(corpus.texts):
                text_rows.setdefault(text.strip(), row)
        found = []
        for text in texts:
            row = text_rows.get(text.strip())
            if row is None:
                raise UserError(f"{_where(records, i)}: pos: text {text[:50]!r} is not a row of --corpus; give pos_index")
            found.append(row)
        out.append(list(dict.fromkeys(found)))
    return out


def check_answers(records, metrics: Sequence[str]) -> None:
    """``--metrics nq`` needs ``answers`` in every record."""
    if "nq" not in metrics:
        return
    for i, record in enumerate(_records(records)):
        if not record.get("answers"):
            raise UserError(f"{_where(records, i)}: answers: --metrics nq needs answer strings in every eval record")


def subsample_rows(n_rows: int, keep: Sequence[int], n_other: int, seed: int) -> np.ndarray:
    """Sorted rows: every row of ``keep`` plus ``n_other`` other rows drawn without replacement (seeded)."""
    keep = np.unique(np.asarray(list(keep), dtype=np.int64))
    others = np.setdiff1d(np.arange(n_rows, dtype=np.int64), keep)
    if n_other < len(others):
        others = np.random.default_rng(seed).choice(others, size=n_other, replace=False)
    return np.sort(np.concatenate([keep, others]))


def run_of(qids: list[str], corpus: Corpus, scores: np.ndarray, rows: np.ndarray) -> dict:
    """``{qid: {docid: score}}`` from ranked corpus rows (row -1 = no result)."""
    docids = doc_ids(corpus)
    return {qid: {docids[r]: float(s) for s, r in zip(s_row, r_row) if r >= 0}
            for qid, s_row, r_row in zip(qids, scores, rows)}


def score_topk(records, qids: list[str], pos_rows: list[list[int]], corpus: Corpus, scores: np.ndarray,
               rows: np.ndarray, metrics: Sequence[str], cutoffs: Sequence[int], label: str) -> dict:
    """Metrics of ranked corpus rows per query, in the result format of this module."""
    docids = doc_ids(corpus)
    run = run_of(qids, corpus, scores, rows)
    qrels = {qid: {docids[r]: 1 for r in pos} for qid, pos in zip(qids, pos_rows)}
    answers = {qid: rec["answers"] for qid, rec in zip(qids, _records(records))} if "nq" in metrics else None
    docid_row = {d: i for i, d in enumerate(docids)}
    means, per_query = evaluate_run(run, qrels, metrics, cutoffs, per_query=True, answers=answers,
                                    key_text=lambda d: corpus.texts[docid_row[d]])
    return {"metrics": means, "corpus": label, "num_queries": len(qids), "run": run, "per_query": per_query,
            "rows": rows, "scores": scores}


def evaluate(retriever, records, corpus: Corpus, metrics: Sequence[str], cutoffs: Sequence[int], hits: int,
             label: str, pos_rows: list[list[int]] | None = None) -> dict:
    """The one evaluator: index ``corpus`` with any :class:`~.retriever.Retriever`, search every record's
    query, and (when ``metrics`` are given) score the ranking. eval_retrieval, the trainer's evaluation and
    mining all call it. Without metrics the result still holds the run, rows and scores (run files, mining).
    """
    metrics = list(metrics)
    if metrics:
        metrics, cutoffs = check_metrics(metrics, cutoffs)
        _check_hits(hits, cutoffs)
        check_answers(records, metrics)
    qids = query_ids(records)
    if pos_rows is None:
        pos_rows = positive_rows(records, corpus) if any(m != "nq" for m in metrics) else [[] for _ in qids]
    retriever.index(corpus)
    scores, rows = retriever.search([r["query"] for r in _records(records)], hits)
    if not metrics:
        return {"metrics": {}, "corpus": label, "num_queries": len(qids), "run": run_of(qids, corpus, scores, rows),
                "per_query": {}, "rows": rows, "scores": scores}
    result = score_topk(records, qids, pos_rows, corpus, scores, rows, metrics, cutoffs, label)
    logger.info("retrieval on %s: %s", label, _fmt(result["metrics"]))
    return result


def _check_hits(hits: int, cutoffs: Sequence[int]) -> None:
    if hits < max(cutoffs, default=1):
        raise UserError(f"--hits: {hits} is below the largest cutoff {max(cutoffs)}; retrieve at least that deep")


def dense_topk(encoder, queries: Sequence[str], corpus: Corpus, hits: int, query_instruction: str = "",
               key_instruction: str = "", batch_size: int = 64, rows_subset: np.ndarray | None = None, cache_dir=None,
               model_dir=None, faiss_index: str = "flat", index_params: IndexParams | None = None,
               key_embeddings: np.ndarray | None = None, show_progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """``(scores, corpus rows)`` of the top ``hits`` keys per query: a :class:`DenseRetriever` in one call."""
    retriever = DenseRetriever(encoder, query_instruction, key_instruction, batch_size, cache_dir, model_dir,
                               faiss_index, index_params, rows_subset, key_embeddings, show_progress)
    return retriever.index(corpus).search(queries, hits)


def subsample_label(corpus_subsample: int | None, seed: int, n_kept: int, n_rows: int) -> str:
    if corpus_subsample:
        return f"subsample(N={corpus_subsample}, seed={seed}, rows={n_kept} of {n_rows})"
    return f"full(N={n_rows})"


def evaluate_dense(encoder, records, corpus: Corpus, metrics: Sequence[str], cutoffs: Sequence[int],
                   query_instruction: str = "", key_instruction: str = "", batch_size: int = 64,
                   corpus_subsample: int | None = None, seed: int = 0, hits: int = 100, cache_dir=None,
                   model_dir=None, faiss_index: str = "flat", index_params: IndexParams | None = None,
                   key_embeddings: np.ndarray | None = None, show_progress: bool = True) -> dict:
    """Encode queries and corpus with ``encoder``, search exactly (or ``faiss_index``), compute metrics.

    ``corpus_subsample=N`` searches all positives plus N other seeded rows (labelled
    ``subsample(N=.., seed=..)``). ``cache_dir`` caches the corpus vectors (see :mod:`.encode`;
    ``model_dir`` fingerprints by the model's files instead of hashing its parameters).
    """
    pos_rows = positive_rows(records, corpus)
    keep = None
    if corpus_subsample:
        keep = subsample_rows(len(corpus), [r for rows in pos_rows for r in rows], corpus_subsample, seed)
    label = subsample_label(corpus_subsample, seed, len(keep) if keep is not None else len(corpus), len(corpus))
    retriever = DenseRetriever(encoder, query_instruction, key_instruction, batch_size, cache_dir, model_dir,
                               faiss_index, index_params, keep, key_embeddings, show_progress)
    return evaluate(retriever, records, corpus, metrics, cutoffs, hits, label, pos_rows=pos_rows)


def evaluate_bm25(retriever, records, corpus: Corpus, metrics: Sequence[str], cutoffs: Sequence[int],
                  hits: int = 100) -> dict:
    """BM25 on the same records and corpus (``retriever``: a :class:`.bm25.BM25Retriever`); no instructions."""
    label = f"full(N={len(corpus)}, bm25={retriever.backend})"
    return evaluate(retriever, records, corpus, metrics, cutoffs, hits, label)


def group_keys(records, corpus: Corpus | None) -> list[tuple[list[str], int]]:
    """``(key texts, number of positives)`` of each record's own candidates (pos first, then neg)."""
    out = []
    for i, record in enumerate(_records(records)):
        keys = []
        for kind in ("pos", "neg"):
            texts, rows = record.get(kind), record.get(f"{kind}_index")
            if texts:
                keys.append(list(texts))
            elif rows:
                if corpus is None:
                    raise UserError(f"{_where(records, i)}: {kind}_index: keys given as corpus rows need --corpus")
                bad = [r for r in rows if not 0 <= r < len(corpus)]
                if bad:
                    raise UserError(f"{_where(records, i)}: {kind}_index: row {bad[0]} is beyond the corpus ({len(corpus)} rows)")
                keys.append([corpus.texts[r] for r in rows])
            else:
                keys.append([])
        if not keys[0]:
            raise UserError(f"{_where(records, i)}: pos: evaluation records need a positive (pos or pos_index)")
        out.append((keys[0] + keys[1], len(keys[0])))
    return out


def evaluate_groups(encoder, records, corpus: Corpus | None, metrics: Sequence[str], cutoffs: Sequence[int],
                    query_instruction: str = "", key_instruction: str = "", batch_size: int = 64,
                    show_progress: bool = True) -> dict:
    """Trove-style metrics over each query's own candidate group (its pos + neg), not a corpus.

    Cheap (only the groups are encoded) but optimistic: the candidates are fixed, so the numbers say how
    well the encoder re-ranks each group and are labelled ``groups(...)``. Document ids are ``<qid>:<j>``
    with ``j`` the key's position in ``pos + neg``. ``nq`` is not available here.
    """
    from .encode import encode_texts

    metrics, cutoffs = check_metrics(metrics, cutoffs)
    if "nq" in metrics:
        raise UserError("--metrics nq is not available for group evaluation (no corpus texts to search)")
    qids = query_ids(records)
    groups = group_keys(records, corpus)
    unique = list(dict.fromkeys(t for keys, _ in groups for t in keys))
    position = {t: i for i, t in enumerate(unique)}
    key_emb = encode_texts(encoder, unique, side="key", instruction=key_instruction, batch_size=batch_size,
                           show_progress=show_progress)
    query_emb = encode_texts(encoder, [r["query"] for r in _records(records)], side="query",
                             instruction=query_instruction, batch_size=batch_size, show_progress=show_progress)
    run, qrels = {}, {}
    for qid, q, (keys, n_pos) in zip(qids, query_emb, groups):
        sims = key_emb[[position[t] for t in keys]] @ q
        run[qid] = {f"{qid}:{j}": float(s) for j, s in enumerate(sims)}
        qrels[qid] = {f"{qid}:{j}": 1 for j in range(n_pos)}
    means, per_query = evaluate_run(run, qrels, metrics, cutoffs, per_query=True)
    sizes = [len(keys) for keys, _ in groups]
    label = f"groups(own pos+neg, {min(sizes)}-{max(sizes)} keys per query)"
    logger.info("group retrieval on %s: %s", label, _fmt(means))
    return {"metrics": means, "corpus": label, "num_queries": len(qids), "run": run, "per_query": per_query}


def _fmt(metrics: dict) -> str:
    return " ".join(f"{k}={v:.4f}" for k, v in metrics.items())
