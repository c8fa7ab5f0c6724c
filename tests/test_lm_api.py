"""The public LM-scoring API: ``score_records`` on a list of records equals run_lm_score.py's output,
``build_plan`` takes a list, ``teacher_scores_from_pairs`` by hand, and run_lm_score's --help."""
from __future__ import annotations

import json

import pytest

from llm_embedder.errors import UserError
from llm_embedder.lm import run as lm_run
from llm_embedder.lm import score_records
from llm_embedder.lm.api import teacher_scores_from_pairs
from llm_embedder.lm.pairs import build_plan
from test_lm_fixtures import QA_ROWS, one_torch_thread, reference_score, tiny_lm, tiny_lm_dir, write_jsonl  # noqa: F401


def test_score_records_equals_the_cli_output(tmp_path, tiny_lm_dir, tiny_lm):
    path = write_jsonl(tmp_path / "train.json", QA_ROWS)
    lm_run.run(lm_run.build_parser().parse_args(
        ["--eval_data", str(path), "--model_name_or_path", str(tiny_lm_dir), "--save_name", "cli", "--max_length", "64"]))
    from_cli = [json.loads(line) for line in (tmp_path / "train.scored.cli.json").read_text().splitlines()]
    from_api = score_records(QA_ROWS, tiny_lm, template="auto", max_length=64)
    assert [{k: v for k, v in r.items() if k != "teacher_scores"} for r in from_api] == QA_ROWS  # copies, all fields
    assert "teacher_scores" not in QA_ROWS[0]  # the input is not modified
    for api_row, cli_row in zip(from_api, from_cli):
        assert api_row["teacher_scores"] == pytest.approx(cli_row["teacher_scores"], abs=1e-5)
    # an independent recomputation: query likelihood of row 1's positive, one unpadded forward
    ql = score_records(QA_ROWS[1:2], tiny_lm, template="query_likelihood")[0]["teacher_scores"]
    enc = lambda text: tiny_lm.tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    from llm_embedder.lm.templates import get_template
    t = get_template("query_likelihood")
    row = QA_ROWS[1]
    expected = reference_score(tiny_lm.model, enc(t.render_prompt(key=row["pos"][0], query=row["query"])),
                               enc(t.render_target(query=row["query"])))
    assert ql[0] == pytest.approx(expected, abs=1e-4)


def test_build_plan_takes_a_list_and_checks_it_like_a_file(tiny_lm):
    plan = build_plan(QA_ROWS, tiny_lm.tokenizer)
    assert plan.stats["rows"] == 3 and len(plan.pairs) == 4 * 2 + 3 + 2
    with pytest.raises(UserError, match=r"<records>:2: task: missing"):
        build_plan([QA_ROWS[0], {k: v for k, v in QA_ROWS[1].items() if k != "task"}], tiny_lm.tokenizer)
    with pytest.raises(UserError, match=r"<records>:1: query"):
        build_plan([{"query": "", "pos": ["k"], "task": "qa", "answers": ["a"]}], tiny_lm.tokenizer)


def test_teacher_scores_from_pairs_by_hand(tiny_lm):
    plan = build_plan(QA_ROWS[1:3], tiny_lm.tokenizer)  # 3 keys x 1 answer, 2 keys x 1 answer
    assert teacher_scores_from_pairs(plan, [1.0, 2.0, 3.0, 4.0, 5.0]) == [[1.0, 2.0, 3.0], [4.0, 5.0]]
    two = build_plan(QA_ROWS[:1], tiny_lm.tokenizer)  # 4 keys x 2 answers, pairs key-major
    assert teacher_scores_from_pairs(two, [0, 2, 1, 1, -1, 3, 5, 5], "mean") == [[1, 1, 1, 5]]
    assert teacher_scores_from_pairs(two, [0, 2, 1, 1, -1, 3, 5, 5], "max") == [[2, 1, 3, 5]]
    with pytest.raises(ValueError, match="scores for"):
        teacher_scores_from_pairs(two, [0.0])


def test_help_shows_no_empty_defaults(capsys):
    with pytest.raises(SystemExit):
        lm_run.build_parser().parse_args(["--help"])
    out = capsys.readouterr().out
    assert "(default: None)" not in out and "(default: False)" not in out
    assert "(default: smollm2)" in out and "(default: 1024)" in out
