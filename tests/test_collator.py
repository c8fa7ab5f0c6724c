"""EmbedderCollator: shapes, the batch task's instructions, teacher scores, and the toy files end to end."""
from __future__ import annotations

import pytest
import torch

from llm_embedder import tasks
from llm_embedder.data import EmbedderCollator, TaskBatchSampler, TrainDataset
from llm_embedder.errors import UserError


class RecordingEncoder:
    """The encoder's ``tokenize`` contract with a real HF tokenizer; remembers what it was asked."""

    def __init__(self, tokenizer_dir):
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        self.calls = []

    def tokenize(self, texts, side="query", instruction=""):
        self.calls.append((side, list(texts), instruction))
        return self.tokenizer([instruction + t for t in texts], padding=True, truncation=True,
                              max_length=16 if side == "query" else 24, return_tensors="pt")


@pytest.fixture(scope="module")
def encoder(minilm_dir):
    return RecordingEncoder(minilm_dir)  # only the tokenizer is needed: no model weights are loaded


def items(task="qa", scores=True, n=3, g=4):
    return [{"query": f"query {b}", "keys": [f"key {b}.{j}" for j in range(g)],
             "teacher_scores": [float(b * 10 + j) for j in range(g)] if scores else None,
             "task": task, "dataset": 0, "query_id": b} for b in range(n)]


def test_shapes_order_and_teacher_scores(encoder):
    encoder.calls.clear()
    batch = EmbedderCollator(encoder, add_instruction=False)(items(n=3, g=4))
    assert batch["query_inputs"]["input_ids"].shape[0] == 3
    assert batch["key_inputs"]["input_ids"].shape[0] == 12
    assert batch["key_inputs"]["input_ids"].shape == batch["key_inputs"]["attention_mask"].shape
    assert batch["teacher_scores"].dtype == torch.float32
    assert torch.equal(batch["teacher_scores"], torch.tensor([[0.0, 1, 2, 3], [10, 11, 12, 13], [20, 21, 22, 23]]))
    assert (batch["task"], batch["group_size"]) == ("qa", 4)
    (q_side, queries, q_instr), (k_side, keys, k_instr) = encoder.calls
    assert (q_side, k_side, q_instr, k_instr) == ("query", "key", "", "")
    assert queries == ["query 0", "query 1", "query 2"]
    assert keys[:5] == ["key 0.0", "key 0.1", "key 0.2", "key 0.3", "key 1.0"]  # query-major, positive first


@pytest.mark.parametrize("task", ["qa", "chat", "tool"])
def test_add_instruction_uses_the_batch_tasks_instructions(encoder, task):
    encoder.calls.clear()
    batch = EmbedderCollator(encoder, add_instruction=True)(items(task=task, n=2, g=2))
    query_instruction, key_instruction = tasks.LLM_EMBEDDER_TASKS[task].query_instruction, tasks.LLM_EMBEDDER_TASKS[task].key_instruction
    assert [c[2] for c in encoder.calls] == [query_instruction, key_instruction]
    decoded = encoder.tokenizer.decode(batch["query_inputs"]["input_ids"][0], skip_special_tokens=True)
    assert decoded.startswith(query_instruction.lower().split(":")[0])


def test_no_teacher_scores_gives_none_and_mixed_batches_are_refused(encoder):
    collate = EmbedderCollator(encoder)
    assert collate(items(scores=False))["teacher_scores"] is None
    with pytest.raises(ValueError, match=r"a batch mixes tasks \['chat', 'qa'\]"):
        collate(items("qa", n=2) + items("chat", n=2))
    with pytest.raises(ValueError, match="mixes items with and without teacher_scores"):
        collate(items(scores=True, n=1) + items(scores=False, n=1))
    with pytest.raises(ValueError, match=r"mixes group sizes \[2, 3\]"):
        collate(items(g=2, n=1) + items(g=3, n=1))


def test_default_task_for_items_without_one(encoder):
    bare = [{k: v for k, v in item.items() if k != "task"} for item in items(n=2)]
    assert EmbedderCollator(encoder, default_task="tool")(bare)["task"] == "tool"
    with pytest.raises(ValueError, match="no 'task' and the collator has no default_task"):
        EmbedderCollator(encoder)(bare)


def test_instructions_are_fixed_when_the_collator_is_built(encoder, monkeypatch, tmp_path):
    monkeypatch.setattr(tasks, "_REGISTRY", dict(tasks._REGISTRY))
    monkeypatch.setattr(tasks, "_OVERRIDES", {})
    collate = EmbedderCollator(encoder, add_instruction=True, tasks=["qa"])
    config = tmp_path / "t.json"
    config.write_text('{"qa": {"query_instruction": "changed: "}}')
    tasks.load_task_config(config)
    encoder.calls.clear()
    collate(items("qa", n=1, g=1))
    assert encoder.calls[0][2] == tasks.LLM_EMBEDDER_TASKS["qa"].query_instruction
    assert EmbedderCollator(encoder, add_instruction=True).instructions_for("qa")[0] == "changed: "
    with pytest.raises(UserError, match="--add_instruction: no instructions for task 'chat'"):
        collate(items("chat", n=1, g=1))


def test_a_task_without_instructions_is_refused_with_add_instruction(encoder, monkeypatch):
    monkeypatch.setattr(tasks, "_REGISTRY", dict(tasks._REGISTRY))
    tasks.register_task(tasks.TaskRecipe("bare"))
    with pytest.raises(UserError, match="--add_instruction: task 'bare' has no query_instruction or key_instruction"):
        EmbedderCollator(encoder, add_instruction=True, tasks=["qa", "bare"])
    assert EmbedderCollator(encoder, add_instruction=False, tasks=["bare"])(items("bare", n=1))["task"] == "bare"


def test_six_toy_files_through_sampler_dataset_and_collator(toy_dir, encoder):
    dataset = TrainDataset([toy_dir], train_group_size=3)
    sampler = TaskBatchSampler(dataset.file_sizes, per_device_batch_size=2, world_size=2, rank=1, seed=0)
    collate = EmbedderCollator(encoder, add_instruction=True, tasks=dataset.tasks)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=collate)
    seen = set()
    for batch in loader:
        seen.add(batch["task"])
        assert batch["query_inputs"]["input_ids"].shape[0] == 2
        assert batch["key_inputs"]["input_ids"].shape[0] == 6 and batch["group_size"] == 3
        assert batch["key_inputs"]["input_ids"].shape[1] <= 24  # the encoder's key max length
        if batch["task"] in ("tool", "convsearch"):
            assert batch["teacher_scores"] is None
        else:
            assert batch["teacher_scores"].shape == (2, 3) and torch.isfinite(batch["teacher_scores"]).all()
    assert seen == {"qa", "icl", "chat", "lrlm", "tool", "convsearch"} and len(loader) == 12
