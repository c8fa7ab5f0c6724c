"""CPU attention dropout: the same maths as torch's scaled_dot_product_attention, the same dropout distribution,
used by DenseEncoder.embed in training only, and torch's function restored afterwards."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from llm_embedder.modeling import attention_dropout as ad
from llm_embedder.modeling.encoder import DenseEncoder

TORCH_SDPA = ad._TORCH_SDPA


def qkv(b=2, h=3, lq=5, lk=7, d=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, h, n, d, generator=g, dtype=torch.float64, requires_grad=True) for n in (lq, lk, lk)]


def reference(q, k, v, keep, p, attn_mask=None):
    """Hand-written attention with a given keep mask: softmax(q kᵀ / √d + mask) · keep / (1 − p) · v."""
    scores = q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5
    if attn_mask is not None:
        scores = scores + attn_mask
    return (torch.softmax(scores, -1) * keep / (1 - p)) @ v


def grads(out, tensors, seed=1):
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype)
    return torch.autograd.grad((out * weight).sum(), tensors)


def test_given_mask_values_and_gradients_equal_the_hand_formula(monkeypatch):
    q, k, v = qkv()
    mask = torch.zeros(2, 1, 5, 7, dtype=torch.float64)
    mask[0, :, :, 5:] = torch.finfo(torch.float64).min  # padded keys of the first row
    keep = torch.rand(2, 3, 5, 7, generator=torch.Generator().manual_seed(3)) > 0.25
    monkeypatch.setattr(ad, "keep_mask", lambda shape, p, device="cpu": keep)
    p = 0.25
    ours = ad.dropout_attention(q, k, v, attn_mask=mask, dropout_p=p)
    ref = reference(q, k, v, keep, p, mask)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    for a, b in zip(grads(ours, (q, k, v)), grads(ref, (q, k, v))):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    # guard: the mask matters (another mask gives another output)
    assert not torch.allclose(ours, reference(q, k, v, torch.ones_like(keep), p, mask))


@pytest.mark.parametrize("kind", ["none", "float", "float_wider_than_scores", "bool", "causal", "bool_with_empty_row"])
def test_masks_follow_torch_semantics(monkeypatch, kind):
    """Every entry kept: the output is torch's (dropout-free) output scaled by 1 / (1 − p), for each mask kind."""
    q, k, v = qkv(lq=6, lk=6)
    monkeypatch.setattr(ad, "keep_mask", lambda shape, p, device="cpu": torch.ones(shape, dtype=torch.bool))
    kwargs = {}
    if kind == "float":  # added to the scores in place
        kwargs["attn_mask"] = torch.randn(2, 1, 6, 6, dtype=torch.float64)
    elif kind == "float_wider_than_scores":  # a mask that does not broadcast into the scores: refused, as by torch
        q, k, v = (t[:1] for t in (q, k, v))
        kwargs["attn_mask"] = torch.randn(2, 1, 6, 6, dtype=torch.float64)
        for function in (ad.dropout_attention, TORCH_SDPA):
            with pytest.raises(RuntimeError):
                function(q, k, v, dropout_p=0.5, **kwargs)
        return
    elif kind.startswith("bool"):
        allowed = torch.rand(2, 3, 6, 6, generator=torch.Generator().manual_seed(5)) > 0.4
        allowed[..., 0] = kind == "bool"  # every row keeps key 0, or (the last case) row 0 has no key at all
        if kind == "bool_with_empty_row":
            allowed[:, :, 0, :] = False
            allowed[:, :, 1:, 0] = True
        kwargs["attn_mask"] = allowed
    elif kind == "causal":
        kwargs["is_causal"] = True
    p = 0.5
    ours = ad.dropout_attention(q, k, v, dropout_p=p, **kwargs)
    torch.testing.assert_close(ours, TORCH_SDPA(q, k, v, **kwargs) / (1 - p), rtol=1e-10, atol=1e-12)
    assert torch.isfinite(ours).all()


def test_no_dropout_is_torchs_own_call(monkeypatch):
    calls = []
    monkeypatch.setattr(ad, "_TORCH_SDPA", lambda *a, **kw: calls.append(kw["dropout_p"]) or TORCH_SDPA(*a, **kw))
    q, k, v = qkv()
    out = ad.dropout_attention(q, k, v, dropout_p=0.0)
    assert calls == [0.0]
    torch.testing.assert_close(out, TORCH_SDPA(q, k, v))
    ad.dropout_attention(q, k, v, dropout_p=0.1)
    assert calls == [0.0]  # guard: with dropout the call is ours


def test_dropout_of_one_is_refused():
    q, k, v = qkv()
    with pytest.raises(ValueError, match="dropout_p must be below 1"):
        ad.dropout_attention(q, k, v, dropout_p=0.999999)


def test_keep_rate_and_unbiased_expectation():
    torch.manual_seed(0)
    keep = ad.keep_mask((64, 12, 64, 64), 0.1)
    assert keep.dtype == torch.bool and abs(keep.float().mean().item() - 0.9) < 0.002
    torch.manual_seed(0)
    assert torch.equal(keep, ad.keep_mask((64, 12, 64, 64), 0.1))  # reproducible under torch.manual_seed
    assert ad.quantized_drop_probability(0.1) == 6554 / 65536
    # averaged over many draws, dropped attention is the undropped attention (the scale uses the rounded p)
    q, k, v = (t.detach().float() for t in qkv(b=1, h=1))
    draws = ad.dropout_attention(*(t.expand(4000, -1, -1, -1) for t in (q, k, v)), dropout_p=0.3)  # 4,000 masks
    assert draws.std(0).min() > 0.01  # guard: the draws differ
    torch.testing.assert_close(draws.mean(0, keepdim=True), TORCH_SDPA(q, k, v), rtol=0, atol=0.03)


def test_context_switches_torch_function_and_restores_it():
    assert F.scaled_dot_product_attention is TORCH_SDPA
    with ad.cpu_attention_dropout():
        assert F.scaled_dot_product_attention is ad.dropout_attention
        with ad.cpu_attention_dropout():
            pass
        assert F.scaled_dot_product_attention is ad.dropout_attention  # nested exit keeps the outer switch
    assert F.scaled_dot_product_attention is TORCH_SDPA
    with pytest.raises(RuntimeError), ad.cpu_attention_dropout():
        raise RuntimeError("boom")
    assert F.scaled_dot_product_attention is TORCH_SDPA
    with ad.cpu_attention_dropout(enabled=False):
        assert F.scaled_dot_product_attention is TORCH_SDPA


@pytest.mark.parametrize("fast", [True, False])
def test_embed_uses_it_in_training_only(tiny_bert_dir, monkeypatch, fast):
    encoder = DenseEncoder.from_pretrained(tiny_bert_dir, query_max_length=32, key_max_length=32)
    encoder.fast_attention_dropout = fast
    calls = []
    real = ad.dropout_attention
    monkeypatch.setattr(ad, "dropout_attention", lambda *a, **kw: calls.append(kw.get("dropout_p")) or real(*a, **kw))
    batch = encoder.tokenize(["a short query", "a somewhat longer query about cells"], side="query")
    encoder.eval()
    with torch.no_grad():
        encoder.embed(batch)
    assert calls == []
    encoder.train()
    emb = encoder.embed(batch)
    emb.sum().backward()
    assert (len(calls) > 0) == fast and all(p == pytest.approx(0.1) for p in calls)
    assert encoder.model.embeddings.word_embeddings.weight.grad is not None
    assert F.scaled_dot_product_attention is TORCH_SDPA


def test_not_under_gradient_checkpointing(tiny_bert_dir, monkeypatch):
    """Checkpointing recomputes the forward in backward, outside embed's switch: the two passes must match, so
    the encoder keeps torch's attention there (this raised CheckpointError before)."""
    encoder = DenseEncoder.from_pretrained(tiny_bert_dir, query_max_length=32, key_max_length=32)
    encoder.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    calls = []
    real = ad.dropout_attention
    monkeypatch.setattr(ad, "dropout_attention", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    encoder.train()
    emb = encoder.embed(encoder.tokenize(["a short query", "a somewhat longer query about cells"], side="query"))
    emb.sum().backward()
    assert calls == []
