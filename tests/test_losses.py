"""Loss functions against hand-computed values and independent loop implementations on tiny tensors."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from llm_embedder.errors import UserError
from llm_embedder.modeling import distributed
from llm_embedder.modeling.losses import (LOSSES, LossParams, LossTerm, RegisteredLoss, TaskLoss, compute_loss,
                                          get_loss, infonce_loss, register_loss,
                                          kl_distill_loss, margin_mse_loss, stable_distill_loss,
                                          teacher_ranking)


# ---- independent, straightforward reference implementations (python loops, math module) -----------

def _dot(a, b):
    return sum(x * y for x, y in zip(a, b))


def _neg_log_softmax_at(logits: list[float], target: int) -> float:
    top = max(logits)
    return -(logits[target] - top - math.log(sum(math.exp(x - top) for x in logits)))


def _softmax(values: list[float]) -> list[float]:
    top = max(values)
    exps = [math.exp(v - top) for v in values]
    return [e / sum(exps) for e in exps]


def ref_infonce(q, k, G, tau, inbatch=True):
    q, k = q.tolist(), k.tolist()
    B = len(q)
    total = 0.0
    for b in range(B):
        if inbatch:
            logits = [_dot(q[b], key) / tau for key in k]
            total += _neg_log_softmax_at(logits, b * G)
        else:
            logits = [_dot(q[b], k[b * G + j]) / tau for j in range(G)]
            total += _neg_log_softmax_at(logits, 0)
    return total / B


def ref_kl(q, k, t, G, tau, t_t, t_s):
    q, k, t = q.tolist(), k.tolist(), t.tolist()
    total = 0.0
    for b in range(len(q)):
        s = [_dot(q[b], k[b * G + j]) / tau / t_s for j in range(G)]
        p = _softmax([x / t_t for x in t[b]])
        r = _softmax(s)
        total += sum(pi * (math.log(pi) - math.log(ri)) for pi, ri in zip(p, r))
    return total / len(q)


def ref_margin_mse(q, k, t, G, tau, t_t, t_s):
    q, k, t = q.tolist(), k.tolist(), t.tolist()
    errors = []
    for b in range(len(q)):
        s = [_dot(q[b], k[b * G + j]) / tau for j in range(G)]
        for j in range(1, G):
            errors.append(((s[0] - s[j]) / t_s - (t[b][0] - t[b][j]) / t_t) ** 2)
    return sum(errors) / len(errors)


def ref_stable(q, k, t, G, tau, t_t, positive_first=True, inbatch=True):
    q, k, t = q.tolist(), k.tolist(), t.tolist()
    B = len(q)
    total = 0.0
    for b in range(B):
        w = _softmax([x / t_t for x in t[b]])
        positions = list(range(G))
        if positive_first:
            order = [0] + sorted(positions[1:], key=lambda j: -t[b][j])
        else:
            order = sorted(positions, key=lambda j: -t[b][j])
        for i, pos in enumerate(order):
            excluded = {b * G + earlier for earlier in order[:i]}
            pool = range(B * G) if inbatch else range(b * G, (b + 1) * G)
            candidates = [c for c in pool if c not in excluded]
            logits = [_dot(q[b], k[c]) / tau for c in candidates]
            total += w[pos] * _neg_log_softmax_at(logits, candidates.index(b * G + pos)) / B
    return total


def _batch(B, G, D, seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    q = F.normalize(torch.randn(B, D, generator=gen, dtype=dtype), dim=-1)
    k = F.normalize(torch.randn(B * G, D, generator=gen, dtype=dtype), dim=-1)
    t = torch.randn(B, G, generator=gen, dtype=dtype) * 2
    return q, k, t


SHAPES = [(2, 2, 3), (3, 3, 4), (2, 3, 4)]


# ---- infonce ---------------------------------------------------------------------------------------

def test_infonce_hand_computed():
    # q0 matches only k0 (its positive), q1 only k2 (its positive, at b*G = 2); tau = 1.
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    k = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    assert infonce_loss(q, k, 2, cos_temperature=1.0).item() == pytest.approx(math.log(1 + 3 / math.e))
    assert infonce_loss(q, k, 2, cos_temperature=1.0, inbatch_negatives=False).item() == pytest.approx(
        math.log(1 + 1 / math.e))
    # cos_temperature divides the scores: tau = 0.5 doubles them.
    assert infonce_loss(q, k, 2, cos_temperature=0.5).item() == pytest.approx(math.log(1 + 3 / math.e ** 2))


def test_infonce_inbatch_targets_are_b_times_group_size():
    B, G, D = 3, 3, 4
    q, k, _ = _batch(B, G, D)
    expected = F.cross_entropy(q @ k.T / 0.05, torch.tensor([0, 3, 6]))
    assert infonce_loss(q, k, G, cos_temperature=0.05).item() == pytest.approx(expected.item(), rel=1e-12)
    # A positive copied from its query wins by far only at column b*G: the loss is then near zero.
    k_aligned = k.clone()
    k_aligned[torch.tensor([0, 3, 6])] = q
    assert infonce_loss(q, k_aligned, G, cos_temperature=0.01).item() < 1e-3
    k_shifted = k.clone()
    k_shifted[torch.tensor([1, 4, 7])] = q
    assert infonce_loss(q, k_shifted, G, cos_temperature=0.01).item() > 10


@pytest.mark.parametrize("B,G,D", SHAPES)
@pytest.mark.parametrize("inbatch", [True, False])
@pytest.mark.parametrize("tau", [1.0, 0.05])
def test_infonce_matches_loop(B, G, D, inbatch, tau):
    q, k, _ = _batch(B, G, D, seed=B * 10 + G)
    got = infonce_loss(q, k, G, cos_temperature=tau, inbatch_negatives=inbatch).item()
    assert got == pytest.approx(ref_infonce(q, k, G, tau, inbatch), rel=1e-10)


def test_infonce_cross_device_needs_inbatch():
    q, k, _ = _batch(2, 2, 3)
    with pytest.raises(ValueError, match="inbatch"):
        infonce_loss(q, k, 2, inbatch_negatives=False, cross_device=True)


# ---- kl distillation -------------------------------------------------------------------------------

def test_kl_hand_computed():
    # One query, two keys with student scores [1, 0] (tau = 1) and a uniform teacher:
    # KL(u || r) = sum 0.5 * (log 0.5 - log r_i), r = softmax([1, 0]).
    q = torch.tensor([[1.0, 0.0]])
    k = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    t = torch.tensor([[3.0, 3.0]])
    r0 = math.e / (math.e + 1)
    expected = 0.5 * (math.log(0.5) - math.log(r0)) + 0.5 * (math.log(0.5) - math.log(1 - r0))
    assert kl_distill_loss(q, k, t, 2, cos_temperature=1.0).item() == pytest.approx(expected)
    # Student temperature -> infinity flattens the student to uniform: KL -> 0.
    assert kl_distill_loss(q, k, t, 2, cos_temperature=1.0, student_temperature=1e6).item() == pytest.approx(
        0.0, abs=1e-6)


@pytest.mark.parametrize("B,G,D", SHAPES)
@pytest.mark.parametrize("t_t,t_s", [(1.0, 1.0), (0.1, 1.0), (1.0, 3.0), (0.5, 0.2)])
def test_kl_matches_loop(B, G, D, t_t, t_s):
    q, k, t = _batch(B, G, D, seed=G)
    got = kl_distill_loss(q, k, t, G, cos_temperature=0.1, teacher_temperature=t_t,
                          student_temperature=t_s).item()
    assert got == pytest.approx(ref_kl(q, k, t, G, 0.1, t_t, t_s), rel=1e-10)


# ---- margin mse ------------------------------------------------------------------------------------

def test_margin_mse_hand_computed():
    # s = [1, 0, -1] (tau = 1), teacher [2, 1, 1]: student margins [1, 2], teacher margins [1, 1].
    q = torch.tensor([[1.0, 0.0]])
    k = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    t = torch.tensor([[2.0, 1.0, 1.0]])
    assert margin_mse_loss(q, k, t, 3, cos_temperature=1.0).item() == pytest.approx((0 + 1) / 2)
    # teacher_temperature 0.5 doubles the teacher margins to [2, 2]: errors [1, 0].
    assert margin_mse_loss(q, k, t, 3, cos_temperature=1.0, teacher_temperature=0.5).item() == pytest.approx(0.5)
    # student_temperature 2 halves the student margins to [0.5, 1]: errors [0.25, 0].
    assert margin_mse_loss(q, k, t, 3, cos_temperature=1.0, student_temperature=2.0).item() == pytest.approx(
        0.125)


@pytest.mark.parametrize("B,G,D", SHAPES)
def test_margin_mse_matches_loop(B, G, D):
    q, k, t = _batch(B, G, D, seed=7)
    got = margin_mse_loss(q, k, t, G, cos_temperature=0.5, teacher_temperature=0.7, student_temperature=1.3)
    assert got.item() == pytest.approx(ref_margin_mse(q, k, t, G, 0.5, 0.7, 1.3), rel=1e-10)


def test_margin_mse_needs_a_negative():
    q, k, t = _batch(2, 1, 3)
    with pytest.raises(ValueError, match="group_size >= 2"):
        margin_mse_loss(q, k, t, 1)


# ---- stable distillation ---------------------------------------------------------------------------

def test_teacher_ranking():
    t = torch.tensor([[0.0, 5.0, 1.0, 5.0], [9.0, 1.0, 2.0, 3.0]])
    assert teacher_ranking(t, positive_first=True).tolist() == [[0, 1, 3, 2], [0, 3, 2, 1]]
    assert teacher_ranking(t, positive_first=False).tolist() == [[1, 3, 2, 0], [0, 3, 2, 1]]


def test_stable_distill_hand_computed():
    # One query, scores [1, 0, 0] (tau = 1), teacher [0, ln 3, 0] -> w = [1/5, 3/5, 1/5].
    q = torch.tensor([[1.0, 0.0, 0.0]])
    k = torch.eye(3)
    t = torch.tensor([[0.0, math.log(3.0), 0.0]])
    e = math.e
    # positive first: order [0, 1, 2]; step 0 over [1,0,0] at 0, step 1 over [0,0] (key 0 masked), step 2 alone.
    expected = 0.2 * math.log(1 + 2 / e) + 0.6 * math.log(2) + 0.2 * 0.0
    assert stable_distill_loss(q, k, t, 3, cos_temperature=1.0).item() == pytest.approx(expected)
    # by teacher score: order [1, 0, 2]; step 0 over [1,0,0] at key 1, step 1 over keys {0, 2} at key 0.
    expected = 0.6 * math.log(e + 2) + 0.2 * math.log(1 + 1 / e)
    got = stable_distill_loss(q, k, t, 3, cos_temperature=1.0, positive_first=False).item()
    assert got == pytest.approx(expected)
    # teacher_temperature 0.5 squares the odds: w = [1/11, 9/11, 1/11].
    expected = math.log(1 + 2 / e) / 11 + 9 / 11 * math.log(2)
    got = stable_distill_loss(q, k, t, 3, cos_temperature=1.0, teacher_temperature=0.5).item()
    assert got == pytest.approx(expected)


def test_stable_distill_masks_only_the_querys_own_earlier_keys():
    # Two queries, G = 2, tau = 1, all scores 0: at step 1 query b has 3 candidates (its earlier key masked,
    # the other query's two keys kept), so CE_1 = log 3; CE_0 = log 4. Teacher uniform -> w = 1/2.
    q = torch.zeros(2, 2)
    k = torch.zeros(4, 2)
    t = torch.zeros(2, 2)
    got = stable_distill_loss(q, k, t, 2, cos_temperature=1.0).item()
    assert got == pytest.approx(0.5 * math.log(4) + 0.5 * math.log(3))


@pytest.mark.parametrize("B,G,D", SHAPES)
@pytest.mark.parametrize("positive_first", [True, False])
@pytest.mark.parametrize("t_t", [1.0, 0.3])
def test_stable_distill_matches_loop(B, G, D, positive_first, t_t):
    q, k, t = _batch(B, G, D, seed=B + G + D)
    got = stable_distill_loss(q, k, t, G, cos_temperature=0.2, teacher_temperature=t_t,
                              positive_first=positive_first).item()
    assert got == pytest.approx(ref_stable(q, k, t, G, 0.2, t_t, positive_first), rel=1e-10)


@pytest.mark.parametrize("B,G,D", SHAPES)
def test_stable_distill_without_inbatch_negatives_ranks_each_query_s_own_keys(B, G, D):
    q, k, t = _batch(B, G, D, seed=B * G + D)
    got = stable_distill_loss(q, k, t, G, cos_temperature=0.5, inbatch_negatives=False).item()
    assert got == pytest.approx(ref_stable(q, k, t, G, 0.5, 1.0, inbatch=False), rel=1e-10)
    assert got != pytest.approx(ref_stable(q, k, t, G, 0.5, 1.0, inbatch=True), rel=1e-6)  # guard: the option matters


def test_compute_loss_inbatch_option_reaches_stable_distillation():
    q, k, t = _batch(2, 3, 4, seed=8)
    params = LossParams(contrastive_weight=0.0, stable_distill=True, inbatch_negatives=False, cos_temperature=0.5)
    got = compute_loss(q, k, t, 3, params)["loss"].item()
    assert got == pytest.approx(ref_stable(q, k, t, 3, 0.5, 1.0, inbatch=False), rel=1e-10)


def test_stable_distill_positive_first_changes_the_value_when_the_positive_is_not_top():
    q, k, _ = _batch(2, 3, 4, seed=3)
    t = torch.tensor([[0.0, 2.0, 1.0], [0.0, 1.0, 3.0]], dtype=torch.float64)
    # (at tau = 0.01 another query's key dominates every softmax and the order hardly matters: use tau = 1)
    on = stable_distill_loss(q, k, t, 3, cos_temperature=1.0, positive_first=True)
    off = stable_distill_loss(q, k, t, 3, cos_temperature=1.0, positive_first=False)
    assert abs(on.item() - off.item()) > 1e-3


# ---- gradients -------------------------------------------------------------------------------------

def _grad_inputs(B=2, G=3, D=3, seed=11):
    q, k, t = _batch(B, G, D, seed=seed)
    return q.requires_grad_(), k.requires_grad_(), t


@pytest.mark.parametrize("inbatch", [True, False])
def test_gradcheck_infonce(inbatch):
    q, k, _ = _grad_inputs()
    assert torch.autograd.gradcheck(
        lambda q_, k_: infonce_loss(q_, k_, 3, cos_temperature=0.5, inbatch_negatives=inbatch), (q, k))


@pytest.mark.parametrize("positive_first", [True, False])
def test_gradcheck_stable_distill(positive_first):
    q, k, t = _grad_inputs()
    assert torch.autograd.gradcheck(
        lambda q_, k_: stable_distill_loss(q_, k_, t, 3, cos_temperature=0.5, teacher_temperature=0.7,
                                           positive_first=positive_first), (q, k))


def test_gradcheck_kl_and_margin_mse():
    q, k, t = _grad_inputs()
    assert torch.autograd.gradcheck(
        lambda q_, k_: kl_distill_loss(q_, k_, t, 3, cos_temperature=0.5, teacher_temperature=0.7,
                                       student_temperature=1.5), (q, k))
    assert torch.autograd.gradcheck(
        lambda q_, k_: margin_mse_loss(q_, k_, t, 3, cos_temperature=0.5), (q, k))


def test_teacher_scores_get_no_gradient():
    q, k, t = _grad_inputs()
    t = t.clone().requires_grad_()
    stable_distill_loss(q, k, t, 3).backward()
    assert t.grad is None


# ---- compute_loss and registry --------------------------------------------------------------------

def test_compute_loss_weights_are_applied_as_given():
    q, k, t = _batch(3, 2, 4)
    params = LossParams(contrastive_weight=0.3, distill_weight=2.5, cos_temperature=0.1,
                        teacher_temperature=0.5, student_temperature=2.0)
    out = compute_loss(q, k, t, 2, params)
    c = infonce_loss(q, k, 2, cos_temperature=0.1)
    d = kl_distill_loss(q, k, t, 2, cos_temperature=0.1, teacher_temperature=0.5, student_temperature=2.0)
    assert out["contrastive"].item() == pytest.approx(c.item(), rel=1e-12)
    assert out["distill"].item() == pytest.approx(d.item(), rel=1e-12)
    assert out["loss"].item() == pytest.approx(0.3 * c.item() + 2.5 * d.item(), rel=1e-12)
    assert out["unscaled_loss"].item() == pytest.approx(out["loss"].item(), rel=1e-12)


@pytest.mark.parametrize("stable,distill_loss,expected", [
    (True, "kl", "stable"), (False, "kl", "kl"), (False, "margin_mse", "margin_mse"), (True, "margin_mse", "stable")])
def test_compute_loss_picks_the_distillation_loss(stable, distill_loss, expected):
    q, k, t = _batch(2, 3, 4, seed=5)
    params = LossParams(contrastive_weight=0.0, stable_distill=stable, distill_loss=distill_loss,
                        cos_temperature=0.3, teacher_temperature=0.8, stable_distill_positive_first=False)
    reference = {
        "stable": stable_distill_loss(q, k, t, 3, cos_temperature=0.3, teacher_temperature=0.8, positive_first=False),
        "kl": kl_distill_loss(q, k, t, 3, cos_temperature=0.3, teacher_temperature=0.8),
        "margin_mse": margin_mse_loss(q, k, t, 3, cos_temperature=0.3, teacher_temperature=0.8),
    }[expected]
    assert compute_loss(q, k, t, 3, params)["loss"].item() == pytest.approx(reference.item(), rel=1e-12)


def test_compute_loss_inbatch_option_reaches_infonce():
    q, k, _ = _batch(2, 3, 4)
    out = compute_loss(q, k, None, 3, LossParams(inbatch_negatives=False, cos_temperature=0.2))
    assert out["loss"].item() == pytest.approx(ref_infonce(q, k, 3, 0.2, inbatch=False), rel=1e-10)


def test_zero_weight_terms_are_not_computed(monkeypatch):
    from llm_embedder.modeling.losses import RegisteredLoss

    def boom(*args, **kwargs):
        raise AssertionError("a zero-weight term was computed")

    q, k, t = _batch(2, 2, 3)
    monkeypatch.setitem(LOSSES, "infonce", RegisteredLoss("infonce", boom, False))
    out = compute_loss(q, k, t, 2, LossParams(contrastive_weight=0.0, distill_weight=1.0))
    assert out["contrastive"].item() == 0.0 and out["distill"].item() > 0
    monkeypatch.setitem(LOSSES, "kl_distill", RegisteredLoss("kl_distill", boom, True))
    monkeypatch.setitem(LOSSES, "infonce", RegisteredLoss("infonce", lambda *a, **kw: q.sum() * 0 + 1.5, False))
    out = compute_loss(q, k, t, 2, LossParams(contrastive_weight=2.0, distill_weight=0.0))
    assert out["loss"].item() == pytest.approx(3.0) and out["distill"].item() == 0.0


def test_distillation_skipped_without_teacher_and_loss_stays_differentiable():
    q, k, _ = _grad_inputs()
    out = compute_loss(q, k, None, 3, LossParams(contrastive_weight=1.0, distill_weight=1.0))
    assert out["distill"].item() == 0.0
    assert out["loss"].item() == pytest.approx(infonce_loss(q, k, 3).item(), rel=1e-12)
    # Nothing to compute (chat-like recipe without teacher scores): a zero loss that still backpropagates.
    out = compute_loss(q, k, None, 3, LossParams(contrastive_weight=0.0, distill_weight=1.0))
    assert out["loss"].item() == 0.0
    out["loss"].backward()
    assert torch.count_nonzero(q.grad) == 0 and torch.count_nonzero(k.grad) == 0


@pytest.mark.parametrize("kwargs,argument", [
    (dict(cos_temperature=0.0), "--cos_temperature"), (dict(teacher_temperature=-1.0), "--teacher_temperature"),
    (dict(student_temperature=float("nan")), "--student_temperature"),
    (dict(contrastive_weight=-0.5), "--contrastive_weight"), (dict(distill_weight=float("nan")), "--distill_weight"),
    (dict(distill_loss="mse"), "--distill_loss")])
def test_loss_params_reject_bad_values(kwargs, argument):
    with pytest.raises(UserError, match=argument) as info:
        LossParams(**kwargs)
    assert "\n" not in str(info.value)


def test_registry():
    assert set(LOSSES) >= {"infonce", "kl_distill", "stable_distill", "margin_mse"}
    with pytest.raises(UserError, match="unknown loss 'nope'; known: .*infonce"):
        get_loss("nope")
    assert get_loss("stable_distill").setting_keywords() == {
        "cos_temperature": "cos_temperature", "teacher_temperature": "teacher_temperature",
        "inbatch_negatives": "inbatch_negatives", "positive_first": "stable_distill_positive_first"}
    with pytest.raises(UserError, match="task 'x': loss 'infonce' has no parameter 'margin' \\(it takes: cos_temperature"):
        TaskLoss([LossTerm("infonce", 1.0, (("margin", 0.1),))], LossParams().__dict__, where="task 'x'")
    with pytest.raises(UserError, match="already registered"):
        register_loss(RegisteredLoss("infonce", infonce_loss, False))


def test_a_registered_loss_is_a_term_with_its_params_and_the_settings_it_names(monkeypatch):
    seen = {}

    def hinge(q, k, group_size, *, cos_temperature=1.0, margin=0.0):
        seen.update(cos_temperature=cos_temperature, margin=margin)
        return (q.sum() * 0 + 1.0) * margin

    monkeypatch.setitem(LOSSES, "hinge", RegisteredLoss("hinge", hinge, needs_teacher=False))
    q, k, _ = _batch(2, 2, 3)
    settings = dict(LossParams(cos_temperature=0.07).__dict__)
    out = TaskLoss([LossTerm("hinge", 2.0, (("margin", 0.25),))], settings)(q, k, None, 2)
    assert seen == {"cos_temperature": 0.07, "margin": 0.25} and out["loss"].item() == pytest.approx(0.5)
    assert out["hinge"].item() == pytest.approx(0.25)


def test_layout_errors():
    q, k, t = _batch(2, 3, 4)
    with pytest.raises(ValueError, match=r"k must be \[B\*G, D\]"):
        infonce_loss(q, k[:-1], 3)
    with pytest.raises(ValueError, match=r"teacher scores must be \[B, G\]"):
        kl_distill_loss(q, k, t[:, :2], 3)


# ---- distributed helpers in one process ------------------------------------------------------------

def test_gather_is_identity_without_process_group():
    assert not distributed.is_distributed()
    assert distributed.world_size() == 1 and distributed.rank() == 0
    x = torch.randn(3, 2, requires_grad=True)
    assert distributed.gather_with_grad(x) is x
    assert distributed.gather_no_grad(x) is x
    q, k, t = _batch(2, 2, 3)
    # cross-device on one process = the local loss, and no world-size scaling
    out = compute_loss(q, k, t, 2, LossParams(negative_cross_device=True, stable_distill=True))
    assert out["loss"].item() == pytest.approx(out["unscaled_loss"].item(), rel=1e-12)
    assert out["contrastive"].item() == pytest.approx(infonce_loss(q, k, 2).item(), rel=1e-12)
