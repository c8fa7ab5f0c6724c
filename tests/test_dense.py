"""Dense search: faiss flat equals a numpy argsort, chunking changes nothing, approximate indexes are opt-in."""
from __future__ import annotations

import numpy as np
import pytest

from llm_embedder.errors import UserError
from llm_embedder.retrieval.dense import IndexParams, merge_topk, search


def _normalised(rng, n, d):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def vectors():
    rng = np.random.default_rng(0)
    return _normalised(rng, 37, 16), _normalised(rng, 500, 16)


def _numpy_topk(q, k_emb, k):
    sims = q @ k_emb.T
    rows = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, rows, axis=1), rows


def test_flat_equals_numpy_argsort(vectors):
    q, keys = vectors
    scores, rows = search(q, keys, 10)
    ref_scores, ref_rows = _numpy_topk(q, keys, 10)
    assert rows.dtype == np.int64 and scores.dtype == np.float32 and rows.shape == (37, 10)
    np.testing.assert_array_equal(rows, ref_rows)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-5, atol=1e-6)


def test_query_chunks_do_not_change_results(vectors):
    q, keys = vectors
    whole = search(q, keys, 7)
    chunked = search(q, keys, 7, query_chunk=5)  # 37 queries in 8 chunks, the last one short
    np.testing.assert_array_equal(whole[1], chunked[1])
    np.testing.assert_array_equal(whole[0], chunked[0])


def test_k_larger_than_corpus_returns_every_key():
    rng = np.random.default_rng(1)
    q, keys = _normalised(rng, 3, 8), _normalised(rng, 4, 8)
    scores, rows = search(q, keys, 100)
    assert rows.shape == (3, 4)
    assert sorted(rows[0].tolist()) == [0, 1, 2, 3]
    assert np.all(np.diff(scores, axis=1) <= 0)


def test_ivf_visiting_every_cell_is_exact_and_hnsw_finds_most(vectors):
    q, keys = vectors
    ref = _numpy_topk(q, keys, 10)[1]
    _, ivf_rows = search(q, keys, 10, index="ivf", params=IndexParams(nlist=8, nprobe=8))
    np.testing.assert_array_equal(ivf_rows, ref)
    _, hnsw_rows = search(q, keys, 10, index="hnsw", params=IndexParams(hnsw_m=16, ef_search=64))
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(hnsw_rows, ref)])
    assert overlap > 0.9


def test_ivf_with_few_probes_is_approximate(vectors):
    q, keys = vectors
    ref = _numpy_topk(q, keys, 10)[1]
    _, rows = search(q, keys, 10, index="ivf", params=IndexParams(nlist=12, nprobe=1))
    assert not np.array_equal(rows, ref)  # one cell of twelve cannot hold every neighbour


def test_merging_shards_equals_searching_the_whole_corpus(vectors):
    q, keys = vectors
    whole = search(q, keys, 10)
    parts = []
    for lo, hi in ((0, 123), (123, 400), (400, 500)):
        s, r = search(q, keys[lo:hi], 10)
        parts.append((s, r, lo))
    merged = merge_topk(parts, 10)
    np.testing.assert_array_equal(merged[1], whole[1])
    np.testing.assert_allclose(merged[0], whole[0], rtol=1e-6)


def test_bad_arguments():
    rng = np.random.default_rng(2)
    with pytest.raises(UserError, match="--faiss_index"):
        search(_normalised(rng, 2, 4), _normalised(rng, 5, 4), 2, index="lsh")
    with pytest.raises(UserError, match="dimension"):
        search(_normalised(rng, 2, 4), _normalised(rng, 5, 8), 2)
