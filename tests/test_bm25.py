"""BM25 backends: scores equal a straightforward BM25, indexes are cached, pyserini reproduces SciFact."""
from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from llm_embedder.corpus import Corpus, load_corpus
from llm_embedder.errors import UserError
from llm_embedder.retrieval.bm25 import BM25Retriever, tokenize

DOCS = [
    "Cats purr when they are content and cats sleep a lot",
    "Dogs bark at strangers; dogs also wag tails",
    "The stock market fell as interest rates rose",
    "Interest in cats grew after the video of cats purring",
    "Rain falls from clouds when droplets grow heavy",
    "Volcanoes erupt molten rock called lava",
]
QUERIES = ["why do cats purr", "interest rates and the stock market", "lava", "zebra unicorn"]


def _lucene_bm25(docs_tokens, query_tokens, k1, b):
    """Lucene's BM25 (no k1+1 factor): idf = ln(1 + (N - df + .5)/(df + .5)), tf / (tf + k1 (1 - b + b dl/avgdl))."""
    n = len(docs_tokens)
    avgdl = sum(map(len, docs_tokens)) / n
    df = Counter(t for d in docs_tokens for t in set(d))
    scores = np.zeros(n)
    for i, d in enumerate(docs_tokens):
        tf = Counter(d)
        for t in query_tokens:
            if tf[t]:
                idf = math.log(1 + (n - df[t] + 0.5) / (df[t] + 0.5))
                scores[i] += idf * tf[t] / (tf[t] + k1 * (1 - b + b * len(d) / avgdl))
    return scores


def _okapi_bm25(docs_tokens, query_tokens, k1, b, eps=0.25):
    """rank_bm25's BM25Okapi: idf = ln((N - df + .5)/(df + .5)) floored at eps * mean idf, tf (k1 + 1) / (...)."""
    n = len(docs_tokens)
    avgdl = sum(map(len, docs_tokens)) / n
    df = Counter(t for d in docs_tokens for t in set(d))
    idf = {t: math.log(n - f + 0.5) - math.log(f + 0.5) for t, f in df.items()}
    floor = eps * sum(idf.values()) / len(idf)
    idf = {t: (floor if v < 0 else v) for t, v in idf.items()}
    scores = np.zeros(n)
    for i, d in enumerate(docs_tokens):
        tf = Counter(d)
        for t in query_tokens:
            if tf[t]:
                scores[i] += idf[t] * tf[t] * (k1 + 1) / (tf[t] + k1 * (1 - b + b * len(d) / avgdl))
    return scores


@pytest.mark.parametrize("backend, reference", [("bm25s", _lucene_bm25), ("rank_bm25", _okapi_bm25)])
def test_python_backends_equal_a_straightforward_bm25(tmp_path, backend, reference):
    retriever = BM25Retriever(backend, k1=1.2, b=0.75, cache_dir=tmp_path, show_progress=False)
    retriever.index(Corpus.from_texts(DOCS))
    scores, rows = retriever.search(QUERIES, k=4)
    docs_tokens = tokenize(DOCS)
    assert rows.shape == (4, 4) and rows.dtype == np.int64
    for q, query in enumerate(QUERIES):
        expected = reference(docs_tokens, tokenize([query])[0], 1.2, 0.75)
        matched = [i for i in np.argsort(-expected, kind="stable") if expected[i] > 0][:4]
        got = [int(r) for r in rows[q] if r >= 0]
        assert got == matched, query
        np.testing.assert_allclose(scores[q, :len(got)], expected[matched], rtol=1e-5)
    # "lava" matches one document: the rest is padding; "zebra unicorn" matches none
    assert rows[2].tolist() == [5, -1, -1, -1] and np.isneginf(scores[2, 1:]).all()
    assert (rows[3] == -1).all()


def test_index_is_built_once_per_corpus_and_reused(tmp_path, monkeypatch):
    builds = []
    original = BM25Retriever._build_bm25s
    monkeypatch.setattr(BM25Retriever, "_build_bm25s", lambda self, c, out: (builds.append(len(c)), original(self, c, out)))
    corpus = Corpus.from_texts(DOCS)
    first = BM25Retriever("bm25s", cache_dir=tmp_path, show_progress=False).index(corpus)
    second = BM25Retriever("bm25s", cache_dir=tmp_path, show_progress=False).index(corpus)
    assert builds == [6] and first.index_dir == second.index_dir
    np.testing.assert_array_equal(first.search(QUERIES, 3)[1], second.search(QUERIES, 3)[1])
    BM25Retriever("bm25s", cache_dir=tmp_path, show_progress=False).index(Corpus.from_texts(DOCS[:5]))
    BM25Retriever("bm25s", k1=1.5, cache_dir=tmp_path, show_progress=False).index(corpus)  # bm25s bakes k1 in
    assert builds == [6, 5, 6]
    assert not list(tmp_path.glob("bm25/.*"))  # no temp folders left behind


def test_bad_backend_and_parameters():
    with pytest.raises(UserError, match="--bm25_backend: unknown backend 'lucene'"):
        BM25Retriever("lucene")
    with pytest.raises(UserError, match="--bm25_k1/--bm25_b"):
        BM25Retriever("bm25s", b=1.5)
    with pytest.raises(RuntimeError, match="index"):
        BM25Retriever("bm25s").search(["q"], 1)


@pytest.mark.slow
def test_pyserini_reproduces_scifact_test_ndcg(tmp_path, data_dir):
    """Pyserini's published BEIR SciFact flat score (title + text, k1 0.9, b 0.4): nDCG@10 = 0.6789."""
    from retrieval_helpers import scifact_records

    from llm_embedder.retrieval.evaluate import evaluate_bm25

    corpus = load_corpus(data_dir / "scifact" / "corpus.jsonl", key_template="{title} {text}")
    records = scifact_records(data_dir, "test")
    retriever = BM25Retriever("pyserini", k1=0.9, b=0.4, cache_dir=tmp_path, show_progress=False)
    result = evaluate_bm25(retriever, records, corpus, ["ndcg", "recall"], [10, 100], hits=100)
    assert result["metrics"]["ndcg@10"] == pytest.approx(0.6789, abs=1e-3)
    assert result["metrics"]["recall@100"] == pytest.approx(0.9253, abs=1e-3)
    reused = BM25Retriever("pyserini", cache_dir=tmp_path, show_progress=False).index(corpus)
    assert reused.index_dir == retriever.index_dir
    np.testing.assert_array_equal(reused.search([records[0]["query"]], 10)[1][0], result["rows"][0, :10])
