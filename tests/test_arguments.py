"""The shared argument layer: peer aliases, no prefix matching, bare booleans, comma lists, one-line errors."""
from __future__ import annotations

import subprocess
import sys

import pytest

from llm_embedder.argparsing import peer_aliases
from llm_embedder.training.arguments import DataArguments, ModelArguments, RetrievalTrainingArguments
from llm_embedder.training.run import build_parser, parse_args

DATACLASSES = (ModelArguments, DataArguments, RetrievalTrainingArguments)


def _parsers():
    from llm_embedder.convert.beir import build_parser as convert_beir
    from llm_embedder.lm.run import build_parser as lm_score
    from llm_embedder.retrieval.encode_cli import build_parser as encode
    from llm_embedder.retrieval.eval_cli import build_parser as eval_retrieval
    from llm_embedder.retrieval.search_cli import build_parser as search
    from llm_embedder.validate import build_parser as validate

    from llm_embedder.convert.lrlm import build_parser as convert_lrlm
    from llm_embedder.convert.tevatron import build_parser as convert_tevatron
    from llm_embedder.lrlm.eval_cli import build_parser as eval_lm

    return {"convert_lrlm": convert_lrlm(), "convert_tevatron": convert_tevatron(), "eval_lm": eval_lm(),
            "run_dense": build_parser(), "eval_retrieval": eval_retrieval(), "lm_score": lm_score(),
            "encode": encode(), "search": search(), "validate": validate(), "convert_beir": convert_beir()}


# Peer flags documented in Tevatron v1/v2 and FlagEmbedding training commands -> (value, our field, parsed value).
TRAIN_PEER_FLAGS = {
    "--train_n_passages": ("4", "train_group_size", 4),
    "--negatives_x_device": (None, "negative_cross_device", True),
    "--negatives_cross_device": (None, "negative_cross_device", True),
    "--q_max_len": ("16", "query_max_length", 16),
    "--p_max_len": ("64", "key_max_length", 64),
    "--query_max_len": ("16", "query_max_length", 16),
    "--passage_max_len": ("64", "key_max_length", 64),
    "--pooling": ("eos", "pooling_method", "eos"),
    "--sentence_pooling_method": ("cls", "pooling_method", "cls"),
    "--temperature": ("0.02", "cos_temperature", 0.02),
    "--normalize": (None, "normalize", True),
    "--untie_encoder": (None, "tie_encoders", False),
    "--lora": (None, "lora_rank", 8),
    "--lora_r": ("4", "lora_rank", 4),
    "--lora_target_modules": ("q_proj,k_proj,v_proj", "lora_target_modules", ["q_proj", "k_proj", "v_proj"]),
    "--query_prefix": ("Query: ", "query_prefix", "Query: "),
    "--passage_prefix": ("Passage: ", "passage_prefix", "Passage: "),
    "--grad_cache": (None, "grad_cache_key_chunk_size", 32),
    "--gc_p_chunk_size": ("16", "grad_cache_key_chunk_size", 16),
    "--gc_q_chunk_size": ("4", "grad_cache_query_chunk_size", 4),
    "--dataset_name": ("json", "dataset_name", "json"),
    "--dataset_split": ("train", "dataset_split", "train"),
    "--dataset_path": ("x.json", "train_data", ["x.json"]),
    "--train_dir": ("x.json", "train_data", ["x.json"]),
    "--cache_dir": ("/tmp/hf", "cache_dir", "/tmp/hf"),
    "--append_eos_token": (None, "append_eos", True),
    "--append_eos": (None, "append_eos", True),
    "--group_size": ("3", "train_group_size", 3),
    "--query_encoder": ("minilm", "model_name_or_path", "minilm"),
    "--evaluation_strategy": ("no", "eval_strategy", "no"),
    "--use_train_config": (None, "use_train_config", True),
    "--version": ("llm-embedder", "version", "llm-embedder"),
    "--tokenizer_name": ("minilm", "tokenizer_name", "minilm"),
}


def _field(parsed, name):
    for obj in parsed:
        if hasattr(obj, name):
            return getattr(obj, name)
    raise AttributeError(name)


@pytest.mark.parametrize("flag", sorted(TRAIN_PEER_FLAGS))
def test_documented_peer_training_flag_parses_to_our_field(flag):
    value, field, expected = TRAIN_PEER_FLAGS[flag]
    argv = ["--output_dir", "out", flag] + ([value] if value is not None else [])
    parsed = parse_args(argv)
    assert _field(parsed, field) == expected
    assert field in parsed[2].explicit_args or flag in ("--lora", "--grad_cache")


def test_every_declared_alias_is_in_the_documented_list_or_tested_here():
    declared = {flag for _, flag, _ in peer_aliases(DATACLASSES)}
    assert declared, "no peer aliases declared"
    missing = declared - set(TRAIN_PEER_FLAGS) - {"--normalize_embeddings"}
    assert not missing, f"aliases without a parse test: {missing}"


@pytest.mark.parametrize("argv, field, expected", [
    (["--encode_is_query"], "side", "query"),
    (["--encode_output_path", "q.pkl"], "output", "q.pkl"),
    (["--dataset_number_of_shards", "4", "--dataset_shard_index", "1"], "num_shards", 4),
    (["--dataset_shard_index", "1"], "shard_index", 1),
    (["--model_name_or_path", "minilm"], "model", "minilm"),
    (["--dataset_path", "corpus.jsonl"], "input", "corpus.jsonl"),
    (["--per_device_eval_batch_size", "8"], "batch_size", 8),
])
def test_tevatron_encode_flags(argv, field, expected):
    from llm_embedder.retrieval.encode_cli import build_parser as encode

    base = {"--input": ["--input", "c.jsonl"], "--output": ["--output", "o"]}
    for option, default in base.items():
        if not any(a in argv for a in encode()._option_string_actions[option].option_strings):
            argv = argv + default
    assert getattr(encode().parse_args(argv), field) == expected


def test_tevatron_search_flags(tmp_path):
    from llm_embedder.retrieval.search_cli import build_parser as search

    args = search().parse_args(["--query_reps", "q.pkl", "--passage_reps", "corpus_emb.*.pkl", "--depth", "10",
                                "--batch_size", "-1", "--save_text", "--save_ranking_to", "rank.txt"])
    assert (args.query_emb, args.key_emb, args.output, args.format, args.query_chunk) == \
        ("q.pkl", ["corpus_emb.*.pkl"], "rank.txt", "tsv", -1)


def test_search_expands_tevatron_globs(tmp_path):
    from llm_embedder.errors import UserError
    from llm_embedder.retrieval.search_cli import expand_shards

    for i in (1, 0):
        (tmp_path / f"corpus_emb.{i}.npy").write_bytes(b"")
    assert expand_shards([str(tmp_path / "corpus_emb.*.pkl")]) == [str(tmp_path / f"corpus_emb.{i}.npy") for i in (0, 1)]
    with pytest.raises(UserError, match="no file matches"):
        expand_shards([str(tmp_path / "other.*.npy")])


def _long_options(parser):
    return sorted({o for o in parser._option_string_actions if o.startswith("--") and o != "--help"})


@pytest.mark.parametrize("name", ["run_dense", "eval_retrieval", "lm_score", "encode", "search", "validate", "convert_beir",
                                  "convert_lrlm", "convert_tevatron", "eval_lm"])
def test_no_option_parses_by_prefix(name, capsys):
    parser = _parsers()[name]
    options = _long_options(parser)
    assert not parser.allow_abbrev
    checked = 0
    for option in options:
        prefix = option[:-2]
        if len(prefix) < 4 or any(o == prefix for o in options):
            continue
        with pytest.raises(SystemExit) as exit_info:
            parser.parse_known_args([prefix, "1"])
        assert exit_info.value.code == 2
        assert f"unknown argument {prefix}" in capsys.readouterr().err
        checked += 1
    assert checked > 3


def test_help_lists_every_alias(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag in list(TRAIN_PEER_FLAGS) + ["--normalize_embeddings"]:
        assert f"{flag} " in text or f"{flag}," in text, flag


def test_comma_and_space_lists_and_bare_booleans():
    m, d, t = parse_args(["--output_dir", "o", "--cutoffs", "1,5", "10", "--metrics=ndcg,recall", "--normalize",
                          "--add_instruction", "--negative_cross_device", "false"])
    assert d.cutoffs == [1, 5, 10] and d.metrics == ["ndcg", "recall"]
    assert m.normalize is True and m.add_instruction is True and t.negative_cross_device is False
    assert parse_args(["--output_dir", "o", "--untie_encoder", "false"])[0].tie_encoders is True


def test_a_list_value_that_names_an_existing_path_with_a_comma_stays_whole(tmp_path):
    folder = tmp_path / "lr=1e-4,warmup=0.1"
    folder.mkdir()
    (folder / "a.json").write_text("")
    path = str(folder / "a.json")
    assert parse_args(["--output_dir", "o", "--train_data", path])[1].train_data == [path]
    assert parse_args(["--output_dir", "o", f"--train_data={path}"])[1].train_data == [path]
    missing = str(tmp_path / "x.json") + "," + str(tmp_path / "y.json")  # not a path: a list of two
    assert parse_args(["--output_dir", "o", "--train_data", missing])[1].train_data == missing.split(",")


def test_explicit_args_records_only_what_the_user_gave():
    _, _, t = parse_args(["--output_dir", "o", "--train_n_passages", "2", "--learning_rate=1e-5"])
    assert t.explicit_args == frozenset({"output_dir", "train_group_size", "learning_rate"})


def test_explicit_args_from_a_json_file(tmp_path):
    path = tmp_path / "args.json"
    path.write_text('{"output_dir": "o", "train_group_size": 3}')
    _, d, t = parse_args([str(path)])
    assert d.train_group_size == 3 and t.explicit_args == frozenset({"output_dir", "train_group_size"})


@pytest.mark.parametrize("argv, expected", [
    (["run_dense.py", "--train_group_sise", "4"], "unknown argument --train_group_sise (did you mean --train_group_size?)"),
    (["-m", "llm_embedder.cli", "convert", "beir", "x", "--ouput_dir", "o"], "unknown argument --ouput_dir (did you mean --output_dir?)"),
    (["-m", "evaluation.eval_retrieval", "--eval_data", "x", "--cutofs", "1"], "unknown argument --cutofs (did you mean --cutoffs?)"),
    (["run_lm_score.py", "--eval_data", "x", "--save_nam", "a"], "unknown argument --save_nam (did you mean --save_name?)"),
])
def test_unknown_flag_is_one_line_naming_it_and_the_closest(argv, expected, repo_root):
    result = subprocess.run([sys.executable, *argv], cwd=repo_root, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], result.stderr


def test_other_argparse_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--output_dir", "o", "--train_group_size", "many"])
    assert exit_info.value.code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


@pytest.mark.parametrize("argv, message", [
    (["--dataset_name", "Tevatron/msmarco-passage"], "hub datasets are not read directly"),
    (["--dataset_split", "dev"], "training reads the train split only"),
    (["--tokenizer_name", "bert-base-uncased"], "--tokenizer_name"),
])
def test_tevatron_data_flags_that_cannot_apply_are_refused(argv, message):
    from llm_embedder.errors import UserError

    with pytest.raises(UserError, match=message):
        parse_args(["--output_dir", "o", *argv])
