"""Hybrid retrieval (``--retrieval_method hybrid``): pyserini's fusions against hand-computed values, and the CLI."""
from __future__ import annotations

import json

import numpy as np
import pytest
from retrieval_helpers import one_torch_thread, small_scifact  # noqa: F401  (fixtures)

from llm_embedder.errors import UserError
from llm_embedder.retrieval.hybrid import HybridRetriever, fuse

NEG = -np.inf
# one query; dense ranks rows 0, 1, 2; BM25 ranks 2, 0, 3 (scores on different scales, as in practice)
DENSE = (np.array([[0.9, 0.8, 0.1]]), np.array([[0, 1, 2]]))
BM25 = (np.array([[12.0, 9.0, 3.0]]), np.array([[2, 0, 3]]))


def test_rrf_is_the_sum_of_reciprocal_ranks():
    scores, rows = fuse(DENSE, BM25, hits=4, fusion="rrf", rrf_k=60)
    by_hand = {0: 1 / 61 + 1 / 62, 1: 1 / 62, 2: 1 / 63 + 1 / 61, 3: 1 / 63}
    expected = sorted(by_hand, key=lambda r: -by_hand[r])
    assert rows[0].tolist() == expected == [0, 2, 1, 3]
    assert scores[0] == pytest.approx([by_hand[r] for r in expected])
    # the guard: neither input order is the fused one
    assert rows[0].tolist() != DENSE[1][0].tolist() and rows[0].tolist()[:3] != BM25[1][0].tolist()


def test_interpolation_min_max_normalises_each_run_then_weights_dense_by_alpha():
    scores, rows = fuse(DENSE, BM25, hits=3, fusion="interpolation", alpha=0.7)
    d = {0: 1.0, 1: (0.8 - 0.1) / 0.8, 2: 0.0}  # (s - min) / (max - min) per query
    b = {2: 1.0, 0: (9 - 3) / 9, 3: 0.0}
    by_hand = {r: 0.7 * d.get(r, 0.0) + 0.3 * b.get(r, 0.0) for r in set(d) | set(b)}
    expected = sorted(by_hand, key=lambda r: (-by_hand[r], r))[:3]
    assert rows[0].tolist() == expected
    assert scores[0] == pytest.approx([by_hand[r] for r in expected], abs=1e-6)
    # alpha moves the order: BM25's top row wins when BM25 weighs more
    assert fuse(DENSE, BM25, hits=1, fusion="interpolation", alpha=0.2)[1][0, 0] == 2


def test_padding_rows_are_ignored_and_short_results_are_padded():
    dense = (np.array([[0.5, NEG, NEG], [0.3, 0.2, NEG]]), np.array([[4, -1, -1], [1, 0, -1]]))
    bm25 = (np.array([[NEG, NEG, NEG], [2.0, NEG, NEG]]), np.array([[-1, -1, -1], [0, -1, -1]]))
    scores, rows = fuse(dense, bm25, hits=3)
    assert rows.tolist() == [[4, -1, -1], [0, 1, -1]]  # row 0 is in both runs of the second query
    assert np.isneginf(scores[0, 1:]).all() and np.isfinite(scores[1, :2]).all()
    empty = (np.full((1, 2), NEG), np.full((1, 2), -1))
    assert fuse(empty, empty, hits=2)[1].tolist() == [[-1, -1]]
    scores, rows = fuse((np.array([[0.4, 0.2]]), np.array([[3, 1]])), empty, hits=2, fusion="interpolation", alpha=0.25)
    assert rows.tolist() == [[3, 1]] and scores[0].tolist() == pytest.approx([0.25, 0.0])


class _Fixed:
    """A retriever returning fixed results (records the depth it was asked for)."""

    def __init__(self, result):
        self.result, self.indexed, self.depths = result, None, []

    def index(self, corpus):
        self.indexed = corpus
        return self

    def search(self, queries, hits):
        self.depths.append(hits)
        return tuple(a[:, :hits] for a in self.result)


def test_hybrid_retriever_indexes_both_and_searches_each_at_depth():
    dense, bm25 = _Fixed(DENSE), _Fixed(BM25)
    hybrid = HybridRetriever(dense, bm25, depth=3).index("corpus")
    assert dense.indexed == bm25.indexed == "corpus"
    scores, rows = hybrid.search(["q"], 2)
    assert dense.depths == bm25.depths == [3] and rows.tolist() == [[0, 2]]
    assert hybrid.describe() == "hybrid(rrf k=60, depth=3)"
    for kwargs, message in ((dict(fusion="max"), "--fusion: expected one of rrf, interpolation"),
                            (dict(alpha=1.5), "--fusion_alpha: the dense weight must be between 0 and 1"),
                            (dict(rrf_k=0), "--fusion_rrf_k: must be > 0"), (dict(depth=0), "--fusion_depth")):
        with pytest.raises(UserError, match=message):
            HybridRetriever(dense, bm25, **kwargs)


def test_cli_hybrid_run_is_the_fusion_of_the_dense_and_bm25_runs(tmp_path, small_scifact, tiny_bert_dir):
    """eval_retrieval --retrieval_method hybrid equals fusing its own dense and BM25 run files (rank_bm25: no JVM)."""
    from evaluation.eval_retrieval import main as eval_main
    from llm_embedder.retrieval.metrics import read_trec_run

    eval_data, corpus = small_scifact
    common = ["--eval_data", str(eval_data), "--corpus", str(corpus), "--key_template", "{title} {text}",
              "--metrics", "ndcg", "--cutoffs", "10", "--hits", "10", "--output_dir", str(tmp_path),
              "--cache_dir", str(tmp_path / "cache"), "--bm25_backend", "rank_bm25"]
    dense = ["--query_encoder", str(tiny_bert_dir), "--key_max_length", "64"]
    for argv in (dense + ["--retrieval_method", "dense", "--save_name", "d"], ["--retrieval_method", "bm25"],
                 dense + ["--retrieval_method", "hybrid", "--fusion_depth", "20", "--save_name", "h"]):
        assert eval_main(common + argv) == 0
    assert eval_main(common + ["--retrieval_method", "dense", "--save_name", "d20", "--hits", "20"] + dense) == 0
    assert eval_main(common + ["--retrieval_method", "bm25", "--save_name", "b20", "--hits", "20"]) == 0
    ids = [json.loads(line)["_id"] for line in corpus.read_text().splitlines()]
    row = {d: i for i, d in enumerate(ids)}

    def as_arrays(run, qids):
        out = []
        for q in qids:
            docs = sorted(run[q].items(), key=lambda kv: -kv[1])
            out.append(([s for _, s in docs] + [NEG] * 20)[:20]), out.append(([row[d] for d, _ in docs] + [-1] * 20)[:20])
        return np.array(out[0::2]), np.array(out[1::2])

    d20, b20 = read_trec_run(tmp_path / "eval.run.d20.trec"), read_trec_run(tmp_path / "eval.run.b20.trec")
    qids = sorted(d20)
    scores, rows = fuse(as_arrays(d20, qids), as_arrays(b20, qids), hits=10)
    hybrid = read_trec_run(tmp_path / "eval.run.h.trec")
    for q, fused in zip(qids, rows):
        got = sorted(hybrid[q].items(), key=lambda kv: (-kv[1], row[kv[0]]))
        assert [row[d] for d, _ in got] == fused[fused >= 0].tolist()
    summary = json.loads((tmp_path / "eval.eval.h.json").read_text())
    assert "hybrid(rrf k=60, depth=20)" in summary["corpus"] and summary["args"]["fusion"] == "rrf"
    dense_rows = {q: sorted(d20[q], key=lambda d: -d20[q][d])[:10] for q in qids}
    assert any(sorted(hybrid[q], key=lambda d: -hybrid[q][d]) != dense_rows[q] for q in qids)  # fusion changed something
