"""Arguments of ``python -m llm_embedder.jax.train``: run_dense.py's names, reused field by field.

``ModelArguments`` and ``DataArguments`` are the torch trainer's own dataclasses. The training options
are the subset of ``RetrievalTrainingArguments`` (Hugging Face ``TrainingArguments`` + the loss options)
that the JAX trainer implements (every loss setting of ``LOSS_SETTINGS`` among them), copied from that
dataclass by name so names, defaults, help and peer aliases stay one definition, plus the JAX-only options.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Optional

from ..training.arguments import RetrievalTrainingArguments

SHARED_TRAINING_FIELDS = (
    "output_dir", "overwrite_output_dir", "per_device_train_batch_size", "per_device_eval_batch_size",
    "learning_rate", "weight_decay", "adam_beta1", "adam_beta2", "adam_epsilon", "max_grad_norm",
    "num_train_epochs", "max_steps", "warmup_ratio", "warmup_steps", "gradient_accumulation_steps", "seed",
    "data_seed", "gradient_checkpointing", "logging_steps", "save_steps", "save_total_limit", "resume_from_checkpoint",
    "negative_cross_device", "grad_cache",
)


@dataclass
class JaxOptions:
    """Options only the JAX trainer has."""

    mesh_shape: int = field(default=-1, metadata={"help": "Devices on the 1-d `data` mesh (batch sharded, parameters replicated); -1: all."})
    query_num_chunks: int = field(default=1, metadata={"help": "Query chunks per batch with --grad_cache (JAX: chunks, not rows)."})
    passage_num_chunks: int = field(default=1, metadata={"help": "Key (passage) chunks per batch with --grad_cache."})
    jax_distributed: bool = field(default=False, metadata={"help": "Call jax.distributed.initialize() first (multi-host: TPU pod slices, several GPU hosts); run the same command on every host."})
    save_final_checkpoint: bool = field(default=True, metadata={"help": "Also write an orbax checkpoint after the last step."})


def _shared_fields():
    from ..loss_settings import LOSS_SETTINGS

    hints = typing.get_type_hints(RetrievalTrainingArguments)
    by_name = {f.name: f for f in dataclasses.fields(RetrievalTrainingArguments)}
    out = []
    for name in SHARED_TRAINING_FIELDS + tuple(n for n in LOSS_SETTINGS if n in by_name):
        f = by_name[name]
        default = f.default if f.default is not dataclasses.MISSING else None
        kind = hints[name]
        if name == "resume_from_checkpoint":
            kind, default = Optional[str], None
        if name == "save_steps":
            default = 0  # no periodic checkpoints unless asked (HF's 500 assumes save_strategy)
        out.append((name, kind, field(default=default, metadata=dict(f.metadata))))
    return out


def _post_init(self):
    from ..errors import UserError

    if self.output_dir is None:
        raise UserError("--output_dir: required (where the trained model and metrics.json go)")


JaxTrainingArguments = dataclasses.make_dataclass("JaxTrainingArguments", _shared_fields(), bases=(JaxOptions,),
                                                  namespace={"__post_init__": _post_init})
JaxTrainingArguments.__doc__ = "run_dense.py's training and loss options that the JAX trainer implements, plus JaxOptions."
