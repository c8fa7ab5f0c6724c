"""Retrieval evaluation of schema records: evaluate_dense / evaluate_groups / evaluate_bm25 and the CLI."""
from __future__ import annotations

import numpy as np
import pytest
from retrieval_helpers import BagOfWordsEncoder, one_torch_thread, small_scifact  # noqa: F401  (fixtures)

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
    for qid, row in zip(["a", "2", "c"], sims):  # query_id, else the record's 1-based position (its line)
        top = np.argsort(-row, kind="stable")[:5]
        run[qid] = {f"doc{j}": float(row[j]) for j in top}
    qrels = {"a": {"doc0": 1}, "2": {"doc4": 1}, "c": {"doc5": 1, "doc9": 1}}
    expected = evaluate_run(run, qrels, ["ndcg", "recall", "mrr"], [1, 3])
    assert result["metrics"] == pytest.approx(expected)
    assert result["corpus"] == "full(N=10)" and result["num_queries"] == 3
    assert set(result["run"]) == {"a", "2", "c"}
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
    assert result["per_query"]["1"]["mrr@1"] == 1.0  # query ids default to the 1-based position
    assert result["per_query"]["2"]["mrr@1"] == 0.0 and result["per_query"]["2"]["recall@3"] == 1.0
    assert set(result["run"]["2"]) == {"2:0", "2:1", "2:2"}
    with pytest.raises(UserError, match="need --corpus"):
        evaluate_groups(BagOfWordsEncoder(), records, None, ["mrr"], [1], show_progress=False)


# ---- python -m evaluation.eval_retrieval ----

import json  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

from llm_embedder.retrieval.eval_cli import main as eval_main  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _fail(capsys, argv, match, lines=1):
    """The CLI exits 2 with ``lines`` error lines (file checks list every bad row), no traceback."""
    with pytest.raises(SystemExit) as exit_info:
        eval_main(argv)
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == lines and err.startswith("error: "), err
    assert match in err.splitlines()[0] and "Traceback" not in err, err


def test_argument_errors_are_one_line_before_any_model_loads(tmp_path, small_scifact, capsys, monkeypatch):
    from llm_embedder.modeling import encoder as encoder_module

    monkeypatch.setattr(encoder_module.DenseEncoder, "from_pretrained", lambda *a, **k: pytest.fail("model loaded"))
    eval_data, corpus = small_scifact
    base = ["--eval_data", str(eval_data), "--corpus", str(corpus), "--key_template", "{title} {text}"]
    _fail(capsys, base + ["--metrics", "ndcg", "ndgc"], "--metrics: unknown metric 'ndgc'")
    _fail(capsys, base + ["--cutoffs", "10", "300"], "--hits: 200 is below the largest cutoff 300")
    _fail(capsys, ["--eval_data", str(tmp_path / "nope.json"), "--corpus", str(corpus)], "nope.json: file not found")
    _fail(capsys, base[:4] + ["--key_template", "{title} {abstract}"], "corpus.jsonl:1: abstract: field needed by --key_template",
          lines=48)  # one per corpus row
    bad = tmp_path / "bad.json"
    bad.write_text('{"query": "q", "pos_index": [1]}\n{"query": "q2", "pos_index": [48]}\n')
    _fail(capsys, ["--eval_data", str(bad), *base[2:]], "bad.json:2: pos_index:")
    _fail(capsys, base + ["--metrics", "nq"], "answers: --metrics nq needs answer strings")
    _fail(capsys, base + ["--metrics", "collate_neg", "--max_neg_num", "300"], "--hits: 200 retrieved keys cannot give")


def test_dense_run_writes_run_file_per_query_metrics_and_summary(tmp_path, small_scifact, tiny_bert_dir):
    import pytrec_eval

    eval_data, corpus = small_scifact
    out = tmp_path / "out"
    assert eval_main(["--eval_data", str(eval_data), "--corpus", str(corpus), "--key_template", "{title} {text}",
                      "--query_encoder", str(tiny_bert_dir), "--key_max_length", "64", "--add_instruction",
                      "--metrics", "ndcg", "recall", "mrr", "--cutoffs", "1", "10", "--hits", "20",
                      "--save_name", "tiny", "--output_dir", str(out), "--cache_dir", str(tmp_path / "cache")]) == 0
    summary = json.loads((out / "eval.eval.tiny.json").read_text())
    assert summary["corpus"] == "full(N=48)" and summary["num_queries"] == 6
    from llm_embedder.tasks import get_task

    assert summary["instructions"] == [get_task("qa").query_instruction, get_task("qa").key_instruction]
    assert {"torch", "faiss-cpu", "python"} <= set(summary["versions"]) and summary["args"]["hits"] == 20
    per_query = [json.loads(line) for line in (out / "eval.metrics.tiny.jsonl").read_text().splitlines()]
    assert [p["query_id"] for p in per_query] == ["q0", "q5", "q10", "q15", "q20", "q25"]
    with open(out / "eval.run.tiny.trec") as f:
        run = pytrec_eval.parse_run(f)
    ids = [json.loads(line)["_id"] for line in corpus.read_text().splitlines()]
    qrels = {f"q{i}": {ids[i]: 1} for i in range(0, 30, 5)}
    qrels["q5"][ids[47]] = 1
    oracle = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recall.10"}).evaluate(run)
    assert summary["metrics"]["ndcg@10"] == pytest.approx(np.mean([oracle[q]["ndcg_cut_10"] for q in qrels]), abs=1e-9)
    assert summary["metrics"]["recall@10"] == pytest.approx(np.mean([oracle[q]["recall_10"] for q in qrels]), abs=1e-9)
    assert all(len(docs) == 20 for docs in run.values())


def test_instructions_and_pooling_come_from_a_saved_model(tmp_path, small_scifact, tiny_bert_dir):
    from llm_embedder.modeling.encoder import DenseEncoder

    saved = tmp_path / "saved"
    DenseEncoder.from_pretrained(tiny_bert_dir, pooling_method="cls", key_max_length=64).save_pretrained(
        saved, instructions={"qa": ("Query: ", "Passage: ")})
    eval_data, corpus = small_scifact
    assert eval_main(["--eval_data", str(eval_data), "--corpus", str(corpus), "--query_encoder", str(saved),
                      "--add_instruction", "--metrics", "recall", "--cutoffs", "5", "--hits", "5",
                      "--cache_dir", str(tmp_path / "cache")]) == 0
    summary = json.loads((eval_data.parent / "eval.eval.saved.json").read_text())
    assert summary["instructions"] == ["Query: ", "Passage: "]
    meta = next((tmp_path / "cache" / "embeddings").glob("*/meta.json"))
    settings = json.loads(meta.read_text())["settings"]
    assert settings["pooling_method"] == "cls" and settings["key_max_length"] == 64


@pytest.mark.slow
@pytest.mark.distributed
def test_torchrun_ranks_encode_shards_and_rank0_writes(tmp_path, small_scifact, tiny_bert_dir):
    eval_data, corpus = small_scifact
    args = ["--eval_data", str(eval_data), "--corpus", str(corpus), "--query_encoder", str(tiny_bert_dir),
            "--key_max_length", "64", "--metrics", "ndcg", "recall", "--cutoffs", "10", "--hits", "10"]
    env = dict(os.environ, LLM_EMBEDDER_CACHE=str(tmp_path / "cache2"), OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(REPO / "src"), str(REPO)]))
    # 48 rows in 256-row chunks would leave rank 1 idle: the corpus is padded to 600 rows (3 chunks)
    rows = corpus.read_text().splitlines()
    big = tmp_path / "big.jsonl"
    big.write_text("\n".join(rows + [rows[i % 48] for i in range(552)]) + "\n")
    args[3] = str(big)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531",
                           "-m", "evaluation.eval_retrieval", *args, "--output_dir", str(tmp_path / "ddp"), "--save_name", "t"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "shard 0 of 2: key rows 0..255 of 600" in proc.stderr and "shard 1 of 2: key rows 256..599 of 600" in proc.stderr
    assert eval_main([*args, "--output_dir", str(tmp_path / "single"), "--save_name", "t",
                      "--cache_dir", str(tmp_path / "cache1")]) == 0
    ddp = json.loads((tmp_path / "ddp" / "eval.eval.t.json").read_text())["metrics"]
    single = json.loads((tmp_path / "single" / "eval.eval.t.json").read_text())["metrics"]
    assert ddp == pytest.approx(single, abs=1e-6)
    assert (tmp_path / "ddp" / "eval.run.t.trec").read_text().count("\n") == 60
