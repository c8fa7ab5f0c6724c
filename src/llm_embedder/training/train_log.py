"""``train_log.jsonl``: every logging step's record (loss, each task's loss terms, learning rate, epoch)
saved in the output folder, so a run leaves proof of what it optimised, distillation included.

A :class:`TrainerCallback`, added by :class:`~llm_embedder.training.trainer.EmbedderTrainer`. Two things:

* each ``on_log`` record is appended as one JSON line (main process only), with ``step`` and ``epoch``;
* the last step is always logged, so a run shorter than ``--logging_steps`` (3 steps under the default
  10) still shows its per-task losses instead of only the final ``train_loss`` summary.

On ``--resume_from_checkpoint`` the lines after the checkpoint's step are dropped first, so the file
describes one history without repeats.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from transformers import TrainerCallback

TRAIN_LOG = "train_log.jsonl"


def _json_value(value):
    """Numbers stay numbers; NaN/inf (a diverged loss) become strings so every line stays valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def read_train_log(output_dir: str | Path) -> list[dict]:
    """The records of ``{output_dir}/train_log.jsonl`` in order (empty when there is none)."""
    path = Path(output_dir) / TRAIN_LOG
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


class TrainLogCallback(TrainerCallback):
    """Appends every logged record to ``{output_dir}/train_log.jsonl`` and logs the final step."""

    def _path(self, args) -> Path | None:
        return Path(args.output_dir) / TRAIN_LOG if args.output_dir else None

    def on_train_begin(self, args, state, control, **kwargs):
        path = self._path(args)
        if path is None or not state.is_world_process_zero or not path.is_file():
            return
        from ..schema import write_records

        kept = [r for r in read_train_log(args.output_dir) if r.get("step", 0) <= state.global_step]
        write_records(path, kept)  # a fresh run (step 0) starts an empty log; a resumed one keeps its past

    def on_step_end(self, args, state, control, **kwargs):
        if state.max_steps and state.global_step >= state.max_steps:
            control.should_log = True  # the per-task losses of the last steps, even under --logging_steps

    def on_log(self, args, state, control, logs=None, **kwargs):
        path = self._path(args)
        if path is None or not state.is_world_process_zero or not logs:
            return
        record = {"step": state.global_step, "epoch": state.epoch, **{k: _json_value(v) for k, v in logs.items()}}
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as out:
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
