"""EmbedderCollator: turn a task-homogeneous list of dataset items into encoder inputs.

Queries and the flattened keys (query-major, positive first in each group, as the losses expect) are
tokenised by the encoder with the instructions of the batch's task, and teacher scores become a
``[B, G]`` tensor. The instruction table is copied when the collator is built, so dataloader workers
(forked or spawned) use exactly the instructions the main process resolved.
"""
from __future__ import annotations

from typing import Iterable, Mapping

import torch

from ..errors import UserError
from ..tasks import task_instructions


class EmbedderCollator:
    """``collator(items) -> {"query_inputs", "key_inputs", "teacher_scores", "task", "group_size"}``.

    ``encoder`` needs ``tokenize(texts, side="query"|"key", instruction="")`` (DenseEncoder has it).
    With ``add_instruction`` the task's (query, key) instructions from the task registry are used; a task
    with neither instruction is an error, so a run never trains without the instructions it asked for.
    ``tasks`` limits the table to the tasks this run trains on and checks them up front. Items without a
    ``task`` (built by hand; TrainDataset items always have one) get ``default_task``.
    """

    def __init__(self, encoder, add_instruction: bool = False, instructions: Mapping[str, tuple[str, str]] | None = None,
                 tasks: Iterable[str] | None = None, default_task: str | None = None):
        self.encoder = encoder
        self.add_instruction = bool(add_instruction)
        self.default_task = default_task
        table = dict(instructions) if instructions is not None else task_instructions(tasks)
        if tasks is not None:
            missing = [t for t in dict.fromkeys(tasks) if t not in table]
            if missing:
                raise UserError(f"--add_instruction: no instructions for task '{missing[0]}'")
            table = {t: table[t] for t in dict.fromkeys(tasks)}
        if self.add_instruction:
            empty = [t for t, (q, k) in table.items() if not q and not k]
            if empty and tasks is not None:
                raise UserError(f"--add_instruction: task '{empty[0]}' has no query_instruction or key_instruction "
                                "(set them in --task_config, or train without --add_instruction)")
        self.instructions = table

    def instructions_for(self, task: str) -> tuple[str, str]:
        """The (query, key) instruction used for ``task`` ("" and "" without ``add_instruction``)."""
        if not self.add_instruction:
            return "", ""
        if task not in self.instructions:
            raise UserError(f"--add_instruction: no instructions for task '{task}'")
        q, k = self.instructions[task]
        if not q and not k:
            raise UserError(f"--add_instruction: task '{task}' has no query_instruction or key_instruction "
                            "(set them in --task_config, or train without --add_instruction)")
        return q, k

    def __call__(self, items: list[dict]) -> dict:
        if not items:
            raise ValueError("EmbedderCollator got an empty batch")
        tasks = {item.get("task", self.default_task) for item in items}
        if None in tasks:
            raise ValueError("an item has no 'task' and the collator has no default_task")
        if len(tasks) > 1:
            raise ValueError(f"a batch mixes tasks {sorted(tasks)}: use TaskBatchSampler so every batch comes from one file")
        task = tasks.pop()
        group_sizes = {len(item["keys"]) for item in items}
        if len(group_sizes) > 1:
            raise ValueError(f"a batch mixes group sizes {sorted(group_sizes)}")
        group_size = group_sizes.pop()
        scored = [item.get("teacher_scores") is not None for item in items]
        if any(scored) and not all(scored):
            raise ValueError("a batch mixes items with and without teacher_scores")
        teacher = None
        if all(scored):
            teacher = torch.tensor([item["teacher_scores"] for item in items], dtype=torch.float32)
            if teacher.shape != (len(items), group_size):
                raise ValueError(f"teacher_scores of shape {tuple(teacher.shape)} for {len(items)} × {group_size} keys")
        query_instruction, key_instruction = self.instructions_for(task)
        keys = [key for item in items for key in item["keys"]]
        return {
            "query_inputs": self.encoder.tokenize([item["query"] for item in items], side="query",
                                                  instruction=query_instruction),
            "key_inputs": self.encoder.tokenize(keys, side="key", instruction=key_instruction),
            "teacher_scores": teacher,
            "task": task,
            "group_size": group_size,
        }
