"""``llm-embedder convert tevatron``: Tevatron training and corpus JSONL to schema files and back."""
from __future__ import annotations

import json

import pytest

from llm_embedder.convert import main as convert_main
from llm_embedder.schema import read_records, sidecar_corpus

CORPUS = [{"docid": "d1", "title": "Paris", "text": "Paris is the capital of France."},
          {"docid": "d2", "title": "Moon", "text": "The moon orbits the earth."},
          {"docid": "d3", "title": "", "text": "Violins have four strings."}]
TRAIN = [{"query_id": "q1", "query": "capital of france", "positive_passages": [CORPUS[0]],
          "negative_passages": [CORPUS[1], CORPUS[2]], "answers": ["Paris"]},
         {"query_id": "q2", "query": "what orbits the earth", "positive_passages": [CORPUS[1]], "negative_passages": [CORPUS[2]]}]


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture()
def tevatron_files(tmp_path):
    return _write(tmp_path / "train.jsonl", TRAIN), _write(tmp_path / "corpus.jsonl", CORPUS)


def test_training_rows_become_schema_records_with_texts(tmp_path, tevatron_files):
    train, _ = tevatron_files
    out = tmp_path / "train.json"
    assert convert_main(["tevatron", str(train), "--output", str(out), "--task", "qa"]) == 0
    records = read_records(out, purpose="train").records  # valid training records
    assert records[0] == {"query_id": "q1", "query": "capital of france", "answers": ["Paris"], "task": "qa",
                          "pos": ["Paris Paris is the capital of France."], "pos_ids": ["d1"],
                          "neg": ["Moon The moon orbits the earth.", "Violins have four strings."], "neg_ids": ["d2", "d3"]}


def test_with_a_corpus_keys_become_row_indices_and_the_round_trip_is_exact(tmp_path, tevatron_files):
    train, corpus = tevatron_files
    out, back = tmp_path / "train.json", tmp_path / "back.jsonl"
    assert convert_main(["tevatron", str(train), "--output", str(out), "--corpus", str(corpus)]) == 0
    records = read_records(out, purpose="train", corpus_size=3).records
    assert [(r["pos_index"], r["neg_index"]) for r in records] == [([0], [1, 2]), ([1], [2])]
    assert "pos" not in records[0] and sidecar_corpus(out).resolve() == corpus.resolve()
    assert convert_main(["tevatron", str(out), "--output", str(back), "--to", "tevatron"]) == 0  # corpus from sidecar
    assert _read(back) == TRAIN


def test_a_docid_missing_from_the_corpus_is_named_with_file_and_line(tmp_path, tevatron_files, capsys):
    train, corpus = tevatron_files
    rows = json.loads(json.dumps(TRAIN))
    rows[1]["negative_passages"][0]["docid"] = "d9"
    _write(train, rows)
    with pytest.raises(SystemExit) as exit_info:
        convert_main(["tevatron", str(train), "--output", str(tmp_path / "o.json"), "--corpus", str(corpus)])
    assert exit_info.value.code == 2
    assert f"{train}:2: negative_passages: docid d9 is not in --corpus" in capsys.readouterr().err
    assert not (tmp_path / "o.json").exists()


def test_corpus_both_directions(tmp_path, tevatron_files):
    _, corpus = tevatron_files
    ours, theirs = tmp_path / "ours.jsonl", tmp_path / "theirs.jsonl"
    assert convert_main(["tevatron", str(corpus), "--kind", "corpus", "--output", str(ours)]) == 0
    assert _read(ours)[0] == {"_id": "d1", "title": "Paris", "text": "Paris is the capital of France."}
    assert convert_main(["tevatron", str(ours), "--kind", "corpus", "--to", "tevatron", "--output", str(theirs)]) == 0
    assert _read(theirs) == CORPUS


def test_schema_records_with_texts_become_tevatron_rows(tmp_path):
    src = _write(tmp_path / "s.json", [{"query": "q", "pos": ["a"], "neg": ["b", "c"], "neg_ids": ["x", "y"]}])
    out = tmp_path / "t.jsonl"
    assert convert_main(["tevatron", str(src), "--to", "tevatron", "--output", str(out)]) == 0
    assert _read(out) == [{"query": "q", "query_id": "0", "positive_passages": [{"docid": "", "title": "", "text": "a"}],
                           "negative_passages": [{"docid": "x", "title": "", "text": "b"}, {"docid": "y", "title": "", "text": "c"}]}]


def test_trove_qrels_config_converts_like_the_beir_folder(tmp_path, data_dir):
    from llm_embedder.convert import records_from_beir

    scifact = data_dir / "scifact"
    config = tmp_path / "test.yaml"
    config.write_text(f"qrel_path: {scifact / 'qrels' / 'test.tsv'}\nquery_path: {scifact / 'queries.jsonl'}\n"
                      f"corpus_path: {scifact / 'corpus.jsonl'}\nmin_score: 1\n")
    out = tmp_path / "test.json"
    assert convert_main(["trove", str(config), "--output", str(out)]) == 0
    expected = records_from_beir(scifact, "test")
    expected = expected.records if hasattr(expected, "records") else expected
    assert _read(out) == expected and len(expected) > 10
    assert sidecar_corpus(out).resolve() == (scifact / "corpus.jsonl").resolve()
    config.write_text(f"qrel_path: {scifact / 'qrels' / 'test.tsv'}\nquery_path: q.jsonl\n")
    with pytest.raises(SystemExit):
        convert_main(["trove", str(config), "--output", str(out)])
