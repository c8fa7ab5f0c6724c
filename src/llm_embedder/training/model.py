"""The module the Trainer optimises: a DenseEncoder plus one loss object per task.

Everything that produces a gradient runs inside ``forward`` so that DDP and DeepSpeed see one forward
call per step (calling encoder methods from the trainer directly would bypass their gradient hooks).
The losses live in :mod:`llm_embedder.modeling.losses`; each task's :class:`TaskLoss` is built once from
its resolved recipe (:func:`task_losses`) and this module only picks the one of the batch's task.
"""
from __future__ import annotations

import dataclasses

import torch
from torch import nn

from ..errors import UserError
from ..loss_settings import LOSS_SETTINGS
from ..modeling.grad_cache import GradCache, grad_cached_loss, upcast
from ..modeling.losses import LossParams, TaskLoss, build_task_loss


def task_losses(recipes, negative_cross_device: bool = False) -> dict[str, TaskLoss]:
    """``{task: TaskLoss}`` from resolved recipes (a dataset's ``recipes``); bad terms raise a UserError."""
    return {r.name: build_task_loss(r, negative_cross_device) for r in recipes}


def task_loss_params(default: LossParams, recipes) -> dict[str, LossParams]:
    """``{task: LossParams}``: each resolved recipe's loss settings (for trainers that run the default terms
    only, such as the JAX one); a recipe that lists its own loss terms is a UserError there."""
    out = {}
    for recipe in recipes:
        if recipe.source("losses") != "settings":
            raise UserError(f"task '{recipe.name}': its recipe lists loss terms ({', '.join(t.name for t in recipe.losses)}); "
                            "this trainer runs only the terms the loss settings select (train it with run_dense.py)")
        out[recipe.name] = dataclasses.replace(default, **{name: getattr(recipe, name) for name in LOSS_SETTINGS})
    return out


def _as_task_loss(loss) -> TaskLoss:
    return TaskLoss.from_params(loss) if isinstance(loss, LossParams) else loss


def fp32_loss(loss_fn, q: torch.Tensor, k: torch.Tensor, teacher_scores: torch.Tensor | None, *args) -> dict:
    """``loss_fn(q, k, teacher_scores, *args)`` in fp32 with autocast off, whatever the embeddings' dtype.

    The one place where embeddings and teacher scores enter the loss (plain steps and GradCache alike):
    under bf16, ``q·k / τ`` with τ = 0.01 would carry ~0.4 logits of rounding error (cosines near 1 are
    spaced 2⁻⁸ apart) and teacher scores would be quantised before ``/T_t``; autocast would also run the
    similarity matmul in bf16 even for fp32 inputs. fp64 inputs stay fp64.
    """
    q, k = upcast(q), upcast(k)
    if teacher_scores is not None:
        teacher_scores = teacher_scores.to(q.device, torch.float64 if q.dtype == torch.float64 else torch.float32)
    with torch.autocast(q.device.type, enabled=False):
        return loss_fn(q, k, teacher_scores, *args)


class EmbedderModel(nn.Module):
    """``forward(query_inputs, key_inputs, teacher_scores, task, group_size) -> {"loss", <term>: value, ...}``.

    ``default_loss`` serves batches of a task without its own entry in ``task_losses``; both accept
    :class:`TaskLoss` or :class:`LossParams`. With ``grad_cache_chunk_size`` (and optionally a separate
    key chunk size) training steps use GradCache; a DDP wrapper routes the last replayed chunks back
    through ``forward(grad_cache_final=...)`` (see :func:`~llm_embedder.modeling.grad_cache.replay_through`).
    """

    def __init__(self, encoder, default_loss, task_losses: dict | None = None, grad_cache_chunk_size: int = 0,
                 grad_cache_key_chunk_size: int = 0):
        super().__init__()
        self.encoder = encoder
        self.default_loss = _as_task_loss(default_loss)
        self.task_losses = {task: _as_task_loss(loss) for task, loss in (task_losses or {}).items()}
        # 0: plain backward; N: GradCache, queries in N-row chunks (keys in grad_cache_key_chunk_size, or N)
        self.grad_cache_chunk_size = grad_cache_chunk_size
        self.grad_cache_key_chunk_size = grad_cache_key_chunk_size or grad_cache_chunk_size
        self.grad_cache_final_forward = None  # set per step by replay_through under DDP
        self.config = getattr(encoder, "config", None)  # some Trainer code paths read model.config

    def loss_for(self, task: str) -> TaskLoss:
        """The batch task's loss (from its resolved recipe), or the default one for unknown tasks."""
        return self.task_losses.get(task, self.default_loss)

    def forward(self, query_inputs=None, key_inputs=None, teacher_scores=None, task: str = "qa",
                group_size: int | None = None, grad_cache_final: GradCache | None = None, **_):
        if grad_cache_final is not None:  # GradCache's last chunks, replayed through the DDP wrapper
            return grad_cache_final.final_surrogate()
        objective = self.loss_for(task)

        def loss_fn(q, k):
            return fp32_loss(objective, q, k, teacher_scores, group_size or k.shape[0] // q.shape[0])

        def embed(batch, side):
            return self.encoder.embed(batch, side=side)

        if self.grad_cache_chunk_size and self.training and torch.is_grad_enabled():
            return grad_cached_loss(embed, query_inputs, key_inputs, loss_fn, self.grad_cache_chunk_size,
                                    self.grad_cache_key_chunk_size, parameters=self.parameters(),
                                    final_forward=self.grad_cache_final_forward)
        return loss_fn(embed(query_inputs, "query"), embed(key_inputs, "key"))

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs=None):
        self.encoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs=gradient_checkpointing_kwargs)

    def gradient_checkpointing_disable(self):
        if hasattr(self.encoder, "gradient_checkpointing_disable"):
            self.encoder.gradient_checkpointing_disable()

    @torch.no_grad()
    def encode(self, *args, **kwargs):
        return self.encoder.encode(*args, **kwargs)
