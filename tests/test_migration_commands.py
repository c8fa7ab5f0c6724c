"""Each seed system's documented commands run here unchanged but for paths, model names and budgets
(``--max_steps 1``, small batches, no GPU-only flags), on the shipped toy data with tiny models."""
from __future__ import annotations

import json

import pytest
from test_arguments_eos import tiny_decoder  # noqa: F401  (fixture: a tiny GPT-2 built offline)

from llm_embedder.training.run import main as run_dense

TOY = "llm-embedder:llm_embedder_toy"


@pytest.mark.slow
def test_reference_llm_embedder_command(tiny_bert_dir, tmp_path, repo_root, monkeypatch):
    """The reference's scripts/llm-embedder.sh (8 GPUs, batch 100, 10000 steps, DeepSpeed) on one CPU."""
    monkeypatch.setenv("LLM_EMBEDDER_DATA", str(repo_root / "data"))
    out = tmp_path / "llm-embedder"
    run_dense(["--train_data", f"{TOY}/chat.json", f"{TOY}/convsearch.json", f"{TOY}/lrlm.json", f"{TOY}/qa.json",
               f"{TOY}/tool.json", f"{TOY}/tool.json", f"{TOY}/icl.json",
               "--output_dir", str(out), "--save_steps", "1", "--max_steps", "1", "--logging_steps", "100",
               "--inbatch_same_dataset", "epoch", "--use_train_config", "--gradient_checkpointing",
               "--per_device_train_batch_size", "2", "--version", "llm-embedder", "--learning_rate", "5e-6",
               "--data_root", str(repo_root / "data"), "--query_encoder", str(tiny_bert_dir), "--use_cpu"])
    assert (out / "checkpoint-1").is_dir() and (out / "model.safetensors").is_file()  # --save_steps alone saved
    settings = json.loads((out / "llm_embedder.json").read_text())
    assert settings["instructions"], "the reference's default --add_instruction true stores the task instructions"


@pytest.mark.slow
def test_evaluation_follows_save_steps_when_an_eval_file_is_given(tiny_bert_dir, tmp_path):
    out, eval_data = tmp_path / "run", tmp_path / "eval.json"
    eval_data.write_text("".join(json.dumps({"query": q, "pos": [p], "neg": ["violins have four strings", "cats purr"]}) + "\n"
                                 for q, p in [("capital of france", "paris"), ("what orbits the earth", "the moon")]))
    run_dense(["--query_encoder", str(tiny_bert_dir), "--train_data", f"{TOY}/qa.json", "--eval_data", str(eval_data),
               "--eval_on_groups", "--metrics", "mrr", "--cutoffs", "1", "--key_max_length", "32", "--output_dir", str(out), "--save_steps", "1",
               "--max_steps", "2", "--train_group_size", "2", "--per_device_train_batch_size", "2", "--use_cpu"])
    history = json.loads((out / "metrics.json").read_text())
    history = history["history"] if isinstance(history, dict) else history
    assert [h["step"] for h in history if "eval_mrr@1" in h][:2] == [1, 2]


@pytest.mark.slow
def test_tevatron_v1_train_command(tiny_bert_dir, tmp_path):
    out = tmp_path / "model_msmarco"
    run_dense(["--output_dir", str(out), "--model_name_or_path", str(tiny_bert_dir), "--save_steps", "1",
               "--train_dir", f"{TOY}/qa.json", "--per_device_train_batch_size", "2", "--train_n_passages", "2",
               "--learning_rate", "5e-6", "--q_max_len", "16", "--p_max_len", "32", "--max_steps", "1",
               "--logging_steps", "500", "--overwrite_output_dir", "--use_cpu"])
    settings = json.loads((out / "llm_embedder.json").read_text())
    assert (settings["query_max_length"], settings["key_max_length"]) == (16, 32)
    assert (out / "checkpoint-1").is_dir()


@pytest.mark.slow
def test_tevatron_v2_train_encode_search_commands(tiny_decoder, tmp_path, capsys):  # noqa: F811
    from llm_embedder.cli import main as cli

    model = tmp_path / "retriever-mistral"
    run_dense(["--output_dir", str(model), "--model_name_or_path", str(tiny_decoder), "--lora",
               "--lora_target_modules", "c_attn,c_proj", "--save_steps", "1", "--dataset_path", f"{TOY}/qa.json",
               "--query_prefix", "Query: ", "--passage_prefix", "Passage: ", "--pooling", "eos", "--append_eos_token",
               "--normalize", "--temperature", "0.01", "--per_device_train_batch_size", "2",
               "--train_group_size", "2", "--learning_rate", "1e-4", "--query_max_len", "16",
               "--passage_max_len", "32", "--max_steps", "1", "--logging_steps", "10", "--overwrite_output_dir",
               "--gradient_accumulation_steps", "1", "--use_cpu"])
    settings = json.loads((model / "llm_embedder.json").read_text())
    assert settings["append_eos"] and settings["pooling_method"] == "eos" and settings["normalize"]
    assert settings["instructions"]["qa"] == {"query": "Query: ", "key": "Passage: "}
    from llm_embedder.tasks import get_task

    assert get_task("qa").query_instruction != "Query: "  # the prefixes are the run's, the registry is untouched

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"docid": f"d{i}", "title": "", "text": t}) + "\n"
                              for i, t in enumerate(["the moon orbits earth", "paris is capital of france",
                                                     "cats purr", "violins have four strings", "the earth"])))
    queries = tmp_path / "dev.json"
    queries.write_text('{"query_id": "q1", "query": "what orbits earth"}\n{"query_id": "q2", "query": "capital of france"}\n')
    common = ["--model_name_or_path", str(model), "--per_device_eval_batch_size", "4", "--cache_dir", str(tmp_path / "c")]
    assert cli(["encode", *common, "--encode_is_query", "--query_max_len", "16", "--dataset_path", str(queries),
                "--encode_output_path", str(tmp_path / "query-dev.pkl")]) == 0
    for shard in (0, 1):
        assert cli(["encode", *common, "--passage_max_len", "32", "--dataset_path", str(corpus),
                    "--dataset_number_of_shards", "2", "--dataset_shard_index", str(shard),
                    "--encode_output_path", str(tmp_path / f"corpus_emb.{shard}.pkl")]) == 0
    meta = json.loads((tmp_path / "query-dev.json").read_text())
    assert meta["instruction"] == "Query: "  # the saved prefix, without passing it again
    run = tmp_path / "run.dev.txt"
    assert cli(["search", "--query_reps", str(tmp_path / "query-dev.pkl"), "--passage_reps", str(tmp_path / "corpus_emb.*.pkl"),
                "--depth", "3", "--batch_size", "64", "--save_text", "--save_ranking_to", str(run)]) == 0
    lines = [line.split("\t") for line in run.read_text().splitlines()]
    assert len(lines) == 6 and {q for q, _, _ in lines} == {"q1", "q2"}
    assert {d for _, d, _ in lines} <= {f"d{i}" for i in range(5)}
