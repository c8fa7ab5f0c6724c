"""Retrieval metrics: hand-computed values, an independent pytrec_eval oracle, answer recall, run files."""
from __future__ import annotations

import math
import random

import pytest

from llm_embedder.errors import UserError
from llm_embedder.retrieval.metrics import (cut_run, evaluate_run, answer_tokens, has_answer, read_trec_run,
                                            write_trec_run)

# q1: relevant d1 (rank 2) and d2 (rank 4); q2: relevant d5 at rank 1; q3: no results at all.
TOY_RUN = {"q1": {"d3": 0.9, "d1": 0.8, "d4": 0.7, "d2": 0.6}, "q2": {"d5": 0.5, "d6": 0.4}}
TOY_QRELS = {"q1": {"d1": 1, "d2": 1}, "q2": {"d5": 1}, "q3": {"d7": 1}}


def test_hand_computed_toy_run():
    got = evaluate_run(TOY_RUN, TOY_QRELS, ["mrr", "recall", "ndcg", "map"], [1, 2, 10])
    ndcg_q1 = (1 / math.log2(3) + 1 / math.log2(5)) / (1 + 1 / math.log2(3))
    expected = {
        "mrr@1": (0 + 1 + 0) / 3, "mrr@2": (0.5 + 1 + 0) / 3, "mrr@10": (0.5 + 1 + 0) / 3,
        "recall@1": (0 + 1 + 0) / 3, "recall@2": (0.5 + 1 + 0) / 3, "recall@10": (1 + 1 + 0) / 3,
        "ndcg@1": (0 + 1 + 0) / 3, "ndcg@10": (ndcg_q1 + 1 + 0) / 3,
        # AP@2 of q1: one hit at rank 2 -> (1/2) / 2 relevant; AP@10: (1/2 + 2/4) / 2
        "map@1": (0 + 1 + 0) / 3, "map@2": (0.25 + 1 + 0) / 3, "map@10": (0.5 + 1 + 0) / 3,
    }
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=1e-4), key
    assert list(got)[:3] == ["mrr@1", "mrr@2", "mrr@10"]  # metrics order, then cutoffs


def test_per_query_values_and_missing_query_counts_as_zero():
    means, per_query = evaluate_run(TOY_RUN, TOY_QRELS, ["mrr"], [10], per_query=True)
    assert per_query == {"q1": {"mrr@10": 0.5}, "q2": {"mrr@10": 1.0}, "q3": {"mrr@10": 0.0}}
    assert means["mrr@10"] == pytest.approx(0.5)
    # a run query without qrels is ignored, not averaged in
    extra = dict(TOY_RUN, stray={"d1": 1.0})
    assert evaluate_run(extra, TOY_QRELS, ["mrr"], [10]) == means


def test_mrr_cut_uses_trec_eval_tie_order():
    # equal scores: trec_eval ranks the larger docid first, so 'b' is rank 1 and relevant 'a' is rank 2
    run, qrels = {"q": {"a": 1.0, "b": 1.0}}, {"q": {"a": 1}}
    assert list(cut_run(run, 1)["q"]) == ["b"]
    got = evaluate_run(run, qrels, ["mrr"], [1, 2])
    assert got == {"mrr@1": 0.0, "mrr@2": 0.5}


def _random_run(seed=0, n_queries=40, n_docs=300, depth=120):
    rng = random.Random(seed)
    run, qrels = {}, {}
    for q in range(n_queries):
        docs = rng.sample(range(n_docs), depth)
        run[f"q{q}"] = {f"d{d}": round(rng.random(), 6) for d in docs}
        rel = rng.sample(docs[:60], rng.randint(1, 3)) + rng.sample(range(n_docs), 1)  # some unretrieved
        qrels[f"q{q}"] = {f"d{d}": rng.choice([1, 2]) for d in rel}
    qrels["q_missing"] = {"d1": 1}  # in qrels, not in the run
    return run, qrels


def test_equals_independent_pytrec_eval_on_the_same_run_file(tmp_path):
    import pytrec_eval

    run, qrels = _random_run()
    path = write_trec_run(tmp_path / "run.trec", run, tag="test")
    assert read_trec_run(path) == run
    ours = evaluate_run(read_trec_run(path), qrels, ["recall", "ndcg", "map", "mrr"], [10, 100])

    with open(path) as f:
        oracle_run = pytrec_eval.parse_run(f)
    measures = {"ndcg_cut.10,100", "recall.10,100", "map_cut.10,100", "recip_rank"}
    scores = pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(oracle_run)
    n = len(qrels)  # trec_eval -c: average over every query with judgements

    def mean(measure):
        return sum(scores.get(q, {}).get(measure, 0.0) for q in qrels) / n

    for k in (10, 100):
        assert ours[f"ndcg@{k}"] == pytest.approx(mean(f"ndcg_cut_{k}"), abs=1e-12)
        assert ours[f"recall@{k}"] == pytest.approx(mean(f"recall_{k}"), abs=1e-12)
        assert ours[f"map@{k}"] == pytest.approx(mean(f"map_cut_{k}"), abs=1e-12)
    # depth 120 > 100 > 10, so mrr@100 may differ from uncut recip_rank; mrr@k by a plain loop instead
    for k in (10, 100):
        total = 0.0
        for q, rel in qrels.items():
            ranked = sorted(run.get(q, {}).items(), key=lambda x: (x[1], x[0]), reverse=True)[:k]
            total += next((1 / r for r, (d, _) in enumerate(ranked, 1) if rel.get(d, 0) > 0), 0.0)
        assert ours[f"mrr@{k}"] == pytest.approx(total / n, abs=1e-12)
    assert evaluate_run(run, qrels, ["mrr"], [1000])["mrr@1000"] == pytest.approx(mean("recip_rank"), abs=1e-12)


def test_unknown_metric_names_the_argument_before_work():
    with pytest.raises(UserError, match="--metrics: unknown metric 'ndgc'"):
        evaluate_run(TOY_RUN, TOY_QRELS, ["ndcg", "ndgc"], [10])
    with pytest.raises(UserError, match="--cutoffs"):
        evaluate_run(TOY_RUN, TOY_QRELS, ["ndcg"], [0])


def test_answer_matching_is_dpr_token_matching():
    """DPR's has_answer (dpr/data/qa_validation.py, match_type "string"): NFD-normalise, split with
    SimpleTokenizer (alphanumeric runs and single other non-space characters), lowercase, match token runs."""
    assert has_answer(["Eiffel Tower"], "Paris: the eiffel tower, built 1889.")
    assert has_answer(["Eiffel Tower"], "Paris/Eiffel Tower")  # punctuation splits words, it is not deleted
    assert has_answer(["Jay-Z"], "Jay-Z's first album")  # the answer's own punctuation is a token to match
    assert has_answer(["O'Neill"], "Eugene O'Neill's plays")
    assert has_answer(["1889"], "built in 1889.")
    assert has_answer(["Beyonce\u0301"], "Beyonc\u00e9 sang")  # unicode NFD on both sides
    assert has_answer(["ENIAC"], "the eniac computer")  # uncased
    assert not has_answer(["Eiffel Tower"], "Eiffel-Tower")  # DPR: "-" is a token between the words
    assert not has_answer(["the Eiffel Tower"], "eiffel tower")  # DPR keeps articles
    assert not has_answer(["tower"], "two towers")  # whole tokens only
    assert not has_answer(["", "   "], "anything")  # an empty answer never matches (DPR's would match all)
    assert has_answer(["no", "1889"], "built in 1889")


def test_answer_tokens_follow_dpr_simple_tokenizer():
    assert answer_tokens("Jay-Z's  1st album!") == ["jay", "-", "z", "'", "s", "1st", "album", "!"]


def test_nq_answer_recall_at_cutoffs():
    texts = {"a": "nothing here", "b": "Paris is the capital", "c": "the capital is Paris", "d": "x"}
    run = {"q1": {"a": 3.0, "b": 2.0, "c": 1.0}, "q2": {"d": 1.0}, "q4": {"b": 1.0}}
    answers = {"q1": ["paris"], "q2": ["paris"], "q3": ["paris"]}  # q3 has no results: 0; q4 not asked
    got, per_q = evaluate_run(run, {}, ["nq"], [1, 2, 5], per_query=True, answers=answers, key_text=texts.__getitem__)
    assert got == {"nq@1": 0.0, "nq@2": pytest.approx(1 / 3), "nq@5": pytest.approx(1 / 3)}
    assert per_q["q1"] == {"nq@1": 0.0, "nq@2": 1.0, "nq@5": 1.0}
    with pytest.raises(UserError, match="nq"):
        evaluate_run(run, {}, ["nq"], [1])


def test_run_file_errors_name_file_and_line(tmp_path):
    path = tmp_path / "bad.trec"
    path.write_text("q1 Q0 d1 1 0.5 tag\nq1 Q0 d2 2 high tag\n")
    with pytest.raises(UserError, match=r"bad\.trec:2: score 'high'"):
        read_trec_run(path)
    path.write_text("q1 d1 0.5\n")
    with pytest.raises(UserError, match=r"bad\.trec:1: expected"):
        read_trec_run(path)
    with pytest.raises(UserError, match="file not found"):
        read_trec_run(tmp_path / "missing.trec")
