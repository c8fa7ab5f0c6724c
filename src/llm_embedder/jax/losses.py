"""The training losses in ``jnp``: same definitions, layout and options as :mod:`llm_embedder.modeling.losses`.

Layout (docs/losses.md): ``q [B, D]``, ``k [B*G, D]`` query-major with the labelled positive first,
``teacher [B, G]``; s(q, k) = <q, k> / cos_temperature. Options come from the same
:class:`~llm_embedder.modeling.losses.LossParams` the torch trainer builds from the command line and
task recipes. There is no gathering here: under ``jit`` on a mesh the arrays are global, so the loss
of the global batch *is* the cross-device loss; :func:`compute_loss` with ``per_device_groups > 1``
instead splits the batch into that many slices and averages their losses (per-device negatives, what
DDP does without ``--negative_cross_device``).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

DISTILL_NAMES = {"kl": "kl_distill", "margin_mse": "margin_mse"}


def group_scores(q, k, group_size: int, cos_temperature: float):
    """``[B, G]``: each query against its own keys."""
    return jnp.einsum("bd,bgd->bg", q, k.reshape(q.shape[0], group_size, q.shape[1])) / cos_temperature


def batch_scores(q, k, cos_temperature: float):
    """``[B, B*G]``: each query against every key of the batch."""
    return q @ k.T / cos_temperature


def _cross_entropy(logits, targets):
    return -jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), targets[:, None], axis=-1)[:, 0]


def infonce_loss(q, k, group_size: int, *, cos_temperature: float = 0.01, inbatch_negatives: bool = True):
    """Mean -log softmax of each query's positive among all batch keys (or only its own G keys)."""
    if not inbatch_negatives:
        return _cross_entropy(group_scores(q, k, group_size, cos_temperature), jnp.zeros(q.shape[0], jnp.int32)).mean()
    return _cross_entropy(batch_scores(q, k, cos_temperature), jnp.arange(q.shape[0]) * group_size).mean()


def kl_distill_loss(q, k, teacher, group_size: int, *, cos_temperature: float = 0.01,
                    teacher_temperature: float = 1.0, student_temperature: float = 1.0):
    """Batch-mean KL(softmax(t/T_t) || softmax(s/T_s)) over each query's own keys."""
    log_student = jax.nn.log_softmax(group_scores(q, k, group_size, cos_temperature) / student_temperature, axis=-1)
    target = jax.nn.softmax(teacher.astype(log_student.dtype) / teacher_temperature, axis=-1)
    pointwise = jnp.where(target > 0, target * (jnp.log(jnp.where(target > 0, target, 1.0)) - log_student), 0.0)
    return pointwise.sum() / q.shape[0]


def margin_mse_loss(q, k, teacher, group_size: int, *, cos_temperature: float = 0.01,
                    teacher_temperature: float = 1.0, student_temperature: float = 1.0):
    """Mean squared difference of student and teacher positive-minus-negative margins."""
    student = group_scores(q, k, group_size, cos_temperature) / student_temperature
    teacher = teacher.astype(student.dtype) / teacher_temperature
    return jnp.mean(((student[:, :1] - student[:, 1:]) - (teacher[:, :1] - teacher[:, 1:])) ** 2)


def teacher_ranking(teacher, positive_first: bool = True):
    """``[B, G]`` positions by teacher score, descending and stable, the positive first if asked."""
    if not positive_first:
        return jnp.argsort(-teacher, axis=-1, stable=True)
    rest = jnp.argsort(-teacher[:, 1:], axis=-1, stable=True) + 1
    return jnp.concatenate([jnp.zeros_like(rest[:, :1]), rest], axis=-1)


def stable_distill_loss(q, k, teacher, group_size: int, *, cos_temperature: float = 0.01,
                        teacher_temperature: float = 1.0, positive_first: bool = True, inbatch_negatives: bool = True):
    """Sum over ranks i of the teacher-weighted CE of each query's i-th key, its earlier keys masked
    (candidates: all batch keys, or only the query's own G keys without in-batch negatives)."""
    teacher = jax.lax.stop_gradient(teacher)
    batch = q.shape[0]
    order = teacher_ranking(teacher, positive_first)
    if inbatch_negatives:
        scores = batch_scores(q, k, cos_temperature)
        columns = (jnp.arange(batch) * group_size)[:, None] + order
    else:
        scores = group_scores(q, k, group_size, cos_temperature)
        columns = order
    weights = jnp.take_along_axis(jax.nn.softmax(teacher.astype(scores.dtype) / teacher_temperature, axis=-1), order, axis=1)
    rows = jnp.arange(batch)
    masked = jnp.zeros(scores.shape, dtype=bool)
    loss = jnp.zeros((), scores.dtype)
    for i in range(group_size):
        ce = _cross_entropy(jnp.where(masked, -jnp.inf, scores), columns[:, i])
        loss = loss + (weights[:, i] * ce).mean()
        masked = masked.at[rows, columns[:, i]].set(True)
    return loss


def _term(name: str, q, k, teacher, group_size: int, p):
    if name == "infonce":
        return infonce_loss(q, k, group_size, cos_temperature=p.cos_temperature, inbatch_negatives=p.inbatch_negatives)
    if name == "stable_distill":
        return stable_distill_loss(q, k, teacher, group_size, cos_temperature=p.cos_temperature,
                                   teacher_temperature=p.teacher_temperature,
                                   positive_first=p.stable_distill_positive_first, inbatch_negatives=p.inbatch_negatives)
    fn = kl_distill_loss if name == "kl_distill" else margin_mse_loss
    return fn(q, k, teacher, group_size, cos_temperature=p.cos_temperature,
              teacher_temperature=p.teacher_temperature, student_temperature=p.student_temperature)


def compute_loss(q, k, teacher, group_size: int, params, per_device_groups: int = 1) -> dict:
    """``{"loss", "contrastive", "distill"}``: contrastive_weight * L_c + distill_weight * L_d.

    ``params`` is a torch-side ``LossParams`` (only its plain fields are read, so this stays jit-static).
    A term whose weight is 0 is skipped and distillation is skipped when ``teacher`` is None, as in torch.
    ``per_device_groups = n`` computes each term on n equal batch slices and averages them (per-device
    negatives); 1 is the global batch (cross-device negatives on a mesh).
    """
    if per_device_groups > 1:
        split = lambda x: None if x is None else x.reshape(per_device_groups, -1, *x.shape[1:])
        parts = jax.vmap(lambda qq, kk, tt: compute_loss(qq, kk, tt, group_size, params),
                         in_axes=(0, 0, None if teacher is None else 0))(split(q), split(k), split(teacher))
        return jax.tree_util.tree_map(lambda x: x.mean(), parts)
    distill_name = "stable_distill" if params.stable_distill else DISTILL_NAMES[params.distill_loss]
    zero = jnp.zeros((), q.dtype)
    out = {"contrastive": zero, "distill": zero}
    loss = zero
    for term, name, weight, available in (("contrastive", "infonce", params.contrastive_weight, True),
                                          ("distill", distill_name, params.distill_weight, teacher is not None)):
        if weight == 0 or not available:
            continue
        value = _term(name, q, k, teacher, group_size, params)
        loss = loss + weight * value
        out[term] = value
    out["loss"] = loss
    return out
