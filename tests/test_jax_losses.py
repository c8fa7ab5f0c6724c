"""jnp losses vs the torch ones (llm_embedder.modeling.losses): values and embedding gradients to 1e-5."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

pytest.importorskip("jax")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from llm_embedder.jax import losses as jl  # noqa: E402
from llm_embedder.modeling import losses as tl  # noqa: E402

B, G, D = 4, 3, 8


def _inputs(seed=0, ties=False):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(B, D)).astype(np.float32)
    k = rng.normal(size=(B * G, D)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    k /= np.linalg.norm(k, axis=1, keepdims=True)
    teacher = rng.normal(size=(B, G)).astype(np.float32)
    if ties:
        teacher[:, 1] = teacher[:, 2]
    return q, k, teacher


def _torch_value_and_grads(fn, q, k, teacher):
    tq, tk = torch.tensor(q, requires_grad=True), torch.tensor(k, requires_grad=True)
    value = fn(tq, tk, torch.tensor(teacher))
    value.backward()
    return float(value.detach()), tq.grad.numpy(), tk.grad.numpy()


def _jax_value_and_grads(fn, q, k, teacher):
    value, (gq, gk) = jax.value_and_grad(lambda a, b: fn(a, b, jnp.asarray(teacher)), argnums=(0, 1))(jnp.asarray(q), jnp.asarray(k))
    return float(value), np.asarray(gq), np.asarray(gk)


def _check(torch_fn, jax_fn, q, k, teacher):
    tv, tgq, tgk = _torch_value_and_grads(torch_fn, q, k, teacher)
    jv, jgq, jgk = _jax_value_and_grads(jax_fn, q, k, teacher)
    assert abs(tv) > 1e-3 and np.abs(tgq).max() > 1e-4  # guard: a real value and gradient
    np.testing.assert_allclose(jv, tv, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(jgq, tgq, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(jgk, tgk, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("inbatch", [True, False])
@pytest.mark.parametrize("tau", [0.05, 1.0])
def test_infonce_matches_torch(inbatch, tau):
    kw = dict(cos_temperature=tau, inbatch_negatives=inbatch)
    _check(lambda q, k, t: tl.infonce_loss(q, k, G, **kw), lambda q, k, t: jl.infonce_loss(q, k, G, **kw), *_inputs())


@pytest.mark.parametrize("name", ["kl_distill_loss", "margin_mse_loss"])
@pytest.mark.parametrize("temps", [(1.0, 1.0), (0.1, 2.0)])
def test_distillation_matches_torch(name, temps):
    kw = dict(cos_temperature=0.05, teacher_temperature=temps[0], student_temperature=temps[1])
    _check(lambda q, k, t: getattr(tl, name)(q, k, t, G, **kw), lambda q, k, t: getattr(jl, name)(q, k, t, G, **kw), *_inputs(1))


@pytest.mark.parametrize("positive_first,ties,inbatch", [(True, False, True), (False, False, True), (True, True, True),
                                                         (False, True, False), (True, False, False)])
def test_stable_distill_matches_torch(positive_first, ties, inbatch):
    kw = dict(cos_temperature=0.05, teacher_temperature=0.5, positive_first=positive_first, inbatch_negatives=inbatch)
    q, k, teacher = _inputs(2, ties)
    np.testing.assert_array_equal(np.asarray(jl.teacher_ranking(jnp.asarray(teacher), positive_first)),
                                  tl.teacher_ranking(torch.tensor(teacher), positive_first).numpy())
    _check(lambda q, k, t: tl.stable_distill_loss(q, k, t, G, **kw),
           lambda q, k, t: jl.stable_distill_loss(q, k, t, G, **kw), q, k, teacher)


RECIPES = {
    "qa": dict(stable_distill=True),
    "qa_own_keys": dict(stable_distill=True, inbatch_negatives=False),
    "chat": dict(contrastive_weight=0.0, teacher_temperature=0.1, inbatch_negatives=False),
    "tool": dict(distill_weight=0.0),
    "margin": dict(contrastive_weight=0.5, distill_weight=2.0, distill_loss="margin_mse"),
}


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_compute_loss_recipes_match_torch(recipe):
    params = tl.LossParams(cos_temperature=0.05, **RECIPES[recipe])
    for key in ("loss", "contrastive", "distill"):
        tv = tl.compute_loss(*[torch.tensor(x) for x in _inputs(3)], G, params)[key if key != "loss" else "unscaled_loss"]
        jv = jl.compute_loss(*[jnp.asarray(x) for x in _inputs(3)], G, params)[key]
        np.testing.assert_allclose(float(jv), float(tv), rtol=1e-5, atol=1e-6)
    _check(lambda q, k, t: tl.compute_loss(q, k, t, G, params)["loss"],
           lambda q, k, t: jl.compute_loss(q, k, t, G, params)["loss"], *_inputs(3))


def test_compute_loss_without_teacher_skips_distillation():
    q, k, _ = _inputs(4)
    params = tl.LossParams(cos_temperature=0.05)
    out = jl.compute_loss(jnp.asarray(q), jnp.asarray(k), None, G, params)
    assert float(out["distill"]) == 0.0
    np.testing.assert_allclose(float(out["loss"]), float(tl.infonce_loss(torch.tensor(q), torch.tensor(k), G, cos_temperature=0.05)), rtol=1e-6)


def test_per_device_negatives_average_the_slices():
    """per_device_groups=2 equals the mean of the torch loss on each half (DDP without cross-device negatives)."""
    q, k, teacher = _inputs(5)
    params = tl.LossParams(cos_temperature=0.05, stable_distill=True)
    halves = [tl.compute_loss(torch.tensor(q[i * 2:(i + 1) * 2]), torch.tensor(k[i * 2 * G:(i + 1) * 2 * G]),
                              torch.tensor(teacher[i * 2:(i + 1) * 2]), G, params)["unscaled_loss"] for i in range(2)]
    whole = jl.compute_loss(jnp.asarray(q), jnp.asarray(k), jnp.asarray(teacher), G, params)["loss"]
    split = jl.compute_loss(jnp.asarray(q), jnp.asarray(k), jnp.asarray(teacher), G, params, per_device_groups=2)["loss"]
    np.testing.assert_allclose(float(split), float(sum(halves) / 2), rtol=1e-5)
    assert abs(float(split) - float(whole)) > 1e-3  # guard: fewer negatives per slice change the loss


def test_a_recipe_with_its_own_loss_terms_matches_torch():
    """Recipes may list terms (``losses: [{name, weight, ...}]``): the JAX side uses the torch TaskLoss's terms."""
    from llm_embedder.loss_settings import LOSS_SETTINGS, LossTerm

    settings = {**{name: s.default for name, s in LOSS_SETTINGS.items()}, "cos_temperature": 0.05}
    task_loss = tl.TaskLoss([LossTerm("infonce", 0.5, (("inbatch_negatives", False),)), LossTerm("margin_mse", 2.0),
                             LossTerm("stable_distill", 0.25, (("positive_first", False),))], settings)
    terms = jl.task_terms(task_loss)
    assert [t.label for t in terms] == ["infonce", "margin_mse", "stable_distill"]
    _check(lambda q, k, t: task_loss(q, k, t, G)["loss"], lambda q, k, t: jl.compute_loss(q, k, t, G, terms)["loss"], *_inputs(6))


def test_a_loss_registered_only_in_torch_is_one_clear_error():
    from llm_embedder.errors import UserError
    from llm_embedder.loss_settings import LOSS_SETTINGS, LossTerm

    name = "torch_only_test_loss"
    tl.register_loss(tl.RegisteredLoss(name, lambda q, k, group_size: (q * 0).sum(), needs_teacher=False))
    try:
        settings = {name_: s.default for name_, s in LOSS_SETTINGS.items()}
        with pytest.raises(UserError, match=f"loss '{name}' has no JAX implementation"):
            jl.task_terms(tl.TaskLoss([LossTerm(name, 1.0)], settings))
    finally:
        tl.LOSSES.pop(name)  # leave the shared registry as it was
