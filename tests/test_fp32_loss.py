"""Losses run in fp32 under bf16: the trainer's single loss entry point (``training.model.fp32_loss``)
upcasts embeddings and teacher scores and switches autocast off, so a bf16 step's loss and embedding
gradients equal the fp32 computation on the same (bf16-valued) embeddings to fp32 rounding."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from llm_embedder.modeling.losses import LossParams, compute_loss
from llm_embedder.training.model import fp32_loss

B, G, D = 4, 4, 32


def _batch():
    gen = torch.Generator().manual_seed(5)
    q = F.normalize(torch.randn(B, D, generator=gen), dim=-1)
    # keys close to their query (cosines near 1, where bf16 spacing is 2^-8)
    k = F.normalize(q.repeat_interleave(G, 0) + 0.15 * torch.randn(B * G, D, generator=gen), dim=-1)
    teacher = -3.0 - torch.rand(B, G, generator=gen) * 0.05  # LM log-likelihoods a few hundredths apart
    return q.bfloat16(), k.bfloat16(), teacher


@pytest.mark.parametrize("params", [
    LossParams(contrastive_weight=1.0, distill_weight=1.0, teacher_temperature=0.01),
    LossParams(contrastive_weight=0.0, distill_weight=1.0, stable_distill=True, teacher_temperature=0.01),
])
def test_bf16_autocast_loss_equals_fp32_loss(params):
    q, k, teacher = _batch()
    q32, k32 = q.float().requires_grad_(), k.float().requires_grad_()
    reference = compute_loss(q32, k32, teacher, G, params)
    reference["loss"].backward()

    qb, kb = q.clone().requires_grad_(), k.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = fp32_loss(compute_loss, qb, kb, teacher, G, params)
    got["loss"].backward()
    assert got["loss"].dtype == torch.float32
    assert got["loss"].item() == pytest.approx(reference["loss"].item(), rel=1e-6)
    torch.testing.assert_close(qb.grad.float(), q32.grad.bfloat16().float(), rtol=0, atol=0)
    torch.testing.assert_close(kb.grad.float(), k32.grad.bfloat16().float(), rtol=0, atol=0)

    # guard: the same loss in the embeddings' dtype under autocast (no upcast, teacher scores in bf16) is far off
    with torch.autocast("cpu", dtype=torch.bfloat16):
        naive = compute_loss(q, k, teacher.bfloat16(), G, params)
    assert abs(naive["loss"].float().item() - reference["loss"].item()) > 1e-2


def test_upcasting_alone_is_not_enough_under_autocast():
    """Guard for the autocast switch in fp32_loss: fp32 inputs inside bf16 autocast still get a bf16 matmul."""
    q, k, teacher = _batch()
    params = LossParams(contrastive_weight=1.0, distill_weight=0.0)
    reference = compute_loss(q.float(), k.float(), teacher, G, params)["loss"].item()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        upcast_only = compute_loss(q.float(), k.float(), teacher, G, params)["loss"].float().item()
        boundary = fp32_loss(compute_loss, q, k, teacher, G, params)["loss"].item()
    assert boundary == pytest.approx(reference, rel=1e-6)
    assert abs(upcast_only - reference) > 1e-3, (upcast_only, reference)
