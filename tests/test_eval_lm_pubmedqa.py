"""eval_lm's PubMedQA modes: ``--task qa`` (answer NLL given retrieved abstracts) and ``--task icl`` (yes/no/maybe
accuracy given retrieved train demonstrations).

A tiny random Llama with SmolLM2's tokenizer stands in for the LM and a PubMedQA-shaped toy set for the data;
one slow test runs the real SmolLM2 on two real PubMedQA test questions.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from llm_embedder.lrlm import answer_tasks, metrics
from test_lm_fixtures import one_torch_thread, reference_score, tiny_lm, tiny_lm_dir, write_jsonl  # noqa: F401

DOCS = [
    ("d0", "Aspirin lowers the risk of a second heart attack in adults with coronary disease."),
    ("d1", "Vitamin D supplements did not change bone density in healthy older women."),
    ("d2", "Night shift work was linked to poorer sleep quality among hospital nurses."),
    ("d3", "Early physiotherapy shortened hospital stays after knee replacement surgery."),
    ("d4", "Smoking cessation programmes at work improved quit rates after one year."),
    ("d5", "Coffee intake showed no clear association with blood pressure in young adults."),
]
TEST = [  # (query id, question, gold doc row, long answer, decision)
    ("t0", "Does aspirin prevent a second heart attack?", 0, "Aspirin reduced repeat heart attacks.", "yes"),
    ("t1", "Do vitamin D supplements change bone density?", 1, "Bone density did not change.", "no"),
    ("t2", "Does night shift work affect the sleep of nurses?", 2, "Sleep was poorer on night shifts.", "maybe"),
]
TRAIN = [
    ("r0", "Does early physiotherapy shorten hospital stays?", 3, "Stays were shorter.", "yes"),
    ("r1", "Do workplace programmes help smokers quit?", 4, "Quit rates improved.", "yes"),
    ("r2", "Is coffee associated with blood pressure?", 5, "No clear association.", "no"),
    ("r3", "Does aspirin help after a heart attack?", 0, "It helped.", "maybe"),
]


def _records(rows):
    return [{"query": q, "query_id": qid, "pos_index": [gold], "answers": [a], "task": "qa"} for qid, q, gold, a, _ in rows]


@pytest.fixture(scope="module")
def pmqa(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("pmqa")
    write_jsonl(d / "corpus.jsonl", [{"_id": i, "title": "", "text": t} for i, t in DOCS])
    write_jsonl(d / "test.json", _records(TEST))
    write_jsonl(d / "train.json", _records(TRAIN))
    write_jsonl(d / "queries.jsonl", [{"_id": qid, "text": q, "answers": [a], "final_decision": lab}
                                      for qid, q, _, a, lab in TEST + TRAIN])
    return d


def _eval(argv):
    from llm_embedder.lrlm.eval_cli import main

    return main(argv)


def _read(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def _qa(pmqa, lm, out, *extra):
    return _eval(["--task", "qa", "--eval_data", str(pmqa / "test.json"), "--corpus", str(pmqa / "corpus.jsonl"),
                  "--lm", str(lm), "--output_dir", str(out), "--bm25_backend", "bm25s", *extra])


def _icl(pmqa, lm, out, *extra):
    return _eval(["--task", "icl", "--eval_data", str(pmqa / "test.json"), "--train_data", str(pmqa / "train.json"),
                  "--queries", str(pmqa / "queries.jsonl"), "--lm", str(lm), "--output_dir", str(out),
                  "--bm25_backend", "bm25s", *extra])


def _plain_nll(tokenizer, model, prompt: str, target: str) -> float:
    """-mean log p(target | prompt), tokenised here on its own (no special tokens; SmolLM2 adds none)."""
    p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    t = tokenizer(target, add_special_tokens=False)["input_ids"]
    return -reference_score(model, p, t)


def test_qa_none_is_the_plain_answer_nll_given_the_question(pmqa, tiny_lm, tiny_lm_dir, tmp_path):
    assert _qa(pmqa, tiny_lm_dir, tmp_path, "--retrieval_method", "none", "oracle", "--k", "1") == 0
    none = _read(tmp_path / "none.k1.jsonl")
    expected = [_plain_nll(tiny_lm.tokenizer, tiny_lm.model, f"Knowledge: \nQuestion: {q}\nAnswer:", f" {a}")
                for _, q, _, a, _ in TEST]
    assert [r["nll"] for r in none] == pytest.approx(expected, abs=1e-4)
    assert all(r["keys"] == [] for r in none)
    # guard: the key text reaches the LM (with the gold abstract the same answer scores differently)
    with_gold = [_plain_nll(tiny_lm.tokenizer, tiny_lm.model, f"Knowledge: {DOCS[g][1]}\nQuestion: {q}\nAnswer:", f" {a}")
                 for _, q, g, a, _ in TEST]
    assert all(abs(x - y) > 1e-3 for x, y in zip(expected, with_gold))
    oracle = _read(tmp_path / "oracle.k1.jsonl")
    assert [r["nll"] for r in oracle] == pytest.approx(with_gold, abs=1e-4)
    summary = json.loads((tmp_path / "summary.k1.json").read_text())
    assert summary["task"] == "qa"
    assert summary["rows"]["none"]["ppl"] == pytest.approx(math.exp(sum(expected) / 3), rel=1e-4)
    tokens = [len(tiny_lm.tokenizer(f" {a}", add_special_tokens=False)["input_ids"]) for _, _, _, a, _ in TEST]
    assert [r["answer_tokens"] for r in none] == [[n] for n in tokens]
    assert [r["nll_sum"] for r in none] == pytest.approx([x * n for x, n in zip(expected, tokens)], abs=1e-3)


def test_qa_oracle_is_the_gold_abstract_and_retrievers_rank_the_whole_corpus(pmqa, tiny_lm_dir, tiny_bert_dir, tmp_path):
    assert _qa(pmqa, tiny_lm_dir, tmp_path / "k1", "--retrieval_method", "oracle", "bm25", "--k", "1",
               "--compare", "oracle", "bm25") == 0
    oracle = _read(tmp_path / "k1" / "oracle.k1.jsonl")
    assert [r["keys"] for r in oracle] == [[g] for _, _, g, _, _ in TEST]
    assert [r["key_ids"] for r in oracle] == [[DOCS[g][0]] for _, _, g, _, _ in TEST]
    assert all(r["gold_retrieved"] for r in oracle)
    bm25 = _read(tmp_path / "k1" / "bm25.k1.jsonl")
    assert [r["keys"] for r in bm25] == [[0], [1], [2]]  # the questions share their words with their abstracts
    assert [r["nll"] for r in bm25] == [r["nll"] for r in oracle]  # same keys, same LM input
    summary = json.loads((tmp_path / "k1" / "summary.k1.json").read_text())
    assert summary["compare"]["oracle vs bm25"]["mean_gain_nats"] == 0.0
    assert _qa(pmqa, tiny_lm_dir, tmp_path / "k2", "--retrieval_method", "bm25", "random", "dense",
               "--model_name_or_path", str(tiny_bert_dir), "--labels", "dense:tiny", "--k", "2") == 0
    for name in ("random", "dense_tiny"):
        rows = _read(tmp_path / "k2" / f"{name}.k2.jsonl")
        assert all(len(r["keys"]) == 2 and len(set(r["keys"])) == 2 for r in rows), name
    bm25 = _read(tmp_path / "k2" / "bm25.k2.jsonl")
    assert [r["keys"][0] for r in bm25] == [0, 1, 2]
    short = sum(len(r["keys"]) < 2 for r in bm25)  # BM25 returns only abstracts sharing a word with the question
    assert json.loads((tmp_path / "k2" / "summary.k2.json").read_text())["fewer_than_k"]["bm25"] == short


def test_icl_builds_the_prompt_it_says(pmqa, tiny_lm):
    data = answer_tasks.load("icl", pmqa / "test.json", train_data=pmqa / "train.json", queries=pmqa / "queries.jsonl")
    assert [r["label"] for r in data.records] == ["yes", "no", "maybe"]
    items, _ = answer_tasks.plan(data, [[2, 0], [], [1]], tiny_lm.tokenizer, 1024, 256)
    decode = tiny_lm.tokenizer.decode
    assert decode(items[0][0][0]) == (f"{TRAIN[2][1]}\nno\n\n{TRAIN[0][1]}\nyes\n\n{TEST[0][1]}\n")
    assert [decode(t) for _, t in items[0]] == ["yes", "no", "maybe"]
    assert len({tuple(p) for p, _ in items[0]}) == 1  # the three labels share one prompt
    assert decode(items[1][0][0]) == f"\n\n{TEST[1][1]}\n"  # none: the template with an empty key
    assert decode(items[2][0][0]) == f"{TRAIN[1][1]}\nyes\n\n{TEST[2][1]}\n"
    # a question never demonstrates itself when the pool holds it (evaluating on the train file)
    on_train = answer_tasks.load("icl", pmqa / "train.json", train_data=pmqa / "train.json", queries=pmqa / "queries.jsonl")
    assert on_train.exclude == [{0}, {1}, {2}, {3}]


def test_icl_prediction_accuracy_and_paired_comparison_on_fixed_scores():
    assert answer_tasks.icl_prediction({"yes": -0.5, "no": -1.0, "maybe": -3.0}, "yes") == ("yes", True, 0.5)
    assert answer_tasks.icl_prediction({"yes": -2.0, "no": -0.25, "maybe": -3.0}, "maybe") == ("no", False, 3.0)
    assert answer_tasks.icl_prediction({"yes": -1.0, "no": -1.0, "maybe": -1.0}, "no")[0] == "yes"  # ties: first label
    a = [{"query_id": i, "nll": n, "correct": c} for i, (n, c) in enumerate([(0.5, True), (1.0, True), (2.0, False), (0.1, True)])]
    b = [{"query_id": i, "nll": n, "correct": c} for i, (n, c) in enumerate([(1.5, False), (1.0, True), (2.5, False), (0.2, False)])]
    s = metrics.summarise_targets(a)
    assert s["accuracy"] == 0.75 and s["mean_nll"] == pytest.approx(0.9)
    assert s["accuracy_ci95"][0] <= 0.75 <= s["accuracy_ci95"][1]
    c = metrics.compare_targets(a, b)
    assert c["accuracy"]["mean_gain"] == pytest.approx(0.5)  # accuracy(a) - accuracy(b)
    assert c["accuracy"]["wins"] == 2 and c["accuracy"]["losses"] == 0
    assert c["mean_gain_nats"] == pytest.approx(0.4)  # NLL(b) - NLL(a): (1.0 + 0 + 0.5 + 0.1) / 4
    with pytest.raises(ValueError, match="different targets"):
        metrics.compare_targets(a, b[::-1])


def test_icl_rows_follow_the_label_scores(pmqa, tiny_lm, tiny_lm_dir, tmp_path):
    assert _icl(pmqa, tiny_lm_dir, tmp_path, "--retrieval_method", "none", "bm25", "random", "--k", "2",
                "--compare", "random", "none") == 0
    data = answer_tasks.load("icl", pmqa / "test.json", train_data=pmqa / "train.json", queries=pmqa / "queries.jsonl")
    rows = _read(tmp_path / "random.k2.jsonl")
    items, _ = answer_tasks.plan(data, [r["keys"] for r in rows], tiny_lm.tokenizer, 1024, 256)
    for row, seqs, rec in zip(rows, items, data.records):
        assert len(row["keys"]) == 2 and row["label"] == rec["label"]
        ref = {lab: len(t) * reference_score(tiny_lm.model, p, t) for lab, (p, t) in zip(answer_tasks.ICL_LABELS, seqs)}
        assert row["label_logprobs"] == pytest.approx(ref, abs=1e-4)
        assert row["pred"] == max(ref, key=ref.get) and row["correct"] == (row["pred"] == rec["label"])
        assert row["nll"] == pytest.approx(-ref[rec["label"]], abs=1e-4)
    summary = json.loads((tmp_path / "summary.k2.json").read_text())
    assert summary["rows"]["random"]["accuracy"] == pytest.approx(sum(r["correct"] for r in rows) / 3)
    none = _read(tmp_path / "none.k2.jsonl")
    assert summary["compare"]["random vs none"]["accuracy"]["mean_gain"] == pytest.approx(
        (sum(r["correct"] for r in rows) - sum(r["correct"] for r in none)) / 3)


class _Killed(Exception):
    pass


def test_resume_after_a_kill_and_a_larger_max_queries_reuse_the_scores(pmqa, tiny_lm_dir, tmp_path, monkeypatch):
    import llm_embedder.lrlm.score as score

    args = ["--retrieval_method", "none", "random", "--k", "1", "--token_budget", "64", "--max_length", "64"]  # one target a pass
    assert _qa(pmqa, tiny_lm_dir, tmp_path / "straight", *args) == 0
    real, calls = score.token_logprobs, []

    def dying(scorer, seqs):
        calls.append(len(seqs))
        if len(calls) > 2:
            raise _Killed()
        return real(scorer, seqs)

    monkeypatch.setattr(score, "token_logprobs", dying)
    with pytest.raises(_Killed):
        _qa(pmqa, tiny_lm_dir, tmp_path / "resumed", *args)
    assert not (tmp_path / "resumed" / "summary.k1.json").exists()
    before_kill = sum(calls[:2])
    monkeypatch.setattr(score, "token_logprobs", lambda scorer, seqs: calls.append(len(seqs)) or real(scorer, seqs))
    calls.clear()
    assert _qa(pmqa, tiny_lm_dir, tmp_path / "resumed", *args) == 0
    assert before_kill > 0 and sum(calls) == 6 - before_kill  # 3 targets x 2 rows; what was scored is not redone
    for name in ("none", "random"):
        assert (tmp_path / "resumed" / f"{name}.k1.jsonl").read_text() == (tmp_path / "straight" / f"{name}.k1.jsonl").read_text()
    # a run over fewer targets, then over all: the first targets are not scored again
    calls.clear()
    assert _qa(pmqa, tiny_lm_dir, tmp_path / "grow", *args, "--max_queries", "2") == 0
    assert _qa(pmqa, tiny_lm_dir, tmp_path / "grow", *args) == 0
    assert sum(calls) == 6
    assert (tmp_path / "grow" / "none.k1.jsonl").read_text() == (tmp_path / "straight" / "none.k1.jsonl").read_text()

def test_compare_with_a_row_of_other_targets_is_one_line(pmqa, tiny_lm_dir, tmp_path, capsys):
    assert _qa(pmqa, tiny_lm_dir, tmp_path, "--retrieval_method", "random") == 0
    capsys.readouterr()
    with pytest.raises(SystemExit):
        _qa(pmqa, tiny_lm_dir, tmp_path, "--retrieval_method", "none", "--max_queries", "2", "--compare", "none", "random")
    err = [line for line in capsys.readouterr().err.strip().splitlines() if line.startswith("error:")]  # after the bars
    assert len(err) == 1 and "--compare none random: the two rows cover different targets" in err[0]


def test_bad_input_is_one_clear_line_before_any_model_loads(pmqa, tiny_lm_dir, tmp_path, monkeypatch, capsys):
    import llm_embedder.lm.loading as loading

    monkeypatch.setattr(loading, "load_model", lambda *a, **k: (_ for _ in ()).throw(AssertionError("a model was loaded")))
    no_labels = write_jsonl(tmp_path / "nolabels.jsonl", [{"_id": "x", "text": "q"}])
    lrlm_out = tmp_path / "lrlm_out"
    lrlm_out.mkdir()
    (lrlm_out / "summary.k1.json").write_text(json.dumps({"rows": {}, "compare": {}}))
    out = ["--output_dir", str(tmp_path / "o")]
    cases = [
        (["--task", "mlm", "--eval_data", "x", "--lm", str(tiny_lm_dir), *out], "invalid choice: 'mlm'"),
        (["--task", "qa", "--eval_data", str(pmqa / "test.json"), "--lm", str(tiny_lm_dir), *out], "--task qa needs --corpus"),
        (["--task", "qa", "--eval_data", str(pmqa / "test.json"), "--corpus", str(pmqa / "corpus.jsonl"), "--k", "7",
          "--lm", str(tiny_lm_dir), *out], "--k 7 is larger than the corpus (6 keys)"),
        (["--task", "qa", "--eval_data", str(pmqa / "test.json"), "--corpus", str(pmqa / "corpus.jsonl"), "--k", "2",
          "--retrieval_method", "oracle", "--lm", str(tiny_lm_dir), *out], "has 1 positives (pos_index), fewer than --k 2"),
        (["--task", "icl", "--eval_data", str(pmqa / "test.json"), "--train_data", str(pmqa / "train.json"),
          "--queries", str(pmqa / "queries.jsonl"), "--k", "5", "--lm", str(tiny_lm_dir), *out],
         "--k 5 is larger than the train pool (less the query itself) (4 keys)"),
        (["--task", "icl", "--eval_data", str(pmqa / "test.json"), "--train_data", str(pmqa / "train.json"),
          "--lm", str(tiny_lm_dir), *out], "no decision label for query_id 't0'"),
        (["--task", "icl", "--eval_data", str(pmqa / "test.json"), "--train_data", str(pmqa / "train.json"),
          "--queries", str(no_labels), "--lm", str(tiny_lm_dir), *out], "has no rows with final_decision"),
        (["--task", "icl", "--eval_data", str(pmqa / "test.json"), "--train_data", str(pmqa / "train.json"),
          "--queries", str(pmqa / "queries.jsonl"), "--retrieval_method", "oracle", "--lm", str(tiny_lm_dir), *out],
         "no oracle for --task icl"),
        (["--task", "icl", "--eval_data", str(pmqa / "test.json"), "--lm", str(tiny_lm_dir), *out], "--task icl needs --train_data"),
        (["--task", "qa", "--eval_data", str(pmqa / "test.json"), "--corpus", str(pmqa / "corpus.jsonl"),
          "--retrieval_method", "privileged", "--lm", str(tiny_lm_dir), *out], "privileged: only for --task lrlm"),
        (["--eval_data", str(pmqa / "test.json"), "--corpus", str(pmqa / "corpus.jsonl"), "--lm", str(tiny_lm_dir), *out],
         "--corpus: only used with --task qa or icl"),
        (["--task", "qa", "--eval_data", str(pmqa / "test.json"), "--corpus", str(pmqa / "corpus.jsonl"),
          "--lm", str(tiny_lm_dir), "--output_dir", str(lrlm_out)], "holds --task lrlm results"),
        (["--task", "qa", "--eval_data", str(pmqa / "test.json"), "--corpus", str(pmqa / "corpus.jsonl"),
          "--lm", str(tiny_lm_dir), "--max_length", "4096", *out], "--max_length 4096 is beyond the LM's 2048 positions"),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit) as exc:
            _eval(argv)
        assert exc.value.code == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], (message, err)
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_smollm2_on_pubmedqa_none_is_the_plain_answer_nll_and_the_gold_abstract_helps(tmp_path):
    from llm_embedder.lm.loading import load_lm

    argv = ["--task", "qa", "--eval_data", "llm-embedder:pubmedqa/test.json", "--corpus", "llm-embedder:pubmedqa/corpus.jsonl",
            "--lm", "smollm2", "--retrieval_method", "none", "oracle", "--max_queries", "2", "--output_dir", str(tmp_path),
            "--compare", "oracle", "none"]
    assert _eval(argv) == 0
    lm = load_lm("smollm2")
    records = _read(Path(__file__).resolve().parents[1] / "data" / "pubmedqa" / "test.json")[:2]
    expected = [_plain_nll(lm.tokenizer, lm.model, f"Knowledge: \nQuestion: {r['query']}\nAnswer:", f" {r['answers'][0]}")
                for r in records]
    assert [r["nll"] for r in _read(tmp_path / "none.k1.jsonl")] == pytest.approx(expected, abs=1e-3)
    summary = json.loads((tmp_path / "summary.k1.json").read_text())
    assert summary["compare"]["oracle vs none"]["mean_gain_nats"] > 0  # NLL(none) - NLL(oracle): the abstract helps
