"""The reference's defaults and behaviours: --save_steps implies step saving, evaluation follows saving,
--do_train/--do_eval select phases, answers-only nq evaluation, run_lm_score's default --save_name."""
from __future__ import annotations

import json

import pytest

from llm_embedder.errors import UserError
from llm_embedder.training.run import parse_args, phases


def test_reference_defaults_for_reference_named_arguments():
    m, d, t = parse_args(["--output_dir", "o"])
    assert (t.learning_rate, t.warmup_ratio, t.weight_decay, t.logging_steps) == (5e-6, 0.1, 0.01, 100)
    assert (d.hits, d.cutoffs, m.add_instruction, t.negative_cross_device) == (200, [1, 5, 10, 100], True, True)
    assert t.save_strategy == "no" and t.eval_strategy == "no"


def test_save_steps_implies_step_saving_and_eval_follows_it():
    _, _, t = parse_args(["--output_dir", "o", "--save_steps", "7"])
    assert (t.save_strategy, t.save_steps, t.eval_strategy) == ("steps", 7, "no")  # no eval file: no evaluation
    _, _, t = parse_args(["--output_dir", "o", "--save_steps", "7", "--eval_data", "e.json"])
    assert (t.save_strategy, t.eval_strategy, t.eval_steps) == ("steps", "steps", 7)
    _, _, t = parse_args(["--output_dir", "o", "--save_steps", "7", "--eval_data", "e.json", "--eval_steps", "3"])
    assert t.eval_steps == 3
    _, _, t = parse_args(["--output_dir", "o", "--save_steps", "7", "--eval_data", "e.json", "--eval_strategy", "no"])
    assert t.eval_strategy == "no"
    _, _, t = parse_args(["--output_dir", "o", "--save_steps", "7", "--save_strategy", "no"])
    assert t.save_strategy == "no"  # an explicit strategy wins


@pytest.mark.parametrize("argv, expected", [
    (["--train_data", "t.json"], (True, False)),
    (["--train_data", "t.json", "--eval_data", "e.json"], (True, True)),
    (["--train_data", "t.json", "--eval_data", "e.json", "--do_train"], (True, False)),
    (["--train_data", "t.json", "--eval_data", "e.json", "--do_eval"], (False, True)),
    (["--train_data", "t.json", "--eval_data", "e.json", "--do_train", "--do_eval"], (True, True)),
])
def test_do_train_and_do_eval_select_phases(argv, expected):
    _, d, t = parse_args(["--output_dir", "o", *argv])
    assert phases(d, t) == expected


@pytest.mark.parametrize("argv, message", [
    (["--eval_data", "e.json", "--do_train"], "--do_train: needs --train_data"),
    (["--train_data", "t.json", "--do_eval"], "--do_eval: needs --eval_data"),
    (["--train_data", "t.json", "--do_train", "false"], "both false"),
])
def test_do_flags_that_cannot_apply_are_refused(argv, message):
    _, d, t = parse_args(["--output_dir", "o", *argv])
    with pytest.raises(UserError, match=message):
        phases(d, t)


def test_run_lm_score_save_name_defaults_to_the_lm_name():
    from llm_embedder.lm.run import build_parser, check_args

    args = build_parser().parse_args(["--eval_data", "x.json"])
    check_args(args)
    assert args.save_name == "smollm2"
    args = build_parser().parse_args(["--eval_data", "x.json", "--model_name_or_path", "/models/Qwen2-0.5B/"])
    check_args(args)
    assert args.save_name == "Qwen2-0.5B"


TEXTS = ["cats purr and sleep all day", "paris is the capital of france", "the moon orbits the earth",
         "violins have four strings", "rain falls from clouds"]


@pytest.fixture()
def answers_only(tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"_id": f"d{i}", "title": "", "text": t}) + "\n" for i, t in enumerate(TEXTS)))
    records = tmp_path / "nq.json"
    records.write_text("".join(json.dumps(r) + "\n" for r in [
        {"query": "what is the capital of france", "answers": ["Paris"]},
        {"query": "what orbits the earth", "answers": ["moon"]}]))
    return records, corpus


def test_nq_evaluation_accepts_answers_only_records(tmp_path, answers_only, tiny_bert_dir):
    from llm_embedder.retrieval.eval_cli import main as eval_main

    records, corpus = answers_only
    out = tmp_path / "out"
    assert eval_main(["--eval_data", str(records), "--corpus", str(corpus), "--query_encoder", str(tiny_bert_dir),
                      "--metrics", "nq", "--cutoffs", "5", "--hits", "5", "--output_dir", str(out),
                      "--cache_dir", str(tmp_path / "cache")]) == 0
    summary = json.loads(next(out.glob("*.eval.*.json")).read_text())
    assert summary["metrics"] == {"nq@5": 1.0}  # every answer is in the 5-row corpus
    with pytest.raises(SystemExit):  # other metrics still need positives
        eval_main(["--eval_data", str(records), "--corpus", str(corpus), "--query_encoder", str(tiny_bert_dir),
                   "--metrics", "nq", "recall", "--cutoffs", "5", "--hits", "5"])


def test_eval_instructions_default_to_the_saved_models_own(tmp_path, answers_only, tiny_bert_dir):
    from llm_embedder.modeling.encoder import DenseEncoder
    from llm_embedder.retrieval.eval_cli import main as eval_main

    saved = tmp_path / "saved"
    DenseEncoder.from_pretrained(tiny_bert_dir).save_pretrained(saved, instructions={"qa": ("Query: ", "Passage: ")})
    records, corpus = answers_only
    for flag, expected in (([], ["Query: ", "Passage: "]), (["--add_instruction", "false"], ["", ""])):
        out = tmp_path / f"out{len(flag)}"
        assert eval_main(["--eval_data", str(records), "--corpus", str(corpus), "--query_encoder", str(saved), *flag,
                          "--metrics", "nq", "--cutoffs", "1", "--hits", "1", "--output_dir", str(out),
                          "--cache_dir", str(tmp_path / "cache")]) == 0
        assert json.loads(next(out.glob("*.eval.*.json")).read_text())["instructions"] == expected


def test_reference_data_root_sets_where_llm_embedder_paths_resolve(tmp_path, monkeypatch):
    from llm_embedder.resources import resolve_data_path

    monkeypatch.setenv("LLM_EMBEDDER_DATA", "/nowhere")
    parse_args(["--output_dir", "o", "--data_root", str(tmp_path)])
    assert resolve_data_path("llm-embedder:x/train.json") == tmp_path / "x" / "train.json"


@pytest.mark.parametrize("argv, message", [
    (["--data_root", "/no/such/folder"], "--data_root: /no/such/folder is not a folder"),
    (["--use_train_config", "false"], "per-task recipes always apply"),
    (["--version", "bge"], "only the llm-embedder instructions are built in"),
])
def test_reference_flags_we_cannot_honour_are_refused(argv, message):
    with pytest.raises(UserError, match=message):
        parse_args(["--output_dir", "o", *argv])
