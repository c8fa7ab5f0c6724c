"""Hard-negative mining: positives never mined (each filter proven necessary), order and rows preserved."""
from __future__ import annotations

import json

import numpy as np
import pytest
from retrieval_helpers import scifact_records

from llm_embedder.corpus import Corpus, load_corpus
from llm_embedder.errors import UserError
from llm_embedder.retrieval.bm25 import BM25Retriever
from llm_embedder.retrieval.mining import check_mining_args, mine_negatives


@pytest.fixture(scope="module")
def bm25_cache(tmp_path_factory):
    """One BM25 cache for the module: the SciFact index is built once and reused by the CLI test."""
    return tmp_path_factory.mktemp("bm25")


@pytest.fixture(scope="module")
def scifact_train_bm25(data_dir, bm25_cache):
    """40 SciFact train queries, BM25 (bm25s) top 60 over the whole corpus."""
    corpus = load_corpus(data_dir / "scifact" / "corpus.jsonl", key_template="{title} {text}")
    records = scifact_records(data_dir, "train", limit=40)
    retriever = BM25Retriever("bm25s", cache_dir=bm25_cache, show_progress=False).index(corpus)
    _, rows = retriever.search([r["query"] for r in records], 60)
    return records, corpus, rows


def _positives_among_negatives(mined) -> int:
    return sum(len(set(r["neg_index"]) & set(r["pos_index"])) for r in mined)


def test_no_positive_is_mined_and_rows_are_preserved(scifact_train_bm25):
    records, corpus, rows = scifact_train_bm25
    mined, stats = mine_negatives(records, rows, corpus, max_neg_num=20)
    assert len(mined) == len(records) == stats.rows
    assert [r["query_id"] for r in mined] == [r["query_id"] for r in records]
    assert _positives_among_negatives(mined) == 0
    for record, row in zip(mined, rows):
        pos_texts = {corpus.texts[p] for p in record["pos_index"]}
        assert not pos_texts & set(record["neg"])
        assert record["neg"] == [corpus.texts[i] for i in record["neg_index"]]
        # rank order: the negatives are the retrieved rows with the positives taken out, in order
        assert record["neg_index"] == [int(i) for i in row if i >= 0 and i not in record["pos_index"]][:20]
    # one query ("5'-nucleotidase metabolizes 6MP.") shares a term with only 6 documents
    assert stats.rows_with_fewer_negatives == 1 and stats.rows_without_negatives == 0
    assert stats.positives_skipped > 0 and stats.negatives == sum(len(r["neg_index"]) for r in mined)


def test_without_the_filters_bm25_would_mine_positives(scifact_train_bm25):
    """The check above can fail: BM25 ranks most positives in the top 60, so unfiltered mining takes them."""
    records, corpus, rows = scifact_train_bm25
    unfiltered, _ = mine_negatives(records, rows, corpus, max_neg_num=20, exclude_by_index=False, exclude_by_text=False)
    assert _positives_among_negatives(unfiltered) >= len(records) // 2
    by_index, _ = mine_negatives(records, rows, corpus, max_neg_num=20, exclude_by_text=False)
    by_text, _ = mine_negatives(records, rows, corpus, max_neg_num=20, exclude_by_index=False)
    assert _positives_among_negatives(by_index) == 0 and _positives_among_negatives(by_text) == 0


def test_text_filter_catches_a_duplicate_positive_under_another_row():
    corpus = Corpus.from_texts(["the answer doc", "other doc", "The  answer DOC", "third doc"])
    records = [{"query": "q", "pos_index": [0]}, {"query": "q2", "pos": ["third doc"]}]
    rows = np.array([[2, 0, 1, 3], [3, 1, 0, 2]])
    mined, stats = mine_negatives(records, rows, corpus, max_neg_num=5)
    assert mined[0]["neg_index"] == [1, 3]  # row 2 is row 0's text up to case and spacing
    assert mined[1]["neg_index"] == [1, 0, 2]  # pos given as text only
    only_index, _ = mine_negatives(records, rows, corpus, max_neg_num=5, exclude_by_text=False)
    assert only_index[0]["neg_index"] == [2, 1, 3]
    assert stats.positives_skipped == 3


def test_neg_start_answers_teacher_scores_and_empty_rows():
    corpus = Corpus.from_texts([f"doc {i} mentions {'Paris' if i % 3 == 0 else 'Rome'}" for i in range(10)])
    records = [
        {"query": "q0", "pos_index": [9], "answers": ["paris"], "teacher_scores": [1.0, 0.5], "neg_index": [1],
         "extra_field": {"kept": True}},
        {"query": "q1", "pos_index": [0]},
    ]
    rows = np.array([[9, 0, 1, 2, 3, 4, 5, 6], [0, -1, -1, -1, -1, -1, -1, -1]])
    mined, stats = mine_negatives(records, rows, corpus, max_neg_num=3, neg_start=2, filter_answers=True)
    assert mined[0]["neg_index"] == [1, 2, 4]  # ranks 0-1 skipped; 3 and 6 hold the answer "Paris"
    assert "teacher_scores" not in mined[0] and mined[0]["extra_field"] == {"kept": True}
    assert mined[1]["neg_index"] == [] and mined[1]["neg"] == []
    assert stats.teacher_scores_removed == 1 and stats.rows_without_negatives == 1 and stats.answer_keys_skipped == 1
    assert "teacher_scores" in records[0]  # the input records are not modified
    plain, _ = mine_negatives(records, rows, corpus, max_neg_num=3)
    assert plain[0]["neg_index"] == [0, 1, 2]


def test_mining_arguments_are_checked_first():
    with pytest.raises(UserError, match="--hits: 50 .* --max_neg_num 100"):
        check_mining_args(100, 0, 50)
    with pytest.raises(UserError, match="--neg_start"):
        check_mining_args(10, -1, 50)


def test_collate_neg_cli_writes_the_derived_file(tmp_path, data_dir, bm25_cache, scifact_train_bm25):
    from llm_embedder.retrieval.eval_cli import main
    from llm_embedder.schema import read_records

    records = scifact_records(data_dir, "train", limit=15)
    records[3]["teacher_scores"] = [0.2]
    source = tmp_path / "train.json"
    source.write_text("".join(json.dumps(r) + "\n" for r in records))
    corpus = data_dir / "scifact" / "corpus.jsonl"
    assert main(["--eval_data", str(source), "--corpus", str(corpus), "--key_template", "{title} {text}",
                 "--retrieval_method", "bm25", "--bm25_backend", "bm25s", "--metrics", "collate_neg", "recall",
                 "--cutoffs", "10", "--hits", "30", "--max_neg_num", "8", "--save_name", "bm25s",
                 "--cache_dir", str(bm25_cache)]) == 0
    out = tmp_path / "train.neg.bm25s.json"
    mined = read_records(out, purpose="train", corpus_size=5183).records
    assert len(mined) == 15 and [r["query_id"] for r in mined] == [r["query_id"] for r in records]
    assert _positives_among_negatives(mined) == 0 and all(0 < len(r["neg_index"]) <= 8 for r in mined)
    assert "teacher_scores" not in mined[3]
    summary = json.loads((tmp_path / "train.eval.bm25s.json").read_text())
    assert summary["mining"]["rows"] == 15 and summary["mining"]["teacher_scores_removed"] == 1
    assert summary["outputs"]["negatives"] == str(out) and "recall@10" in summary["metrics"]
    # the sidecar names the corpus, so validate checks the mined rows and LM scoring needs no --corpus
    from llm_embedder.schema import meta_path, sidecar_corpus
    from llm_embedder.validate import main as validate_main

    meta = json.loads(meta_path(out).read_text())
    assert sidecar_corpus(out) == corpus.resolve() and meta["corpus_rows"] == 5183
    assert meta["key_template"] == "{title} {text}" and meta["counts"]["negatives"] == summary["mining"]["negatives"]
    assert meta["retrieval"]["retrieval_method"] == "bm25" and meta["mined_from"] == "train.json"
    assert validate_main([str(out), "--purpose", "train"]) == 0


def test_stale_key_aligned_fields_of_the_old_negatives_are_dropped():
    """An icl row carries per-negative scores (neg_score) and some rows neg_scores: both described the old
    negatives, so a mined row must not keep them (they would be misaligned with the new ``neg``)."""
    corpus = Corpus.from_texts(["positive", "a", "b", "c"])
    record = {"query": "q", "pos_index": [0], "pos_scores": [0.9], "neg": ["old"], "neg_index": [3],
              "neg_score": [0.1], "neg_scores": [0.2], "teacher_scores": [1.0, 0.0]}
    (mined,), stats = mine_negatives([record], np.array([[1, 2, 0]]), corpus, max_neg_num=2)
    assert mined["neg_index"] == [1, 2] and mined["neg"] == ["a", "b"]
    assert "neg_score" not in mined and "neg_scores" not in mined and "teacher_scores" not in mined
    assert mined["pos_scores"] == [0.9]  # the positives did not change: their scores stay
    assert stats.stale_fields_removed == {"neg_score": 1, "neg_scores": 1, "teacher_scores": 1}
