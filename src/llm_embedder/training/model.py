"""The module the Trainer optimises: a DenseEncoder plus the per-task loss recipe.

Everything that produces a gradient runs inside ``forward`` so that DDP and DeepSpeed see one forward
call per step (calling encoder methods from the trainer directly would bypass their gradient hooks).
The loss itself lives in :mod:`llm_embedder.modeling.losses`; this module only picks each batch's
``LossParams`` from its task recipe, with the command-line values as defaults.
"""
from __future__ import annotations

import dataclasses

import torch
from torch import nn

from ..modeling.grad_cache import grad_cached_loss
from ..modeling.losses import LossParams, compute_loss

# LossParams fields decided per task by its resolved recipe (same names in both)
RECIPE_LOSS_FIELDS = ("contrastive_weight", "distill_weight", "stable_distill", "teacher_temperature",
                      "student_temperature", "inbatch_negatives")


def task_loss_params(default: LossParams, recipes) -> dict[str, LossParams]:
    """``{task: LossParams}``: the command-line options with each resolved recipe's loss fields."""
    return {r.name: dataclasses.replace(default, **{f: getattr(r, f) for f in RECIPE_LOSS_FIELDS}) for r in recipes}


class EmbedderModel(nn.Module):
    """``forward(query_inputs, key_inputs, teacher_scores, task, group_size) -> {"loss", "contrastive", "distill"}``."""

    def __init__(self, encoder, default_params: LossParams, task_params: dict[str, LossParams] | None = None,
                 grad_cache_chunk_size: int = 0):
        super().__init__()
        self.encoder = encoder
        self.default_params = default_params
        self.task_params = dict(task_params or {})
        self.grad_cache_chunk_size = grad_cache_chunk_size  # 0: plain backward; N: GradCache in N-row chunks
        self.config = getattr(encoder, "config", None)  # some Trainer code paths read model.config

    def loss_params(self, task: str) -> LossParams:
        """The batch task's loss options (its resolved recipe), or the command-line ones for unknown tasks."""
        return self.task_params.get(task, self.default_params)

    def forward(self, query_inputs, key_inputs, teacher_scores=None, task: str = "qa", group_size: int | None = None, **_):
        params = self.loss_params(task)

        def loss_fn(q, k):
            scores = teacher_scores.to(q.dtype) if teacher_scores is not None else None
            return compute_loss(q, k, scores, group_size or k.shape[0] // q.shape[0], params)

        if self.grad_cache_chunk_size and self.training and torch.is_grad_enabled():
            return grad_cached_loss(lambda batch, side: self.encoder.embed(batch, side=side), query_inputs, key_inputs,
                                    loss_fn, self.grad_cache_chunk_size)
        return loss_fn(self.encoder.embed(query_inputs, side="query"), self.encoder.embed(key_inputs, side="key"))

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs=None):
        self.encoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs=gradient_checkpointing_kwargs)

    def gradient_checkpointing_disable(self):
        if hasattr(self.encoder, "gradient_checkpointing_disable"):
            self.encoder.gradient_checkpointing_disable()

    @torch.no_grad()
    def encode(self, *args, **kwargs):
        return self.encoder.encode(*args, **kwargs)
