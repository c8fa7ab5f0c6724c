"""Schema reading, whole-file validation (exact file:line: field messages), atomic writing, naming, validate CLI."""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from llm_embedder import schema, tasks
from llm_embedder.errors import UserError
from llm_embedder.resources import resolve_data_path
from llm_embedder.schema import (MAX_REPORTED_ERRORS, derived_path, meta_path, num_keys, num_positives, read_records,
                                 record_keys, sidecar_corpus, write_json, write_records)
from llm_embedder.tasks import known_tasks
from llm_embedder.validate import main as validate_main

TOY_FILES = ("chat", "convsearch", "icl", "lrlm", "qa", "tool")
GOOD = {"query": "q", "pos": ["p"], "neg": ["n"]}


def write_lines(path, lines) -> str:
    """Write raw lines (dicts are dumped as JSON, strings written as they are)."""
    with open(path, "w", encoding="utf-8") as f:
        for line in lines:
            f.write((json.dumps(line) if isinstance(line, dict) else line) + "\n")
    return str(path)


def problems_of(path, **kwargs) -> list[str]:
    with pytest.raises(UserError) as info:
        read_records(path, **kwargs)
    return str(info.value).splitlines()


# Each case: the bad line (record 2 of the file, after a good record), read_records options, and the exact
# "field: message" start expected at line 2.
BAD_RECORDS = [
    ("invalid-json", '{"query": "q", "pos": ["p"]', {}, "invalid JSON: Expecting ',' delimiter (column 28)"),
    ("not-an-object", "[1, 2]", {}, "expected a JSON object, got a list"),
    ("query-missing", {"pos": ["p"]}, {}, "query: missing"),
    ("query-empty", {"query": "  ", "pos": ["p"]}, {}, "query: empty"),
    ("query-not-string", {"query": 5, "pos": ["p"]}, {}, "query: must be a string, got an integer"),
    ("query-null", {"query": None, "pos": ["p"]}, {}, "query: must be a string, got null"),
    ("pos-not-list", {"query": "q", "pos": "p"}, {}, "pos: must be a list of strings, got a string"),
    ("neg-item-int", {"query": "q", "pos": ["p"], "neg": ["a", 3]}, {}, "neg: item 1 is an integer 3, not a string"),
    ("history-dict", {"query": "q", "history": {"a": 1}}, {}, "history: must be a list of strings, got an object"),
    ("answers-string", {"query": "q", "pos": ["p"], "answers": "a"}, {}, "answers: must be a list of strings, got a string"),
    ("pos-index-string", {"query": "q", "pos_index": ["3"]}, {}, 'pos_index: item 0 is a string "3", not an integer row number'),
    ("pos-index-float", {"query": "q", "pos_index": [1.0]}, {}, "pos_index: item 0 is a number 1.0, not an integer row number"),
    ("pos-index-bool", {"query": "q", "pos_index": [True]}, {}, "pos_index: item 0 is a boolean true, not an integer row number"),
    ("pos-index-not-list", {"query": "q", "pos_index": 3}, {}, "pos_index: must be a list of corpus row numbers, got an integer"),
    ("neg-index-negative", {"query": "q", "pos_index": [0], "neg_index": [2, -1]}, {},
     "neg_index: item 1 is -1; corpus rows are numbered from 0"),
    ("pos-index-beyond-corpus", {"query": "q", "pos_index": [9, 10]}, {"corpus_size": 10},
     "pos_index: item 1 is row 10, beyond the corpus (10 rows: 0..9)"),
    ("teacher-length-pos-neg", {"query": "q", "pos": ["p"], "neg": ["a", "b"], "teacher_scores": [1, 2]}, {},
     "teacher_scores: 2 scores for 3 keys (pos 1 + neg 2)"),
    ("teacher-length-index", {"query": "q", "pos_index": [1], "neg_index": [2], "teacher_scores": [1.0]}, {},
     "teacher_scores: 1 scores for 2 keys (pos 1 + neg 1)"),
    ("teacher-length-history", {"query": "q", "history": ["a", "b", "c"], "teacher_scores": [1, 2], "task": "chat"}, {},
     "teacher_scores: 2 scores for 3 keys (history)"),
    ("teacher-nan", '{"query": "q", "pos": ["p"], "neg": ["n"], "teacher_scores": [0.5, NaN]}', {},
     "teacher_scores: item 1 is NaN; scores must be finite"),
    ("teacher-inf", '{"query": "q", "pos": ["p"], "neg": ["n"], "teacher_scores": [-Infinity, 1]}', {},
     "teacher_scores: item 0 is -Infinity; scores must be finite"),
    ("teacher-string", {"query": "q", "pos": ["p"], "teacher_scores": ["high"]}, {},
     'teacher_scores: item 0 is a string "high", not a number'),
    ("teacher-bool", {"query": "q", "pos": ["p"], "teacher_scores": [True]}, {},
     "teacher_scores: item 0 is a boolean true, not a number"),
    ("teacher-not-list", {"query": "q", "pos": ["p"], "teacher_scores": 0.3}, {},
     "teacher_scores: must be a list of numbers, got a number"),
    ("unknown-task", {"query": "q", "pos": ["p"], "task": "poetry"}, {"known_tasks": ["qa", "chat"]},
     "task: unknown task 'poetry' (known: chat, qa; register custom tasks with --task_config)"),
    ("empty-task", {"query": "q", "pos": ["p"], "task": ""}, {}, 'task: must be a non-empty string, got ""'),
    ("chat-without-history", {"query": "q", "task": "chat", "teacher_scores": []}, {},
     "history: chat records need a non-empty history"),
    ("chat-empty-history", {"query": "q", "task": "chat", "history": []}, {},
     "history: chat records need a non-empty history"),
    ("history-and-pos", {"query": "q", "history": ["a"], "pos": ["p"]}, {},
     "history: keys are given both as history and as pos/neg"),
    ("train-no-positive-no-teacher", {"query": "q", "pos": [], "neg": ["a", "b"]}, {"purpose": "train"},
     "pos: no positive and no teacher_scores to choose one"),
    ("train-no-keys", {"query": "q"}, {"purpose": "train"}, "pos: no keys at all"),
    ("eval-no-positive", {"query": "q", "neg_index": [1, 2]}, {"purpose": "eval"},
     "pos: evaluation records need at least one positive"),
    ("score-no-keys", {"query": "q", "answers": ["a"]}, {"purpose": "score"}, "pos: nothing to score"),
    ("pos-pos-index-mismatch", {"query": "q", "pos": ["a"], "pos_index": [1, 2]}, {},
     "pos_index: 2 rows but 1 texts in pos"),
    ("pos-ids-mismatch", {"query": "q", "pos_index": [1, 2], "pos_ids": ["x"]}, {},
     "pos_ids: 1 ids but 2 keys in pos_index"),
    ("pos-ids-without-keys", {"query": "q", "pos": ["p"], "neg_ids": ["x"]}, {}, "neg_ids: given without neg_index or neg"),
    ("pos-ids-wrong-row", {"query": "q", "pos_index": [1], "pos_ids": ["d0"]}, {"corpus_ids": ["d0", "d1"]},
     'pos_ids: item 0 is "d0" but corpus row 1 has id "d1"'),
    ("query-id-float", {"query": "q", "pos": ["p"], "query_id": 1.5}, {}, "query_id: must be an integer or a string, got a number"),
    ("query-id-bool", {"query": "q", "pos": ["p"], "query_id": False}, {}, "query_id: must be an integer or a string, got a boolean"),
    ("query-id-list", {"query": "q", "pos": ["p"], "query_id": [1]}, {}, "query_id: must be an integer or a string, got a list"),
    ("context-not-string", {"query": "q", "pos": ["p"], "context": ["c"]}, {}, "context: must be a string, got a list"),
    ("invalid-utf8", b'{"query": "caf\xe9", "pos": ["p"]}'.decode("latin-1"), {}, "not valid UTF-8"),
]


@pytest.mark.parametrize("line, options, expected", [case[1:] for case in BAD_RECORDS], ids=[c[0] for c in BAD_RECORDS])
def test_each_bad_record_is_reported_with_file_line_and_field(tmp_path, line, options, expected):
    path = tmp_path / "data.json"
    if isinstance(line, str) and "caf" in line:  # write the raw latin-1 byte, not UTF-8
        path.write_bytes(json.dumps(GOOD).encode() + b"\n" + line.encode("latin-1") + b"\n")
    else:
        write_lines(path, [GOOD, line])
    problems = problems_of(path, **options)
    assert problems[0].startswith(f"{path}:2: {expected}"), problems
    assert all(p.startswith(f"{path}:2: ") for p in problems)


@pytest.mark.parametrize("record, options", [
    ({"query": "q", "pos_index": [9]}, {"corpus_size": 10}),  # last row is inside the corpus
    ({"query": "q", "pos": [], "neg": ["a"], "teacher_scores": [0.1]}, {"purpose": "train"}),  # lrlm: teacher picks
    ({"query": "q", "history": ["a", "b"], "teacher_scores": [1, 2], "task": "chat"}, {"purpose": "train"}),
    ({"query": "q", "pos": [], "pos_index": [3], "neg_index": [4]}, {"purpose": "eval"}),  # texts omitted
    ({"query": "q", "pos": ["p"], "task": "poetry"}, {}),  # no known_tasks: any task name
    ({"query": "q", "pos_index": [1], "pos_ids": ["d1"]}, {"corpus_ids": ["d0", "d1"]}),
    ({"query": "q", "pos": ["p"], "query_id": "abc"}, {"purpose": "eval"}),
])
def test_good_records_pass(tmp_path, record, options):
    rf = read_records(write_lines(tmp_path / "ok.json", [record]), **options)
    assert rf.records == [record]


def test_every_problem_of_a_file_is_reported_in_line_order(tmp_path):
    path = write_lines(tmp_path / "many.json", [
        {"query": "", "pos": ["p"]},
        "",  # blank lines are skipped but still counted
        "not json",
        GOOD,
        {"query": "q", "pos": ["p"], "teacher_scores": [1, 2], "task": "poetry"},
    ])
    assert problems_of(path, known_tasks=["qa"]) == [
        f"{path}:1: query: empty",
        f"{path}:3: invalid JSON: Expecting value (column 1)",
        f"{path}:5: task: unknown task 'poetry' (known: qa; register custom tasks with --task_config)",
    ]  # the task error hides the length check, which needs well-typed fields first
    path2 = write_lines(tmp_path / "two.json", [{"query": "q", "pos": ["p"], "teacher_scores": [1, 2]}])
    assert problems_of(path2) == [f"{path2}:1: teacher_scores: 2 scores for 1 keys (pos 1 + neg 0)"]


def test_report_is_capped_with_a_count_of_the_rest(tmp_path):
    path = write_lines(tmp_path / "bad.json", [{"pos": ["p"]}] * (MAX_REPORTED_ERRORS + 7))
    problems = problems_of(path)
    assert len(problems) == MAX_REPORTED_ERRORS + 1
    assert problems[-1] == "... and 7 more problems"
    assert problems[MAX_REPORTED_ERRORS - 1] == f"{path}:{MAX_REPORTED_ERRORS}: query: missing"


def test_eval_files_refuse_repeated_query_ids(tmp_path):
    path = write_lines(tmp_path / "eval.json", [{**GOOD, "query_id": 7}, {**GOOD, "query_id": "x"}, {**GOOD, "query_id": "7"}])
    assert problems_of(path, purpose="eval") == [f"{path}:3: query_id: duplicate \"7\" (first at line 1)"]
    assert len(read_records(path, purpose="train")) == 3  # training may repeat a query


def test_empty_file_and_missing_file(tmp_path):
    empty = tmp_path / "empty.json"
    empty.write_text("\n\n")
    assert problems_of(empty) == [f"{empty}: no records"]
    assert problems_of(tmp_path / "nope.json") == [f"{tmp_path / 'nope.json'}: file not found"]


def test_json_array_works_like_jsonl_with_item_numbers(tmp_path):
    path = tmp_path / "array.json"
    path.write_text(json.dumps([GOOD, {"query": "q", "pos": [1]}, "text", {**GOOD, "x": 1}], indent=2))
    assert problems_of(path) == [
        f"{path}:2: pos: item 0 is an integer 1, not a string",
        f"{path}:3: item 3 of the JSON array is a string, not an object",
    ]
    path.write_text(json.dumps([GOOD, {**GOOD, "x": 1}]))
    rf = read_records(path, purpose="train")
    assert rf.records == [GOOD, {**GOOD, "x": 1}] and rf.lines == [1, 2] and rf.where(1) == f"{path}:2"
    path.write_text('[{"query": "q",\n "pos": ["p"]},\n {"query" "q"}]')
    assert problems_of(path) == [f"{path}:3: invalid JSON: Expecting ':' delimiter (column 11)"]


def test_pretty_printed_object_is_one_clear_problem(tmp_path):
    path = tmp_path / "pretty.json"
    path.write_text(json.dumps(GOOD, indent=2))
    assert problems_of(path) == [f"{path}:1: the file is one JSON object spread over several lines; records must be "
                                 "JSON lines (one object per line) or a JSON array"]


def test_bom_crlf_and_unicode_line_separators(tmp_path):
    record = {"query": "a\u2028b\u0085c", "pos": ["p\u2029"], "neg": ["n"]}
    path = tmp_path / "u.json"
    write_records(path, [record, GOOD])
    assert "\u2028" in path.read_text(encoding="utf-8")  # written raw (ensure_ascii=False) ...
    rf = read_records(path, purpose="train")  # ... and still one record per line
    assert rf.records == [record, GOOD] and rf.lines == [1, 2]
    crlf = tmp_path / "crlf.json"
    crlf.write_bytes(b"\xef\xbb\xbf" + json.dumps(GOOD).encode() + b"\r\n\r\n" + json.dumps(record).encode() + b"\r\n")
    rf = read_records(crlf)
    assert rf.records == [GOOD, record] and rf.lines == [1, 3]


def test_unknown_fields_survive_a_round_trip(tmp_path):
    records = [
        {"query": "q", "pos": ["p"], "neg": ["n"], "pos_scores": [-5.5], "neg_score": [-7.25], "qid": "49635",
         "meta": {"source": "x", "nested": [1, {"k": None}]}, "flag": True, "label": None},
        {"task": "tool", "query": "z", "pos": ["a", "b"], "weird key ü": "ü"},
    ]
    first = write_records(tmp_path / "a.json", records)
    rf = read_records(first, purpose="train")
    assert rf.records == records
    assert [list(r) for r in rf.records] == [list(r) for r in records]  # field order kept too
    second = write_records(tmp_path / "b.json", rf.records)
    assert first.read_bytes() == second.read_bytes()


@pytest.mark.parametrize("name", TOY_FILES)
def test_toy_files_validate_for_training(toy_dir, name):
    rf = read_records(toy_dir / f"{name}.json", purpose="train", known_tasks=known_tasks())
    assert len(rf) == 8
    assert {r["task"] for r in rf.records} == {name}
    for r in rf.records:
        if "teacher_scores" in r:
            assert len(r["teacher_scores"]) == num_keys(r)
    first = rf.records[0]
    expected = {"chat": (7, 0), "convsearch": (33, 1), "icl": (20, 3), "lrlm": (64, 0), "qa": (101, 1), "tool": (24, 4)}
    assert (num_keys(first), num_positives(first)) == expected[name]


def test_key_counting_and_key_texts():
    corpus = ["row0", "row1", "row2", "row3"]
    by_rows = {"query": "q", "pos_index": [2], "neg_index": [0, 3]}
    assert (num_keys(by_rows), num_positives(by_rows)) == (3, 1)
    assert record_keys(by_rows, corpus) == ["row2", "row0", "row3"]
    mixed = {"query": "q", "pos": [], "pos_index": [1], "neg": ["own text"], "neg_index": [3]}
    assert record_keys(mixed, corpus) == ["row1", "own text"]  # texts win where given, rows fill omitted texts
    chat = {"query": "q", "history": ["s1", "s2"]}
    assert (num_keys(chat), num_positives(chat), record_keys(chat)) == (2, 0, ["s1", "s2"])
    with pytest.raises(UserError, match="pos_index: the record gives corpus rows but no corpus"):
        record_keys(by_rows)


def test_write_records_is_atomic_and_refuses_nan(tmp_path):
    path = tmp_path / "out" / "x.json"
    write_records(path, [GOOD])
    before = path.read_bytes()
    with pytest.raises(ValueError, match="record 1 cannot be written as JSON"):
        write_records(path, [GOOD, {"query": "q", "teacher_scores": [float("nan")]}])
    assert path.read_bytes() == before  # the failed write left the old file untouched
    assert sorted(p.name for p in path.parent.iterdir()) == ["x.json"]  # and no temp file behind


def test_written_files_get_normal_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        a = write_records(tmp_path / "a.json", [GOOD])
        b = write_json(tmp_path / "b.json", {"x": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE(a.stat().st_mode) == 0o644 and stat.S_IMODE(b.stat().st_mode) == 0o644
    assert json.loads(b.read_text()) == {"x": 1}


def test_derived_and_meta_names(tmp_path):
    assert derived_path("d/train.json", "neg", "bm25") == Path("d/train.neg.bm25.json")
    assert derived_path("d/train.neg.bm25.json", "scored", "smollm2", output_dir="o") == \
        Path("o/train.neg.bm25.scored.smollm2.json")
    assert derived_path("d/train.jsonl", "neg", "dense") == Path("d/train.neg.dense.json")
    assert meta_path("d/train.neg.bm25.json") == Path("d/train.neg.bm25.meta.json")
    records = write_records(tmp_path / "sub" / "train.json", [GOOD])
    assert sidecar_corpus(records) is None
    write_json(meta_path(records), {"corpus": "../corpus.jsonl"})
    with pytest.raises(UserError, match=r"sub/train.meta.json: corpus: ../corpus.jsonl does not exist"):
        sidecar_corpus(records)  # a sidecar naming a missing corpus: one line naming the sidecar
    (tmp_path / "corpus.jsonl").write_text("")
    assert sidecar_corpus(records) == tmp_path / "sub" / "../corpus.jsonl"
    write_json(meta_path(records), {"corpus": "llm-embedder:scifact/corpus.jsonl"})
    assert sidecar_corpus(records).resolve() == (resolve_data_path("llm-embedder:scifact/corpus.jsonl")).resolve()


# ------------------------------------------------------------------------------------------- validate CLI

def test_validate_cli_toy_files(toy_dir, capsys):
    files = [str(toy_dir / f"{name}.json") for name in TOY_FILES]
    assert validate_main(files + ["--purpose", "train"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [f"OK {f} (8 records, tasks: {name})" for f, name in zip(files, TOY_FILES)]


def test_validate_cli_reports_bad_files_and_exits_1(tmp_path, toy_dir, capsys):
    bad = write_lines(tmp_path / "bad.json", [GOOD, {"query": "q", "task": "chat"}, "{oops"])
    good = str(toy_dir / "tool.json")
    assert validate_main([bad, good, str(tmp_path / "missing.json")]) == 1
    assert capsys.readouterr().out.splitlines() == [
        f"{bad}:2: history: chat records need a non-empty history (the past sessions to retrieve from)",
        f"{bad}:3: invalid JSON: Expecting property name enclosed in double quotes (column 2)",
        f"OK {good} (8 records, tasks: tool)",
        f"{tmp_path / 'missing.json'}: file not found",
    ]


def test_validate_cli_checks_against_the_corpus(tmp_path, capsys):
    corpus = write_lines(tmp_path / "corpus.jsonl", [{"_id": "a", "title": "T", "text": "x"},
                                                     {"_id": "b", "text": "y"}, {"_id": "c", "title": "U", "text": "z"}])
    records = write_lines(tmp_path / "r.json", [{"query": "q", "pos_index": [2], "pos_ids": ["c"]},
                                                {"query": "q", "pos_index": [3]}])
    assert validate_main([records, "--corpus", corpus, "--purpose", "eval"]) == 1
    assert capsys.readouterr().out.splitlines() == [
        f"{records}:2: pos_index: item 0 is row 3, beyond the corpus (3 rows: 0..2)"]
    assert validate_main([records, "--corpus", corpus, "--key_template", "{title}: {text}"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out == [f"{records}: corpus {corpus} is not usable:",
                   f"{corpus}:2: title: field needed by --key_template '{{title}}: {{text}}' is missing"]
    ok = write_lines(tmp_path / "ok.json", [{"query": "q", "pos_index": [0, 2], "pos_ids": ["a", "c"], "task": "qa"},
                                            {"query": "q2", "pos_index": [1], "task": "tool"}])
    assert validate_main([ok, "--corpus", corpus, "--purpose", "eval"]) == 0
    assert capsys.readouterr().out.splitlines() == [f"OK {ok} (2 records, tasks: qa 1, tool 1, corpus: {corpus} (3 rows))"]


def test_validate_cli_finds_the_sidecar_corpus(tmp_path, capsys):
    write_lines(tmp_path / "corpus.jsonl", [{"_id": "a", "text": "x"}])
    records = write_lines(tmp_path / "train.json", [{"query": "q", "pos_index": [1]}])
    write_json(meta_path(records), {"corpus": "corpus.jsonl"})
    assert validate_main([records]) == 1
    assert capsys.readouterr().out.splitlines() == [
        f"{records}:1: pos_index: item 0 is row 1, beyond the corpus (1 rows: 0..0)"]


def test_validate_cli_argument_errors_exit_2(tmp_path, toy_dir, capsys):
    good = str(toy_dir / "qa.json")
    with pytest.raises(SystemExit) as info:
        validate_main([good, "--corpus", str(tmp_path / "nope.jsonl")])
    assert info.value.code == 2
    assert capsys.readouterr().err.strip() == f"error: --corpus: {tmp_path / 'nope.jsonl'}: file not found"
    with pytest.raises(SystemExit) as info:
        validate_main([good, "--key_template", "{title"])
    assert info.value.code == 2 and "--key_template" in capsys.readouterr().err
    assert validate_main([good, "--key_template", "{title}"]) == 1  # a template with no corpus to apply it to
    assert capsys.readouterr().out.strip() == f"{good}: --key_template needs a corpus: pass --corpus"


def test_validate_cli_task_config_and_dispatch(tmp_path, monkeypatch, capsys):
    from llm_embedder.cli import main as cli_main

    monkeypatch.setattr(tasks, "_REGISTRY", dict(tasks._REGISTRY))  # the config registers into a copy
    records = write_lines(tmp_path / "r.json", [{"query": "q", "pos": ["p"], "task": "poetry"}])
    assert cli_main(["validate", records]) == 1
    assert "task: unknown task 'poetry'" in capsys.readouterr().out
    config = tmp_path / "tasks.json"
    config.write_text(json.dumps({"poetry": {"query_instruction": "Find poems: "}}))
    assert cli_main(["validate", records, "--task_config", str(config)]) == 0
    assert capsys.readouterr().out.strip() == f"OK {records} (1 records, tasks: poetry)"
