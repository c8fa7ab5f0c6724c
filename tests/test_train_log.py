"""train_log.jsonl (issue 11, point 5): per-task losses of every logging step saved in the output folder,
including the last step of a run shorter than --logging_steps; a resumed run keeps one history."""
from __future__ import annotations

import pytest

from llm_embedder.training.run import build_trainer, parse_args
from llm_embedder.training.train_log import TRAIN_LOG, read_train_log

TOY = "llm-embedder:llm_embedder_toy"


def args(model_dir, out, *extra):
    return ["--model_name_or_path", str(model_dir), "--output_dir", str(out), "--per_device_train_batch_size", "4",
            "--train_group_size", "3", "--query_max_length", "32", "--key_max_length", "32", "--seed", "7",
            "--use_cpu", "--disable_tqdm", "True", "--train_data", f"{TOY}/qa.json", f"{TOY}/chat.json", *extra]


def test_a_three_step_run_saves_its_per_task_losses(tiny_bert_nodrop_dir, tmp_path):
    out = tmp_path / "run"
    trainer = build_trainer(*parse_args(args(tiny_bert_nodrop_dir, out, "--max_steps", "3")))  # default logging_steps 10
    trainer.train()
    log = read_train_log(out)
    steps = [r for r in log if "loss" in r]
    assert [r["step"] for r in steps] == [3]  # the final step is logged although 3 < logging_steps
    tasks = {k.split("_", 1)[1] for r in steps for k in r if k.startswith("loss_")}
    assert tasks <= {"qa", "chat"} and tasks  # the tasks the three batches drew
    assert all(isinstance(r[f"distill_{t}"], float) for r in steps for t in tasks)
    assert log[-1]["step"] == 3 and "train_runtime" in log[-1]  # the trainer's summary record
    assert (out / TRAIN_LOG).read_text().count("\n") == len(log)


@pytest.mark.slow
def test_each_logging_step_is_one_line_and_a_new_run_starts_over(tiny_bert_nodrop_dir, tmp_path):
    out = tmp_path / "run"
    for _ in range(2):  # the second run in the same folder must not append to the first one's history
        trainer = build_trainer(*parse_args(args(tiny_bert_nodrop_dir, out, "--max_steps", "4", "--logging_steps", "2")))
        trainer.train()
    steps = [r["step"] for r in read_train_log(out) if "loss" in r]
    assert steps == [2, 4]
    history = [e for e in trainer.state.log_history if "loss" in e]
    assert [r["loss_qa"] if "loss_qa" in r else r["loss_chat"] for r in read_train_log(out) if "loss" in r] == \
        pytest.approx([e["loss_qa"] if "loss_qa" in e else e["loss_chat"] for e in history])
