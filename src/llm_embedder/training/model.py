"""The module the Trainer optimises: a DenseEncoder plus one loss object per task.

Everything that produces a gradient runs inside ``forward`` so that DDP and DeepSpeed see one forward
call per step (calling encoder methods from the trainer directly would bypass their gradient hooks).
The losses live in :mod:`llm_embedder.modeling.losses`; each task's :class:`TaskLoss` is built once from
its resolved recipe (:func:`task_losses`) and this module only picks the one of the batch's task.
"""
from __future__ import annotations

import torch
from torch import nn

from ..modeling.grad_cache import grad_cached_loss
from ..modeling.losses import LossParams, TaskLoss, build_task_loss


def task_losses(recipes, negative_cross_device: bool = False) -> dict[str, TaskLoss]:
    """``{task: TaskLoss}`` from resolved recipes (a dataset's ``recipes``); bad terms raise a UserError."""
    return {r.name: build_task_loss(r, negative_cross_device) for r in recipes}


def _as_task_loss(loss) -> TaskLoss:
    return TaskLoss.from_params(loss) if isinstance(loss, LossParams) else loss


class EmbedderModel(nn.Module):
    """``forward(query_inputs, key_inputs, teacher_scores, task, group_size) -> {"loss", <term>: value, ...}``.

    ``default_loss`` serves batches of a task without its own entry in ``task_losses``; both accept
    :class:`TaskLoss` or :class:`LossParams`.
    """

    def __init__(self, encoder, default_loss, task_losses: dict | None = None, grad_cache_chunk_size: int = 0):
        super().__init__()
        self.encoder = encoder
        self.default_loss = _as_task_loss(default_loss)
        self.task_losses = {task: _as_task_loss(loss) for task, loss in (task_losses or {}).items()}
        self.grad_cache_chunk_size = grad_cache_chunk_size  # 0: plain backward; N: GradCache in N-row chunks
        self.config = getattr(encoder, "config", None)  # some Trainer code paths read model.config

    def loss_for(self, task: str) -> TaskLoss:
        """The batch task's loss (from its resolved recipe), or the default one for unknown tasks."""
        return self.task_losses.get(task, self.default_loss)

    def forward(self, query_inputs, key_inputs, teacher_scores=None, task: str = "qa", group_size: int | None = None, **_):
        objective = self.loss_for(task)

        def loss_fn(q, k):
            scores = teacher_scores.to(q.dtype) if teacher_scores is not None else None
            return objective(q, k, scores, group_size or k.shape[0] // q.shape[0])

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
