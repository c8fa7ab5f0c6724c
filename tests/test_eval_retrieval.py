"""Retrieval evaluation of schema records: evaluate_dense / evaluate_groups / evaluate_bm25 and the CLI."""
from __future__ import annotations

import numpy as np
import pytest
from retrieval_helpers import BagOfWordsEncoder

from llm_embedder.corpus import Corpus
from llm_embedder.errors import UserError
from llm_embedder.retrieval.evaluate import evaluate_dense, evaluate_groups, positive_rows, subsample_rows
from llm_embedder.retrieval.metrics import evaluate_run
from llm_embedder.schema import RecordFile

TEXTS = [
    "cats purr and sleep all day", "dogs bark at the mailman", "the stock market fell sharply",
    "bananas are rich in potassium", "paris is the capital of france", "the moon orbits the earth",
    "python is a programming language", "rain falls from clouds", "violins have four strings",
    "glaciers are melting quickly",
]
CORPUS = Corpus.from_texts(TEXTS, ids=[f"doc{i}" for i in range(len(TEXTS))])
RECORDS = [
    {"query": "why do cats purr", "pos_index": [0], "query_id": "a", "answers": ["purr"]},
    {"query": "what is the capital of france", "pos": ["paris is the capital of france"], "answers": ["Paris"]},
    {"query": "what orbits the earth", "pos_index": [5, 9], "query_id": "c", "answers": ["moon"]},
]


def test_evaluate_dense_equals_a_plain_numpy_evaluation():
    enc = BagOfWordsEncoder()
    result = evaluate_dense(enc, RECORDS, CORPUS, ["ndcg", "recall", "mrr"], [1, 3], hits=5, show_progress=False)
    keys = enc.encode(TEXTS)
    queries = enc.encode([r["query"] for r in RECORDS])
    sims = queries @ keys.T
    run = {}
    for qid, row in zip(["a", "1", "c"], sims):  # query_id, else the record's position
        top = np.argsort(-row, kind="stable")[:5]
        run[qid] = {f"doc{j}": float(row[j]) for j in top}
    qrels = {"a": {"doc0": 1}, "1": {"doc4": 1}, "c": {"doc5": 1, "doc9": 1}}
    expected = evaluate_run(run, qrels, ["ndcg", "recall", "mrr"], [1, 3])
    assert result["metrics"] == pytest.approx(expected)
    assert result["corpus"] == "full(N=10)" and result["num_queries"] == 3
    assert set(result["run"]) == {"a", "1", "c"}
    assert result["rows"].shape == (3, 5) and result["rows"][1, 0] == 4
    assert result["metrics"]["recall@1"] == pytest.approx((1 + 1 + 0.5) / 3)


def test_nq_answer_recall_through_evaluate_dense():
    result = evaluate_dense(BagOfWordsEncoder(), RECORDS, CORPUS, ["nq"], [1], hits=3, show_progress=False)
    assert result["metrics"] == {"nq@1": pytest.approx(1.0)}
    no_answers = [dict(r) for r in RECORDS]
    del no_answers[2]["answers"]
    with pytest.raises(UserError, match="record 3: answers"):
        evaluate_dense(BagOfWordsEncoder(), no_answers, CORPUS, ["nq"], [1], hits=3, show_progress=False)


def test_subsample_keeps_every_positive_and_is_seeded():
    rows = subsample_rows(1000, [5, 900, 5], 20, seed=3)
    assert {5, 900} <= set(rows.tolist()) and len(rows) == 22
    np.testing.assert_array_equal(rows, subsample_rows(1000, [5, 900], 20, seed=3))
    assert not np.array_equal(rows, subsample_rows(1000, [5, 900], 20, seed=4))
    assert len(subsample_rows(10, [1], 50, seed=0)) == 10  # asking for more than exists keeps all


def test_evaluate_dense_on_a_subsample_reports_global_rows_and_its_label():
    enc = BagOfWordsEncoder()
    result = evaluate_dense(enc, RECORDS, CORPUS, ["recall"], [3], corpus_subsample=2, seed=1, hits=3,
                            show_progress=False)
    assert result["corpus"].startswith("subsample(N=2, seed=1")
    kept = set(subsample_rows(10, [0, 4, 5, 9], 2, seed=1).tolist())
    returned = {int(r) for r in result["rows"].ravel() if r >= 0}
    assert returned <= kept and enc.encoded == len(kept) + len(RECORDS)
    assert all(d in {f"doc{r}" for r in kept} for docs in result["run"].values() for d in docs)


def test_positives_from_texts_and_errors_name_the_line(tmp_path):
    assert positive_rows(RECORDS, CORPUS) == [[0], [4], [5, 9]]
    rf = RecordFile(tmp_path / "eval.json", [{"query": "q", "pos": ["not in the corpus"]}], [7])
    with pytest.raises(UserError, match=r"eval\.json:7: pos: text 'not in the corpus' is not a row"):
        positive_rows(rf, CORPUS)
    rf = RecordFile(tmp_path / "eval.json", [{"query": "q", "pos_index": [10]}], [2])
    with pytest.raises(UserError, match=r"eval\.json:2: pos_index: row 10 is beyond the corpus"):
        evaluate_dense(BagOfWordsEncoder(), rf, CORPUS, ["ndcg"], [1], hits=1, show_progress=False)
    with pytest.raises(UserError, match="--hits"):
        evaluate_dense(BagOfWordsEncoder(), RECORDS, CORPUS, ["ndcg"], [10], hits=5, show_progress=False)
    dup = [dict(RECORDS[0]), dict(RECORDS[0])]
    with pytest.raises(UserError, match="query_id: 'a' repeats"):
        evaluate_dense(BagOfWordsEncoder(), dup, CORPUS, ["ndcg"], [1], hits=1, show_progress=False)


def test_evaluate_groups_ranks_each_query_within_its_own_candidates():
    records = [
        {"query": "cats purr", "pos": ["cats purr and sleep all day"], "neg": ["dogs bark at the mailman", "rain falls"]},
        {"query": "moon earth", "pos_index": [3], "neg_index": [5, 0]},  # the positive is not the best match
    ]
    result = evaluate_groups(BagOfWordsEncoder(), records, CORPUS, ["mrr", "recall"], [1, 3], show_progress=False)
    assert result["corpus"].startswith("groups(own pos+neg, 3-3 keys")
    assert result["per_query"]["0"]["mrr@1"] == 1.0
    assert result["per_query"]["1"]["mrr@1"] == 0.0 and result["per_query"]["1"]["recall@3"] == 1.0
    assert set(result["run"]["1"]) == {"1:0", "1:1", "1:2"}
    with pytest.raises(UserError, match="need --corpus"):
        evaluate_groups(BagOfWordsEncoder(), records, None, ["mrr"], [1], show_progress=False)
