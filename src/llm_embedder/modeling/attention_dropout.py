"""Attention with dropout on CPU without torch's slow fallback: same maths, about a third of the time.

``torch.nn.functional.scaled_dot_product_attention`` has no fused CPU kernel for ``dropout_p > 0``, so in
training (BERT and the other Hugging Face encoders pass ``attention_probs_dropout_prob`` to it) it falls back
to its reference implementation, which draws the dropout mask with ``bernoulli_`` on a float tensor of
``batch × heads × length²`` values, multiplies by it, and runs extra checks for fully masked rows. The profile
of a training step (``benchmarks/results/bench_train_profile.txt``) puts about half of the step there.

:func:`dropout_attention` computes the same thing (softmax(QKᵀ·scale + mask), each probability kept with
probability ``1 − p`` and scaled by ``1/(1 − p)``, times V) with a cheaper mask: one 16-bit integer per
position, drawn from torch's default generator (so ``torch.manual_seed`` makes it reproducible and GradCache's
replayed forward draws the same masks), compared with a threshold. ``p`` is rounded to a multiple of 1/65,536
and the scale uses the rounded value, so the expected output is exactly the undropped one. The ``1/(1 − p)``
scale is applied to the ``[.., L, head_dim]`` output instead of the ``[.., L, L]`` probabilities.

It is used only inside :func:`cpu_attention_dropout` (which :meth:`DenseEncoder.embed` enters in training on
CPU) and hands every call it does not cover (no dropout, a GPU tensor, grouped-query attention) to torch's own
function, which keeps its fused kernels there.
"""
from __future__ import annotations

import contextlib
import math
import threading

import torch
import torch.nn.functional as F

_TORCH_SDPA = F.scaled_dot_product_attention
_LEVELS = 1 << 16  # the mask compares one uniform 16-bit integer per position with a threshold
_patch_lock = threading.Lock()
_patch_depth = 0


def quantized_drop_probability(p: float) -> float:
    """The dropout probability actually used: ``p`` rounded to a multiple of 1/65,536."""
    return round(p * _LEVELS) / _LEVELS


def keep_mask(shape: torch.Size | tuple, p: float, device: torch.device | str = "cpu") -> torch.Tensor:
    """Bool tensor of ``shape``, each entry True (kept) with probability ``1 - quantized_drop_probability(p)``.

    Four 16-bit draws come from each 64-bit integer of torch's default generator on ``device``."""
    numel = math.prod(shape)
    words = torch.randint(-(1 << 63), (1 << 63) - 1, ((numel + 3) // 4,), dtype=torch.int64, device=device)
    draws = words.view(torch.int16)[:numel].view(shape)  # uniform over [-32768, 32767]
    threshold = round(p * _LEVELS) - (_LEVELS // 2)
    return draws >= threshold


def dropout_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attn_mask: torch.Tensor | None = None, dropout_p: float = 0.0, is_causal: bool = False,
                      scale: float | None = None, enable_gqa: bool = False) -> torch.Tensor:
    """``F.scaled_dot_product_attention`` with the same arguments; computed here when dropout is on and the
    tensors are on CPU, else by torch (see the module docstring)."""
    if dropout_p <= 0.0 or query.device.type != "cpu" or enable_gqa or quantized_drop_probability(dropout_p) == 0.0:
        return _TORCH_SDPA(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                           scale=scale, enable_gqa=enable_gqa)
    p = quantized_drop_probability(dropout_p)
    if p >= 1.0:
        raise ValueError(f"dropout_p must be below 1 (after rounding to 1/65,536), got {dropout_p}")
    scale = query.shape[-1] ** -0.5 if scale is None else scale
    scores = torch.matmul(query * scale, key.transpose(-2, -1))
    length_q, length_k = query.shape[-2], key.shape[-2]
    bool_mask = None
    if is_causal:
        bool_mask = torch.ones(length_q, length_k, dtype=torch.bool, device=query.device).tril()
    if attn_mask is not None and attn_mask.dtype == torch.bool:
        bool_mask = attn_mask if bool_mask is None else bool_mask & attn_mask
    elif attn_mask is not None:  # in place: no second L x L tensor (torch's function, too, refuses a mask
        scores.add_(attn_mask)     # that does not broadcast into the scores)
    if bool_mask is not None:
        scores = scores.masked_fill(~bool_mask, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    if bool_mask is not None:  # a row with no allowed key: zeros, as torch's function gives, not NaN
        probs = probs.nan_to_num(0.0)
    probs = torch.where(keep_mask(probs.shape, p, probs.device), probs, 0.0)
    return torch.matmul(probs, value) * (1.0 / (1.0 - p))


@contextlib.contextmanager
def cpu_attention_dropout(enabled: bool = True):
    """While inside, ``F.scaled_dot_product_attention`` is :func:`dropout_attention` (for the Hugging Face
    models, which look the function up at call time); restored on exit, also when nested or on error."""
    global _patch_depth
    if not enabled:
        yield
        return
    with _patch_lock:
        _patch_depth += 1
        F.scaled_dot_product_attention = dropout_attention
    try:
        yield
    finally:
        with _patch_lock:
            _patch_depth -= 1
            if _patch_depth == 0:
                F.scaled_dot_product_attention = _TORCH_SDPA


def attention_dropout_for(model: torch.nn.Module, enabled: bool = True):
    """:func:`cpu_attention_dropout` for one forward pass of ``model``: on when ``enabled`` and the model is
    training on CPU without gradient checkpointing (whose backward recomputation would run outside the switch)."""
    on = (enabled and model.training and next(model.parameters()).device.type == "cpu"
          and not getattr(model, "is_gradient_checkpointing", False))
    return cpu_attention_dropout(on)
