"""run_dense.py end to end on a tiny model: training, saving, per-task logging, resume, bad input."""
from __future__ import annotations

import json
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from llm_embedder.training.run import main as run_dense

TOY = "llm-embedder:llm_embedder_toy"


@pytest.fixture(scope="module")
def tiny_bert_nodrop(tiny_bert_nodrop_dir):
    return tiny_bert_nodrop_dir


def base_args(model_dir, out, *extra):
    return ["--model_name_or_path", str(model_dir), "--output_dir", str(out), "--per_device_train_batch_size", "4",
            "--train_group_size", "3", "--logging_steps", "1", "--query_max_length", "32", "--key_max_length", "32",
            "--learning_rate", "1e-3", "--seed", "7", "--use_cpu", "--disable_tqdm", "True", *extra]


def weights(model_dir):
    return load_file(str(model_dir / "model.safetensors"))


@pytest.mark.slow
def test_multitask_training_saves_a_sentence_transformers_model(tiny_bert_nodrop, tmp_path):
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel

    from llm_embedder.modeling.encoder import DenseEncoder

    out = tmp_path / "run"
    run_dense(base_args(tiny_bert_nodrop, out, "--train_data", f"{TOY}/qa.json", f"{TOY}/chat.json",
                        "--max_steps", "4", "--add_instruction"))
    info = json.loads((out / "run_args.json").read_text())
    assert info["versions"]["torch"] == torch.__version__
    recipes = json.loads((out / "recipes.json").read_text())  # the resolved recipe of each task, with sources
    assert recipes["qa"]["losses"][1]["name"] == "stable_distill" and recipes["qa"]["sources"]["stable_distill"] == "recipe"
    assert recipes["chat"]["losses"][0] == {"name": "infonce", "weight": 0.0}
    state = json.loads((out / "trainer_state.json").read_text()) if (out / "trainer_state.json").exists() else None
    texts = ["what is the capital of France?", "Paris is the capital of France."]
    ours = DenseEncoder.from_pretrained(out).encode(texts, side="query", instruction="Represent this query for retrieving relevant documents: ", show_progress=False)
    st = SentenceTransformer(str(out), device="cpu").encode(texts, prompt_name="qa_query")
    np.testing.assert_allclose(ours, st, atol=1e-5)
    assert AutoModel.from_pretrained(out) is not None
    assert not np.allclose(weights(out)["embeddings.word_embeddings.weight"].numpy(),
                           weights(tiny_bert_nodrop)["embeddings.word_embeddings.weight"].numpy()), "training changed nothing"
    del state


def test_each_task_logs_its_own_losses(tiny_bert_nodrop, tmp_path):
    from llm_embedder.training.run import build_trainer, parse_args

    out = tmp_path / "run"
    trainer = build_trainer(*parse_args(base_args(tiny_bert_nodrop, out, "--train_data", f"{TOY}/qa.json",
                                                  f"{TOY}/chat.json", "--max_steps", "4")))
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    tasks = {key.split("_", 1)[1] for entry in logged for key in entry if key.startswith("loss_")}
    assert tasks == {"qa", "chat"}
    chat = [entry for entry in logged if "loss_chat" in entry]
    # chat's recipe is KL distillation only: no contrastive term
    assert all(entry["contrastive_chat"] == 0.0 and entry["distill_chat"] > 0 for entry in chat)


def test_examples_an_epoch_leaves_out_are_reported(tiny_bert_nodrop, tmp_path, caplog):
    from llm_embedder.training.run import build_trainer, parse_args

    trainer = build_trainer(*parse_args(base_args(tiny_bert_nodrop, tmp_path / "run", "--train_data", f"{TOY}/qa.json",
                                                  "--per_device_train_batch_size", "3", "--max_steps", "1")))
    with caplog.at_level("WARNING"):
        sampler = trainer.make_batch_sampler()
    assert sampler.drop_last and sampler.dropped == [2]  # 8 toy records, batches of 3
    assert "qa.json: 2 of 8 examples are left out of each epoch" in caplog.text


def test_data_seed_alone_decides_the_shuffle(tiny_bert_nodrop, tmp_path):
    """HF's ``--data_seed`` seeds the batch order apart from ``--seed`` (3iter.sh gives each round its own, so
    rounds of less than an epoch train on different queries); without it ``--seed`` decides."""
    from llm_embedder.training.run import build_trainer, parse_args

    def plan(*extra):
        trainer = build_trainer(*parse_args(base_args(tiny_bert_nodrop, tmp_path / "run", "--train_data",
                                                      f"{TOY}/qa.json", "--per_device_train_batch_size", "2",
                                                      "--max_steps", "1", *extra)))
        return trainer.make_batch_sampler().global_batches(0)

    assert plan("--seed", "1", "--data_seed", "5") == plan("--seed", "2", "--data_seed", "5")
    assert plan("--seed", "1", "--data_seed", "5") != plan("--seed", "1", "--data_seed", "6")
    assert plan("--seed", "5") == plan("--seed", "1", "--data_seed", "5")


@pytest.mark.slow
def test_resume_from_checkpoint_continues_the_same_run(tiny_bert_nodrop, tmp_path):
    common = ["--train_data", f"{TOY}/qa.json", f"{TOY}/tool.json", "--max_steps", "4", "--save_strategy", "steps",
              "--save_steps", "2"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run_dense(base_args(tiny_bert_nodrop, straight, *common))
    # the interrupted run: the same arguments (same LR schedule), stopped right after its step-2 checkpoint
    from transformers import TrainerCallback

    from llm_embedder.training.run import build_trainer, parse_args

    class StopAtStep2(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            control.should_training_stop = state.global_step >= 2

    interrupted = build_trainer(*parse_args(base_args(tiny_bert_nodrop, resumed, *common)))
    interrupted.add_callback(StopAtStep2())
    interrupted.train()
    assert (resumed / "checkpoint-2").is_dir() and not (resumed / "checkpoint-4").exists()
    run_dense(base_args(tiny_bert_nodrop, resumed, *common, "--resume_from_checkpoint", str(resumed / "checkpoint-2")))
    a, b = weights(straight), weights(resumed)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-6, rtol=0, msg=name)
    losses = lambda d: [e["loss"] for e in json.loads((d / "checkpoint-4" / "trainer_state.json").read_text())["log_history"] if "loss" in e]
    assert losses(straight)[2:] == pytest.approx(losses(resumed)[2:], abs=1e-6)


@pytest.mark.parametrize("record, message", [
    ({"query": "q", "pos": ["a"], "neg": ["b"], "teacher_scores": [1.0]}, "teacher_scores: 1 scores for 2 keys"),
    ({"query": "q", "pos": ["a"], "neg": ["b"], "teacher_scores": [1.0, float("nan")]}, "NaN"),
    ({"query": "q", "task": "chat", "answers": ["x"]}, "history"),
    ({"query": "q", "pos": ["a"], "task": "no_such_task"}, "unknown task 'no_such_task'"),
])
def test_bad_training_input_is_one_line_before_training(tmp_path, capsys, record, message):
    bad = tmp_path / "bad.json"
    good = {"query": "fine", "pos": ["a"], "neg": ["b"]}
    bad.write_text(json.dumps(good) + "\n" + json.dumps(record) + "\n")
    with pytest.raises(SystemExit) as exit_info:  # the model path does not exist: validation must come first
        run_dense(["--train_data", str(bad), "--output_dir", str(tmp_path / "o"),
                   "--model_name_or_path", str(tmp_path / "model_is_never_loaded")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {bad}:2:") and message in err, err
    assert "Traceback" not in err and not (tmp_path / "o" / "run_args.json").exists()


@pytest.mark.slow
def test_grad_cache_takes_the_same_sgd_step(tiny_bert_nodrop, tmp_path):
    """One plain SGD step (weight change = -lr * gradient, so a scaled gradient would show) through the Trainer."""
    common = ["--train_data", f"{TOY}/qa.json", "--max_steps", "1", "--optim", "sgd", "--max_grad_norm", "0",
              "--lr_scheduler_type", "constant", "--weight_decay", "0"]
    plain, cached = tmp_path / "plain", tmp_path / "cached"
    run_dense(base_args(tiny_bert_nodrop, plain, *common))
    run_dense(base_args(tiny_bert_nodrop, cached, *common, "--grad_cache_query_chunk_size", "3",
                        "--grad_cache_key_chunk_size", "5"))
    initial = weights(tiny_bert_nodrop)
    a, b = weights(plain), weights(cached)
    step_a = {n: a[n] - initial[n] for n in a}
    step_b = {n: b[n] - initial[n] for n in a}
    scale = max(float(d.abs().max()) for d in step_a.values())
    assert scale > 1e-5
    for factor, expected in ((1.0, True), (0.5, False)):  # the guard: half the gradient would not pass
        same = all(torch.allclose(step_b[n], factor * step_a[n], rtol=1e-3, atol=1e-4 * scale) for n in a)
        assert same is expected, factor
