"""Retrieval metrics: pytrec_eval measures at cutoffs, answer recall, and TREC run files.

``evaluate_run`` turns a run (``{qid: {docid: score}}``) and qrels (``{qid: {docid: grade}}``) into
``{"mrr@10": .., "recall@100": .., "ndcg@10": .., "map@10": ..}`` with pytrec_eval (trec_eval's code), so
the numbers are the ones BEIR, Pyserini and Tevatron report. ``nq`` is DPR-style answer recall, which
needs the answer strings and the key texts instead of qrels.

Conventions (the same as ``trec_eval -c``):

* the mean is over the queries in ``qrels`` (or, for ``nq``, in ``answers``): a query the run has no
  results for counts as 0, a run query without qrels is ignored;
* within a query, documents are ranked by score, ties by document id in descending string order
  (trec_eval's order; ranks written in a run file are ignored);
* ``mrr@k`` is trec_eval's ``recip_rank`` on the run cut to its top ``k`` (0 when no relevant document is
  in the top ``k``); ``recall@k``, ``ndcg@k``, ``map@k`` are ``recall_k``, ``ndcg_cut_k``, ``map_cut_k``.
"""
from __future__ import annotations

import os
import unicodedata
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import regex

from ..errors import UserError

Run = Mapping[str, Mapping[str, float]]
Qrels = Mapping[str, Mapping[str, int]]

# metric name -> pytrec_eval measure family (None: computed here, not by pytrec_eval)
TREC_MEASURES = {"mrr": "recip_rank", "recall": "recall", "ndcg": "ndcg_cut", "map": "map_cut"}
ANSWER_METRICS = ("nq",)
METRICS = tuple(TREC_MEASURES) + ANSWER_METRICS


def check_metrics(metrics: Iterable[str], cutoffs: Iterable[int], extra: Sequence[str] = ()) -> tuple[list[str], list[int]]:
    """Validate ``--metrics`` / ``--cutoffs`` before any work; ``extra`` names allowed non-metric actions."""
    metrics = list(metrics)
    allowed = list(METRICS) + list(extra)
    for name in metrics:
        if name not in allowed:
            raise UserError(f"--metrics: unknown metric '{name}' (known: {', '.join(allowed)})")
    cutoffs = list(cutoffs)
    if not cutoffs and any(m in METRICS for m in metrics):
        raise UserError("--cutoffs: give at least one cutoff, e.g. --cutoffs 1 10 100")
    for k in cutoffs:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise UserError(f"--cutoffs: {k!r} is not a positive integer")
    return metrics, sorted(set(cutoffs))


def cut_run(run: Run, k: int) -> dict[str, dict[str, float]]:
    """Each query's top ``k`` documents in trec_eval's order (score descending, ties by docid descending)."""
    cut = {}
    for qid, docs in run.items():
        ranked = sorted(docs.items(), key=lambda item: (item[1], item[0]), reverse=True)[:k]
        cut[qid] = dict(ranked)
    return cut


def ranked_docids(docs: Mapping[str, float]) -> list[str]:
    """Document ids of one query's results in trec_eval's rank order."""
    return [d for d, _ in sorted(docs.items(), key=lambda item: (item[1], item[0]), reverse=True)]


def _trec_per_query(run: Run, qrels: Qrels, name: str, cutoffs: list[int]) -> dict[str, dict[str, float]]:
    """``{qid: {"name@k": value}}`` for every query in qrels (missing queries get 0)."""
    import pytrec_eval

    qrels = {str(q): {str(d): int(g) for d, g in docs.items()} for q, docs in qrels.items()}
    run = {str(q): {str(d): float(s) for d, s in docs.items()} for q, docs in run.items() if str(q) in qrels}
    out: dict[str, dict[str, float]] = {qid: {} for qid in qrels}
    if name == "mrr":
        evaluator = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"})
        for k in cutoffs:
            scores = evaluator.evaluate(cut_run(run, k))
            for qid in qrels:
                out[qid][f"mrr@{k}"] = scores.get(qid, {}).get("recip_rank", 0.0)
        return out
    family = TREC_MEASURES[name]
    measure = f"{family}." + ",".join(str(k) for k in cutoffs)
    scores = pytrec_eval.RelevanceEvaluator(qrels, {measure}).evaluate(run)
    for qid in qrels:
        for k in cutoffs:
            out[qid][f"{name}@{k}"] = scores.get(qid, {}).get(f"{family}_{k}", 0.0)
    return out


# ---- answer recall (DPR's tokenised string matching) ----

# DPR's SimpleTokenizer (dpr/utils/tokenizers.py): runs of letters/digits/marks, or one other non-space char
_DPR_TOKEN = regex.compile(r"([\p{L}\p{N}\p{M}]+)|([^\p{Z}\p{C}])", flags=regex.IGNORECASE | regex.UNICODE | regex.MULTILINE)


def answer_tokens(text: str) -> list[str]:
    """DPR's answer-matching tokens: NFD-normalised, SimpleTokenizer split, lowercased."""
    return [m.group().lower() for m in _DPR_TOKEN.finditer(unicodedata.normalize("NFD", text))]


def has_answer(answers: Iterable[str], text: str) -> bool:
    """DPR's ``has_answer`` (match_type "string"): an answer's token sequence occurs in ``text``'s tokens.

    Punctuation is a token of its own (so "Paris/Eiffel Tower" contains "Eiffel Tower" and "Jay-Z's" contains
    "Jay-Z"); articles are kept; case is ignored. One difference: an answer with no tokens never matches
    (DPR's loop matches an empty answer everywhere).
    """
    haystack = answer_tokens(text)
    for answer in answers:
        needle = answer_tokens(answer)
        n = len(needle)
        if n and any(haystack[i:i + n] == needle for i in range(len(haystack) - n + 1)):
            return True
    return False


def _answer_per_query(run: Run, answers: Mapping[str, Sequence[str]], key_text: Callable[[str], str],
                      cutoffs: list[int]) -> dict[str, dict[str, float]]:
    out = {}
    for qid, answer_list in answers.items():
        ranked = ranked_docids(run.get(qid, {}))[: max(cutoffs)]
        first = next((r for r, docid in enumerate(ranked) if has_answer(answer_list, key_text(docid))), None)
        out[str(qid)] = {f"nq@{k}": float(first is not None and first < k) for k in cutoffs}
    return out


def evaluate_run(run: Run, qrels: Qrels, metrics: Iterable[str], cutoffs: Iterable[int], per_query: bool = False,
                 answers: Mapping[str, Sequence[str]] | None = None, key_text: Callable[[str], str] | None = None):
    """Mean metrics of a run over the queries in ``qrels`` (``nq``: over the queries in ``answers``).

    Returns ``{"ndcg@10": float, ...}`` in the order of ``metrics`` then ``cutoffs``; with ``per_query`` also
    ``{qid: {...}}`` as a second value. Queries without results count as 0. ``nq`` needs ``answers``
    (``{qid: [answer strings]}``) and ``key_text(docid) -> str``.
    """
    metrics, cutoffs = check_metrics(metrics, cutoffs)
    per_q: dict[str, dict[str, float]] = {}

    def merge(part):
        for qid, values in part.items():
            per_q.setdefault(qid, {}).update(values)

    names: list[str] = []
    for name in metrics:
        if name == "nq":
            if answers is None or key_text is None:
                raise UserError("--metrics nq needs answer strings ('answers' in the eval records) and key texts")
            merge(_answer_per_query(run, {str(q): a for q, a in answers.items()}, key_text, cutoffs))
            queries = [str(q) for q in answers]
        else:
            merge(_trec_per_query(run, qrels, name, cutoffs))
            queries = [str(q) for q in qrels]
        for k in cutoffs:
            names.append((f"{name}@{k}", queries))
    means = {}
    for key, queries in names:
        means[key] = sum(per_q[q][key] for q in queries) / len(queries) if queries else 0.0
    return (means, per_q) if per_query else means


# ---- TREC run files: "qid Q0 docid rank score tag" ----

def write_trec_run(path: str | os.PathLike, run: Run, tag: str = "llm-embedder") -> Path:
    """Write a run as a TREC run file (ranks 1.. in trec_eval's order), atomically."""
    from ..io import atomic_write

    if not tag or any(c.isspace() for c in tag):
        raise ValueError(f"run tag must be one word, got {tag!r}")

    def write(out):
        for qid, docs in run.items():
            for rank, docid in enumerate(ranked_docids(docs), 1):
                out.write(f"{qid} Q0 {docid} {rank} {float(docs[docid])!r} {tag}\n")

    return atomic_write(path, write)


def read_trec_run(path: str | os.PathLike) -> dict[str, dict[str, float]]:
    """Read a TREC run file; a malformed line is a UserError naming file:line."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    run: dict[str, dict[str, float]] = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 6:
                raise UserError(f"{path}:{n}: expected 'qid Q0 docid rank score tag', got {len(parts)} fields")
            try:
                score = float(parts[4])
            except ValueError:
                raise UserError(f"{path}:{n}: score {parts[4]!r} is not a number") from None
            run.setdefault(parts[0], {})[parts[2]] = score
    return run
