"""BEIR conversion: counts and rows checked against the qrels on SciFact/PubMedQA, graded roles on a tiny
hand-made folder, merged sources, errors with file:line, and the shipped files reproduced byte for byte."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from llm_embedder.cli import main as cli_main
from llm_embedder.convert.beir import (BeirFolder, convert_beir_split, main as beir_main, read_qrels,
                                       records_from_beir)
from llm_embedder.errors import UserError
from llm_embedder.schema import meta_path, read_records, sidecar_corpus, write_records
from llm_embedder.validate import main as validate_main


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").split("\n") if line.strip()]


def qrels_by_query(path) -> dict[str, dict[str, int]]:
    """An independent reading of a BEIR qrels TSV (header + query-id, corpus-id, score)."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    assert rows[0] == ["query-id", "corpus-id", "score"]
    out: dict[str, dict[str, int]] = {}
    for qid, did, score in rows[1:]:
        out.setdefault(qid, {})[did] = int(score)
    return out


# ----------------------------------------------------------------------------------------- real datasets

@pytest.fixture(scope="module")
def scifact(data_dir):
    return BeirFolder.load(data_dir / "scifact")


@pytest.mark.parametrize("split, n_queries, n_pairs", [("train", 809, 919), ("test", 300, 339)])
def test_scifact_counts_and_rows_match_the_qrels(scifact, data_dir, split, n_queries, n_pairs):
    records = records_from_beir(scifact, split)
    qrels = qrels_by_query(data_dir / "scifact" / "qrels" / f"{split}.tsv")
    corpus_ids = [row["_id"] for row in read_jsonl(data_dir / "scifact" / "corpus.jsonl")]
    queries = {row["_id"]: row["text"] for row in read_jsonl(data_dir / "scifact" / "queries.jsonl")}
    assert len(records) == len(qrels) == n_queries
    assert sum(len(r["pos_index"]) for r in records) == n_pairs
    assert [r["query_id"] for r in records] == list(qrels)  # qrels order, ids as strings
    for r in records:
        assert {corpus_ids[i] for i in r["pos_index"]} == set(qrels[r["query_id"]])
        assert [corpus_ids[i] for i in r["pos_index"]] == r["pos_ids"]
        assert r["query"] == queries[r["query_id"]]
        assert set(r) == {"query", "query_id", "pos_index", "pos_ids"}


def test_pubmedqa_records_carry_answers(data_dir):
    records = records_from_beir(data_dir / "pubmedqa", "test")
    queries = {row["_id"]: row for row in read_jsonl(data_dir / "pubmedqa" / "queries.jsonl")}
    corpus_ids = [row["_id"] for row in read_jsonl(data_dir / "pubmedqa" / "corpus.jsonl")]
    assert len(records) == 500
    for r in records:
        assert r["answers"] == queries[r["query_id"]]["answers"] and r["answers"]
        assert [corpus_ids[i] for i in r["pos_index"]] == [r["query_id"]]  # question i -> its own abstract


@pytest.mark.parametrize("name", ["scifact", "pubmedqa"])
def test_shipped_files_are_reproduced_byte_for_byte(tmp_path, data_dir, name, capsys):
    source = data_dir / name
    copy = tmp_path / name  # the shipped outputs sit inside the BEIR folder: convert a copy of its inputs
    copy.mkdir()
    for item in ("corpus.jsonl", "queries.jsonl"):
        shutil.copy(source / item, copy / item)
    shutil.copytree(source / "qrels", copy / "qrels")
    assert beir_main([str(copy), "--output_dir", str(copy), "--splits", "train", "test"]) == 0
    for split in ("train", "test"):
        for file in (f"{split}.json", f"{split}.meta.json"):
            assert (copy / file).read_bytes() == (source / file).read_bytes(), f"{name}/{file} differs"
        assert sidecar_corpus(source / f"{split}.json") == source / "corpus.jsonl"
    assert "train: " in capsys.readouterr().out


def test_shipped_files_validate_against_their_corpus(data_dir, capsys):
    files = [str(data_dir / name / f"{split}.json") for name in ("scifact", "pubmedqa") for split in ("train", "test")]
    assert validate_main(files + ["--purpose", "eval"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"OK {files[0]} (809 records, tasks: qa, corpus: {data_dir / 'scifact' / 'corpus.jsonl'} (5183 rows))"
    assert len(out) == 4 and all(line.startswith("OK ") for line in out)


# ------------------------------------------------------------------------------------ a tiny graded folder

def make_beir(root: Path, qrels: dict[str, str], queries=None, corpus=None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    corpus = corpus or [{"_id": f"d{i}", "title": f"T{i}", "text": f"text {i}"} for i in range(6)]
    (root / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in corpus))
    queries = queries or [{"_id": "q1", "text": "first"}, {"_id": "q2", "text": "second"},
                          {"_id": "q3", "text": "third", "answers": "an answer"}, {"_id": "q4", "text": "fourth"}]
    (root / "queries.jsonl").write_text("".join(json.dumps(r) + "\n" for r in queries))
    (root / "qrels").mkdir(exist_ok=True)
    for split, text in qrels.items():
        (root / "qrels" / f"{split}.tsv").write_text(text)
    return root


GRADED = "query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td2\t2\nq1\td3\t0\nq2\td4\t1\nq3\td5\t2\nq3\td0\t0\nq4\td1\t0\n"


@pytest.fixture
def graded(tmp_path):
    return make_beir(tmp_path / "beir", {"train": GRADED, "test": "q2\td0\t1\n"})


def test_min_score_splits_positives_and_orders_them_by_grade(graded):
    result = convert_beir_split(graded, "train")
    assert result.records == [
        {"query": "first", "query_id": "q1", "pos_index": [2, 1], "pos_ids": ["d2", "d1"]},
        {"query": "second", "query_id": "q2", "pos_index": [4], "pos_ids": ["d4"]},
        {"query": "third", "query_id": "q3", "pos_index": [5], "pos_ids": ["d5"], "answers": ["an answer"]},
    ]
    c = result.counts
    assert (c["qrels_pairs"], c["queries_judged"], c["records"], c["positives"], c["negatives"]) == (7, 4, 3, 4, 0)
    assert (c["below_min_score"], c["queries_without_positive"], c["records_with_answers"]) == (3, 1, 1)


def test_max_score_keeps_only_a_grade_band(graded):
    result = convert_beir_split(graded, "train", min_score=1, max_score=1)
    assert [(r["query_id"], r["pos_ids"]) for r in result.records] == [("q1", ["d1"]), ("q2", ["d4"])]
    assert result.counts["above_max_score"] == 2 and result.counts["queries_without_positive"] == 2
    assert [r["pos_ids"] for r in records_from_beir(graded, "train", min_score=2)] == [["d2"], ["d5"]]


def test_graded_negatives_and_teacher_scores(graded):
    records = records_from_beir(graded, "train", below_min_as_negatives=True, graded_as_teacher_scores=True)
    assert records[0] == {"query": "first", "query_id": "q1", "pos_index": [2, 1], "pos_ids": ["d2", "d1"],
                          "neg_index": [3], "neg_ids": ["d3"], "teacher_scores": [2, 1, 0]}
    assert records[1]["teacher_scores"] == [1] and "neg_index" not in records[1]
    assert records[2]["neg_ids"] == ["d0"] and records[2]["teacher_scores"] == [2, 0]
    assert [r["query_id"] for r in records] == ["q1", "q2", "q3"]  # q4 has only a grade-0 judgment
    path = write_records(graded / "out.json", records)
    assert len(read_records(path, purpose="train", corpus_ids=BeirFolder.load(graded).doc_ids)) == 3


def test_qrels_sources_merge_per_query(graded, tmp_path):
    mined = tmp_path / "mined.tsv"
    mined.write_text("q1\td4\t0\nq1\td1\t2\nq2\td5\t0\nq2\td4\t1\n")  # negatives, a conflicting and a repeated grade
    result = convert_beir_split(graded, "train", below_min_as_negatives=True, graded_as_teacher_scores=True,
                                extra_qrels=[mined])
    q1, q2 = result.records[:2]
    assert q1["pos_ids"] == ["d1", "d2"] and q1["teacher_scores"] == [2, 2, 0, 0]  # d1 keeps its higher grade
    assert q1["neg_ids"] == ["d3", "d4"]
    assert q2["pos_ids"] == ["d4"] and q2["neg_ids"] == ["d5"]
    assert (result.counts["conflicting_grades"], result.counts["duplicate_pairs"]) == (1, 1)
    assert result.sources["extra_qrels"] == [mined]


def test_negatives_from_a_schema_file(graded, tmp_path):
    mined = write_records(tmp_path / "train.neg.bm25.json", [
        {"query": "first", "query_id": "q1", "pos_index": [1], "neg_index": [2, 0, 3, 0], "neg_ids": ["d2", "d0", "d3", "d0"]},
        {"query": "second", "query_id": "q2", "pos_index": [4], "neg_index": [5, 4]},
        {"query": "other", "query_id": "q9", "pos_index": [0], "neg_index": [1]},  # not in this split
    ])
    result = convert_beir_split(graded, "train", negatives_from=mined)
    q1, q2 = result.records[:2]
    assert (q1["neg_ids"], q1["neg_index"]) == (["d0", "d3"], [0, 3])  # d2 is a positive, d0 repeats
    assert q2["neg_ids"] == ["d5"]
    c = result.counts
    assert (c["mined_negatives"], c["mined_negatives_dropped_judged_relevant"], c["mined_negatives_repeated"]) == (3, 2, 1)
    with pytest.raises(UserError, match="^--negatives_from: its negatives have no grade"):
        convert_beir_split(graded, "train", negatives_from=mined, graded_as_teacher_scores=True)
    bad = write_records(tmp_path / "bad.json", [{"query": "x", "neg_ids": ["nope"], "neg_index": [0]}])
    with pytest.raises(UserError) as info:
        convert_beir_split(graded, "train", negatives_from=bad)
    assert str(info.value).splitlines() == [f'{bad}:1: neg_ids: item 0 is "nope" but corpus row 0 has id "d0"']
    no_id = write_records(tmp_path / "noid.json", [{"query": "x", "neg_index": [1]}, {"query": "y", "query_id": 3, "neg": ["t"]}])
    with pytest.raises(UserError) as info:
        convert_beir_split(graded, "train", negatives_from=no_id)
    assert str(info.value).splitlines() == [f"{no_id}:1: query_id: needed to match negatives to BEIR queries",
                                            f"{no_id}:2: neg_index: needed (rows of {graded / 'corpus.jsonl'})"]


def test_unknown_ids_are_reported_with_file_and_line(tmp_path):
    root = make_beir(tmp_path / "b", {"train": "query-id\tcorpus-id\tscore\nq1\td1\t1\nqX\td1\t1\nq2\tdX\t1\n"})
    with pytest.raises(UserError) as info:
        records_from_beir(root, "train")
    qrels = root / "qrels" / "train.tsv"
    assert str(info.value).splitlines() == [
        f"{qrels}:3: query-id: 'qX' is not in {root / 'queries.jsonl'}",
        f"{qrels}:4: corpus-id: 'dX' is not in {root / 'corpus.jsonl'}",
    ]


def test_qrels_formats_and_malformed_lines(tmp_path):
    trec = tmp_path / "trec.txt"
    trec.write_text("q1 0 d1 1\nq1 0 d2 0.5\n\nq2 Q0 d3 2.0\n")
    assert [(j.query_id, j.doc_id, j.grade, j.where) for j in read_qrels(trec)] == [
        ("q1", "d1", 1, f"{trec}:1"), ("q1", "d2", 0.5, f"{trec}:2"), ("q2", "d3", 2, f"{trec}:4")]
    bad = tmp_path / "bad.tsv"
    bad.write_text("query-id\tcorpus-id\tscore\nq1\td1\nq1\td2\thigh\nq1\td3\tnan\n\td4\t1\n")
    with pytest.raises(UserError) as info:
        read_qrels(bad)
    assert str(info.value).splitlines() == [
        f"{bad}:2: expected 3 tab-separated columns (query-id corpus-id score) or 4 (TREC: qid 0 docid relevance), got 2",
        f"{bad}:3: score: 'high' is not a number",
        f"{bad}:4: score: 'nan' is not a number",
        f"{bad}:5: query-id: empty",
    ]


def test_bad_queries_file(tmp_path):
    root = make_beir(tmp_path / "b", {"train": "q1\td1\t1\n"},
                     queries=[{"_id": "q1", "text": "x"}, {"_id": "q1", "text": "y"}, {"_id": "q2", "text": " "},
                              {"text": "no id"}, {"_id": "q3", "text": "z", "answers": [1]}])
    with pytest.raises(UserError) as info:
        BeirFolder.load(root)
    q = root / "queries.jsonl"
    assert str(info.value).splitlines() == [f"{q}:2: _id: query id 'q1' repeats line 1", f"{q}:3: text: missing or empty",
                                            f"{q}:4: _id: missing or not a string",
                                            f"{q}:5: answers: must be a string or a list of strings"]


def test_corpus_rows_are_objects_not_lines(tmp_path):
    corpus = [{"_id": "d0", "text": "a"}, {"_id": "d1", "text": "b"}]
    root = make_beir(tmp_path / "b", {"train": "q1\td1\t1\n"}, corpus=corpus)
    (root / "corpus.jsonl").write_text("\n" + json.dumps(corpus[0]) + "\n\n" + json.dumps(corpus[1]) + "\n")
    assert records_from_beir(root, "train")[0]["pos_index"] == [1]  # row 1 although it is on line 4


# -------------------------------------------------------------------------------------------------- CLI

def test_cli_writes_records_sidecar_and_optional_corpus_copy(graded, tmp_path, capsys):
    out = tmp_path / "out"
    assert cli_main(["convert", "beir", str(graded), "--output_dir", str(out), "--splits", "train",
                     "--below_min_as_negatives", "--task", "qa", "--write_corpus"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == f"train: 3 records (4 positives, 2 negatives) -> {out / 'train.json'}"
    assert printed[1] == "  not used as positives: queries_without_positive=1, below_min_score=3 (see train.meta.json)"
    records = read_jsonl(out / "train.json")
    assert records == records_from_beir(graded, "train", below_min_as_negatives=True, task="qa")
    assert {r["task"] for r in records} == {"qa"}
    assert (out / "corpus.json").read_bytes() == (graded / "corpus.jsonl").read_bytes()
    meta = json.loads(meta_path(out / "train.json").read_text())
    assert meta["corpus"] == "corpus.json" and meta["corpus_rows"] == 6 and meta["split"] == "train"
    assert meta["sources"]["qrels"] == str((graded / "qrels" / "train.tsv").resolve())
    assert meta["options"] == {"min_score": 1, "max_score": None, "below_min_as_negatives": True,
                               "graded_as_teacher_scores": False, "task": "qa"}
    assert meta["counts"]["records"] == 3 and len(meta["sha256"]) == 3
    assert sidecar_corpus(out / "train.json") == out / "corpus.json"
    assert not (out / "test.json").exists()


def test_cli_default_splits_and_extra_qrels(graded, tmp_path, capsys):
    extra = tmp_path / "extra.tsv"
    extra.write_text("q2\td3\t1\n")
    out = tmp_path / "o"
    assert beir_main([str(graded), "--output_dir", str(out), "--extra_qrels", f"test={extra}"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["test.json", "test.meta.json", "train.json", "train.meta.json"]
    assert read_jsonl(out / "test.json")[0]["pos_ids"] == ["d0", "d3"]
    assert json.loads((out / "test.meta.json").read_text())["sources"]["extra_qrels"] == [str(extra.resolve())]
    capsys.readouterr()


@pytest.mark.parametrize("extra_args, message", [
    (["--splits", "dev"], "--splits: {root} has no qrels/dev.tsv (found: test, train)"),
    (["--max_score", "0", "--min_score", "1"], "--max_score: 0 is below --min_score 1"),
    (["--task", "poetry"], "--task: unknown task 'poetry'"),
    (["--extra_qrels", "train"], "--extra_qrels: 'train' must look like SPLIT=PATH"),
    (["--splits", "train", "--extra_qrels", "test=x.tsv"], "--extra_qrels: split 'test' is not converted (--splits train)"),
    (["--extra_qrels", "train=/nonexistent.tsv"], "--extra_qrels: /nonexistent.tsv: file not found"),
    (["--negatives_from", "/nonexistent.json"], "--negatives_from: /nonexistent.json: file not found"),
])
def test_cli_argument_errors_are_one_line_before_any_output(graded, tmp_path, capsys, extra_args, message):
    out = tmp_path / "never"
    with pytest.raises(SystemExit) as info:
        beir_main([str(graded), "--output_dir", str(out)] + extra_args)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: " + message.format(root=graded)) and err.count("\n") == 1
    assert not out.exists()


def test_cli_missing_folder_and_unknown_format(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli_main(["convert", "beir", str(tmp_path / "nowhere"), "--output_dir", str(tmp_path)])
    assert capsys.readouterr().err.strip() == f"error: BEIR_DIR: {tmp_path / 'nowhere'} is not a folder"
    with pytest.raises(SystemExit):
        cli_main(["convert", "msmarco"])
    assert capsys.readouterr().err.strip() == "error: convert: unknown format 'msmarco' (known: beir, lrlm, tevatron, trove)"


def test_cli_writes_task_qa_by_default_and_records_it(graded, tmp_path, capsys):
    """A converted file must be LM-scorable with --template auto: the rows carry a task (issue 11, point 1)."""
    out = tmp_path / "default-task"
    assert beir_main([str(graded), "--output_dir", str(out), "--splits", "train"]) == 0
    assert {r.get("task") for r in read_jsonl(out / "train.json")} == {"qa"}
    assert json.loads((out / "train.meta.json").read_text())["options"]["task"] == "qa"
    assert beir_main([str(graded), "--output_dir", str(out), "--splits", "train", "--task", "icl"]) == 0
    assert {r.get("task") for r in read_jsonl(out / "train.json")} == {"icl"}
    capsys.readouterr()
