"""Corpus loading: row numbering, key templates, ids, and whole-file error reports."""
from __future__ import annotations

import json

import pytest

from llm_embedder.corpus import Corpus, load_corpus, read_corpus_ids, template_fields
from llm_embedder.errors import UserError


def write_rows(path, rows) -> str:
    path.write_text("".join((json.dumps(r) if isinstance(r, dict) else r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def test_default_key_text_ids_and_rows(tmp_path):
    path = write_rows(tmp_path / "c.jsonl", [
        {"_id": "d1", "title": " Title ", "text": "body one"},
        "",  # a blank line is not a row
        {"id": 7, "title": "", "text": "body two"},
        {"docid": "x", "contents": "pyserini style"},
        {"title": "only a title"},
    ])
    corpus = load_corpus(path)
    assert corpus.texts == ["Title body one", "body two", "pyserini style", "only a title"]
    assert corpus.ids == ["d1", "7", "x", "3"]  # the last row has no id field: its row number
    assert corpus.id_to_row() == {"d1": 0, "7": 1, "x": 2, "3": 3}
    assert read_corpus_ids(path)[1] == corpus.ids
    assert corpus.rows is None and load_corpus(path, keep_rows=True).rows[2] == {"docid": "x", "contents": "pyserini style"}


def test_key_template(tmp_path):
    path = write_rows(tmp_path / "c.jsonl", [
        {"_id": "a", "title": "T", "text": "x", "meta": {"year": 2020}, "note": None},
        {"_id": "b", "title": "U", "text": "y", "meta": {"year": 1999}, "note": "n"},
    ])
    corpus = load_corpus(path, key_template="{title} ({meta[year]}): {text} {note}")
    assert corpus.texts == ["T (2020): x", "U (1999): y n"]  # None formats as empty, ends are stripped
    assert corpus.key_template == "{title} ({meta[year]}): {text} {note}"


def test_template_fields():
    assert template_fields("{title} {text}") == ["title", "text"]
    assert template_fields("{meta[year]} {a.b} {{literal}}") == ["meta", "a"]
    with pytest.raises(UserError, match=r"^--key_template: '\{title' is not a valid format string"):
        template_fields("{title")
    with pytest.raises(UserError, match="^--key_template: '{} {text}' uses a positional field"):
        template_fields("{} {text}")
    with pytest.raises(UserError, match="positional field '{0}'"):
        template_fields("{0}")


def test_every_bad_row_is_reported_with_file_line_and_field(tmp_path):
    path = write_rows(tmp_path / "c.jsonl", [
        {"_id": "a", "title": "T", "text": "x"},
        {"_id": "b", "text": "y"},
        "",
        "{broken",
        {"_id": "c", "title": "U"},
    ])
    with pytest.raises(UserError) as info:
        load_corpus(path, key_template="{title} {text}")
    assert str(info.value).splitlines() == [
        f"{path}:2: title: field needed by --key_template '{{title}} {{text}}' is missing",
        f"{path}:4: invalid JSON: Expecting property name enclosed in double quotes (column 2)",
        f"{path}:5: text: field needed by --key_template '{{title}} {{text}}' is missing",
    ]
    no_text = write_rows(tmp_path / "n.jsonl", [{"_id": "a", "body": "x"}])
    with pytest.raises(UserError, match=rf"^{no_text}:1: text: corpus row has none of the fields title/text/content/contents; pass --key_template$"):
        load_corpus(no_text)
    assert load_corpus(no_text, key_template="{body}").texts == ["x"]


def test_empty_corpus_and_duplicate_ids(tmp_path):
    empty = tmp_path / "e.jsonl"
    empty.write_text("\n")
    with pytest.raises(UserError, match="no rows"):
        load_corpus(empty)
    dup = write_rows(tmp_path / "d.jsonl", [{"_id": "a", "text": "x"}, {"_id": "b", "text": "y"}, {"_id": "a", "text": "z"}])
    corpus = load_corpus(dup)
    with pytest.raises(UserError, match=r"document id 'a' is used by rows 0 and 2"):
        corpus.id_to_row()


def test_from_texts():
    corpus = Corpus.from_texts(["x", "y"])
    assert (len(corpus), corpus.ids, corpus.id_to_row()) == (2, ["0", "1"], {"0": 0, "1": 1})
    assert Corpus.from_texts(["x"], ids=["a"]).ids == ["a"]
    with pytest.raises(ValueError):
        Corpus.from_texts(["x"], ids=["a", "b"])


def test_scifact_corpus_rows_match_the_file(data_dir):
    path = data_dir / "scifact" / "corpus.jsonl"
    lines = path.read_text(encoding="utf-8").split("\n")
    rows = [json.loads(line) for line in lines if line.strip()]
    corpus = load_corpus(path)
    assert len(corpus) == len(rows) == 5183
    for i in (0, 1, 2591, 5182):
        assert corpus.ids[i] == rows[i]["_id"]
        assert corpus.texts[i] == f"{rows[i]['title'].strip()} {rows[i]['text']}".strip()
    assert load_corpus(path, key_template="{text}").texts[5182] == rows[5182]["text"]
