"""The training losses in ``jnp``: same definitions, layout and options as :mod:`llm_embedder.modeling.losses`.

Layout (docs/losses.md): ``q [B, D]``, ``k [B*G, D]`` query-major with the labelled positive first,
``teacher [B, G]``; s(q, k) = <q, k> / cos_temperature. Which terms, weights and options a task uses
comes from the torch side's own :class:`~llm_embedder.modeling.losses.TaskLoss` (built from the task's
resolved recipe), so both trainers read one definition. There is no gathering here: under ``jit`` on a mesh the arrays are global, so the loss
of the global batch *is* the cross-device loss; :func:`compute_loss` with ``per_device_groups > 1``
instead splits the batch into that many slices and averages their losses (per-device negatives, what
DDP does without ``--negative_cross_device``).
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass

import jax
import jax.numpy as jnp


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


JAX_LOSSES = {"infonce": infonce_loss, "kl_distill": kl_distill_loss, "margin_mse": margin_mse_loss,
              "stable_distill": stable_distill_loss}


@dataclass(frozen=True)
class JaxTerm:
    """One weighted term of a task's objective, with its resolved keyword arguments (hashable: jit-static)."""

    label: str
    name: str
    weight: float
    needs_teacher: bool
    kwargs: tuple


def task_terms(loss) -> tuple[JaxTerm, ...]:
    """The terms of a torch ``TaskLoss`` (or ``LossParams``: its default terms) for :func:`compute_loss`.

    The torch side resolves names, weights, settings and params (one definition of every recipe); a loss
    registered only in torch is a one-line ``UserError``. ``cross_device`` is dropped: on a mesh the
    global-batch loss is the cross-device one (see :func:`compute_loss`).
    """
    from ..errors import UserError
    from ..modeling.losses import TaskLoss

    if not isinstance(loss, TaskLoss):
        loss = TaskLoss.from_params(loss)
    out = []
    for term, registered, kwargs in loss.terms:
        if term.name not in JAX_LOSSES:
            raise UserError(f"loss '{term.name}' has no JAX implementation (the JAX trainer has: {', '.join(JAX_LOSSES)})")
        kwargs = {k: v for k, v in kwargs.items() if k != "cross_device"}
        accepted = inspect.signature(JAX_LOSSES[term.name]).parameters
        unknown = sorted(set(kwargs) - set(accepted))
        if unknown:
            raise UserError(f"loss '{term.name}': parameter '{unknown[0]}' is not implemented in the JAX trainer")
        out.append(JaxTerm(term.label, term.name, float(term.weight), registered.needs_teacher, tuple(sorted(kwargs.items()))))
    return tuple(out)


def compute_loss(q, k, teacher, group_size: int, terms, per_device_groups: int = 1) -> dict:
    """``{"loss", <label>: value per term}``: the weighted sum of ``terms`` (:func:`task_terms`, or
    a ``LossParams`` / ``TaskLoss``), as the torch ``TaskLoss`` computes it.

    A term whose weight is 0 is skipped, and a term that needs teacher scores is skipped (reported as 0)
    when ``teacher`` is None. ``per_device_groups = n`` computes each term on n equal batch slices and
    averages them (per-device negatives); 1 is the global batch (cross-device negatives on a mesh).
    """
    if not isinstance(terms, tuple):
        terms = task_terms(terms)
    if per_device_groups > 1:
        split = lambda x: None if x is None else x.reshape(per_device_groups, -1, *x.shape[1:])
        parts = jax.vmap(lambda qq, kk, tt: compute_loss(qq, kk, tt, group_size, terms),
                         in_axes=(0, 0, None if teacher is None else 0))(split(q), split(k), split(teacher))
        return jax.tree_util.tree_map(lambda x: x.mean(), parts)
    zero = jnp.zeros((), q.dtype)
    out = {term.label: zero for term in terms}
    loss = zero
    for term in terms:
        if term.weight == 0 or (term.needs_teacher and teacher is None):
            continue
        args = (q, k, teacher, group_size) if term.needs_teacher else (q, k, group_size)
        value = JAX_LOSSES[term.name](*args, **dict(term.kwargs))
        loss = loss + term.weight * value
        out[term.label] = value
    out["loss"] = loss
    return out
