"""GradCache: cached (chunked) parameter gradients must equal the uncached ones (cf. sentence-transformers
test_cmnrl.py), with dropout masks reproduced by the recorded RNG states."""
from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F
from transformers import BertConfig, BertModel

from llm_embedder.modeling import grad_cache
from llm_embedder.modeling.grad_cache import grad_cached_loss, split_inputs
from llm_embedder.modeling.losses import LossParams, compute_loss

B, G, L, VOCAB = 4, 3, 7, 50


class TinyEncoder(torch.nn.Module):
    """Random 2-layer BERT (float64), mean pooling, a query-only head (so the side matters), normalised."""

    def __init__(self, dropout: float, dtype=torch.float64):
        super().__init__()
        torch.manual_seed(0)
        config = BertConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=32, hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout,
                            max_position_embeddings=32)
        self.bert = BertModel(config, add_pooling_layer=False).to(dtype)
        self.query_head = torch.nn.Linear(16, 16).to(dtype)

    def embed(self, inputs, side):
        hidden = self.bert(**inputs).last_hidden_state
        mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1)
        if side == "query":
            pooled = self.query_head(pooled)
        return F.normalize(pooled, dim=-1)


def _inputs(n, seed):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (n, L), generator=gen)
    lengths = torch.randint(2, L + 1, (n,), generator=gen)
    mask = (torch.arange(L)[None, :] < lengths[:, None]).long()
    return {"input_ids": ids * mask, "attention_mask": mask}


QUERIES, KEYS = _inputs(B, 1), _inputs(B * G, 2)
TEACHER = torch.randn(B, G, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
PARAMS = LossParams(contrastive_weight=0.5, distill_weight=1.0, stable_distill=True, cos_temperature=0.05)


def loss_fn(q, k):
    return compute_loss(q, k, TEACHER, G, PARAMS)


def _grads(model):
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def uncached(model, chunk_size=None):
    """Plain backward; with chunk_size, embed in the same chunks (same RNG consumption as the cache)."""
    model.zero_grad()
    if chunk_size is None:
        q, k = model.embed(QUERIES, "query"), model.embed(KEYS, "key")
    else:
        q = torch.cat([model.embed(c, "query") for c in split_inputs(QUERIES, chunk_size)])
        k = torch.cat([model.embed(c, "key") for c in split_inputs(KEYS, chunk_size)])
    out = loss_fn(q, k)
    out["loss"].backward()
    return out, _grads(model)


def cached(model, chunk_size, scale=1.0):
    model.zero_grad()
    out = grad_cached_loss(model.embed, QUERIES, KEYS, loss_fn, chunk_size)
    (out["loss"] * scale).backward()
    return out, _grads(model)


def assert_same_grads(a, b, factor=1.0):
    assert a.keys() == b.keys() and len(a) > 10
    for name in a:
        torch.testing.assert_close(a[name], factor * b[name], rtol=1e-9, atol=1e-12, msg=name)


@pytest.mark.parametrize("chunk_size", [3, 100])
def test_cached_gradients_equal_uncached(chunk_size):
    model = TinyEncoder(dropout=0.0)
    ref_out, ref = uncached(model)
    out, got = cached(model, chunk_size)
    assert out["loss"].item() == pytest.approx(ref_out["loss"].item(), rel=1e-12)
    assert out["contrastive"].item() == pytest.approx(ref_out["contrastive"].item(), rel=1e-12)
    assert out["distill"].item() == pytest.approx(ref_out["distill"].item(), rel=1e-12)
    assert_same_grads(got, ref)


def test_loss_scaling_before_backward_scales_the_gradients():
    # e.g. the Trainer's division by gradient_accumulation_steps
    model = TinyEncoder(dropout=0.0)
    _, ref = uncached(model)
    _, got = cached(model, 5, scale=0.25)
    assert_same_grads(got, ref, factor=0.25)


def test_dropout_masks_are_replayed():
    model = TinyEncoder(dropout=0.3).train()
    torch.manual_seed(42)
    ref_out, ref = uncached(model, chunk_size=3)
    torch.manual_seed(42)
    out, got = cached(model, 3)
    assert out["loss"].item() == pytest.approx(ref_out["loss"].item(), rel=1e-12)
    assert_same_grads(got, ref)


def test_our_attention_dropout_masks_are_replayed_too(monkeypatch):
    """run_dense.py's default CPU attention dropout (modeling/attention_dropout.py) draws from torch's generator,
    so GradCache's replayed forward draws the same masks: the same gradients as the graph-holding run."""
    from llm_embedder.modeling import attention_dropout as ad

    calls = []
    real = ad.dropout_attention
    monkeypatch.setattr(ad, "dropout_attention", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    class OurDropoutEncoder(TinyEncoder):
        def embed(self, inputs, side):
            with ad.cpu_attention_dropout():
                return super().embed(inputs, side)

    model = OurDropoutEncoder(dropout=0.3).train()
    torch.manual_seed(42)
    ref_out, ref = uncached(model, chunk_size=3)
    assert calls  # guard: the attention ran through our dropout
    torch.manual_seed(42)
    out, got = cached(model, 3)
    assert out["loss"].item() == pytest.approx(ref_out["loss"].item(), rel=1e-12)
    assert_same_grads(got, ref)


def test_without_replayed_rng_the_gradients_would_differ(monkeypatch):
    model = TinyEncoder(dropout=0.3).train()
    torch.manual_seed(42)
    _, ref = uncached(model, chunk_size=3)
    monkeypatch.setattr(grad_cache.RandContext, "__enter__", lambda self: None)
    monkeypatch.setattr(grad_cache.RandContext, "__exit__", lambda self, *exc: None)
    torch.manual_seed(42)
    _, got = cached(model, 3)
    assert any(not torch.allclose(got[name], ref[name]) for name in ref)


def test_split_inputs():
    chunks = split_inputs(QUERIES, 3)
    assert [c["input_ids"].shape[0] for c in chunks] == [3, 1]
    assert torch.equal(torch.cat([c["attention_mask"] for c in chunks]), QUERIES["attention_mask"])
    with pytest.raises(ValueError, match="same number of rows"):
        split_inputs({"input_ids": torch.zeros(2, 3), "attention_mask": torch.zeros(3, 3)}, 2)
    with pytest.raises(ValueError, match="chunk_size"):
        grad_cached_loss(lambda x, s: x, QUERIES, KEYS, loss_fn, 0)


def test_separate_query_and_key_chunk_sizes():
    model = TinyEncoder(dropout=0.0)
    _, ref = uncached(model)
    model.zero_grad()
    out = grad_cached_loss(model.embed, QUERIES, KEYS, loss_fn, 3, key_chunk_size=5)
    out["loss"].backward()
    assert_same_grads(_grads(model), ref)


def test_full_model_step_with_grad_cache_equals_plain_step_with_dropout():
    """EmbedderModel (the module the trainer optimises) with GradCache vs without, dropout on, fp32, 1e-5."""
    from llm_embedder.training.model import EmbedderModel

    params = LossParams(contrastive_weight=1.0, distill_weight=1.0, cos_temperature=0.05)
    inputs = dict(query_inputs=QUERIES, key_inputs=KEYS, teacher_scores=TEACHER.float(), group_size=G)
    grads = {}
    for chunk in (0, 3):
        model = EmbedderModel(TinyEncoder(dropout=0.2, dtype=torch.float32), params, grad_cache_chunk_size=chunk,
                              grad_cache_key_chunk_size=chunk and 4).train()
        torch.manual_seed(7)
        if chunk:
            model(**inputs)["loss"].backward()
        else:  # the same chunks with a graph: the same dropout masks as the cache's recorded RNG states
            q = torch.cat([model.encoder.embed(c, "query") for c in split_inputs(QUERIES, 3)])
            k = torch.cat([model.encoder.embed(c, "key") for c in split_inputs(KEYS, 4)])
            compute_loss(q, k, TEACHER.float(), G, params)["loss"].backward()
        grads[chunk] = _grads(model)
    for name in grads[0]:
        torch.testing.assert_close(grads[3][name], grads[0][name], rtol=1e-5, atol=1e-6, msg=name)
    # guard: the comparison sees a factor (e.g. a lost loss scale) and a different dropout draw
    assert any(not torch.allclose(grads[3][n], 0.5 * grads[0][n], rtol=1e-5, atol=1e-6) for n in grads[0])


def _autocast_bf16(fn):
    def wrapped(*args):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return fn(*args)
    return wrapped


def _bf16_step(model, chunk_size):
    model.zero_grad()
    if chunk_size:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = grad_cached_loss(model.embed, QUERIES, KEYS, fp32_loss_fn, chunk_size)
    if not chunk_size:  # each chunk in its own autocast region (its own bf16 weight casts), as the replay does
        embed = _autocast_bf16(model.embed)
        q = torch.cat([embed(c, "query") for c in split_inputs(QUERIES, 3)])
        k = torch.cat([embed(c, "key") for c in split_inputs(KEYS, 3)])
        out = fp32_loss_fn(q, k)
    out["loss"].backward()
    return _grads(model)


def fp32_loss_fn(q, k):
    from llm_embedder.training.model import fp32_loss

    return fp32_loss(compute_loss, q, k, TEACHER.float(), G, PARAMS)


def _max_rel_err(a, b):
    """Largest gradient difference relative to the largest gradient entry (parameters whose true gradient
    is ~0, such as attention key biases, carry only rounding noise: a per-tensor ratio would be meaningless)."""
    scale = max(float(b[n].abs().max()) for n in b)
    return max(float((a[n] - b[n]).abs().max()) for n in b) / scale


def test_bf16_autocast_replay_matches_the_plain_bf16_step(monkeypatch):
    """The replay runs under the forward's autocast: gradients equal the plain bf16 step's within bf16
    tolerance; replayed in fp32 (the old behaviour, the guard) they are visibly further off."""
    model = TinyEncoder(dropout=0.0, dtype=torch.float32)
    plain = _bf16_step(model, 0)
    cached_grads = _bf16_step(model, 3)
    err = _max_rel_err(cached_grads, plain)
    assert err < 1e-3, err
    monkeypatch.setattr(grad_cache.AutocastState, "__call__", lambda self: grad_cache.contextlib.ExitStack())
    fp32_replay = _bf16_step(model, 3)
    guard_err = _max_rel_err(fp32_replay, plain)
    assert guard_err > 10 * max(err, 1e-4), (err, guard_err)


def test_grad_cache_refuses_zero3_in_one_line(tmp_path, repo_root):
    from llm_embedder.errors import UserError
    from llm_embedder.training.arguments import RetrievalTrainingArguments

    with pytest.raises(UserError, match="--grad_cache_chunk_size: GradCache runs with DDP and DeepSpeed ZeRO-1/2, not ZeRO-3"):
        RetrievalTrainingArguments(output_dir=str(tmp_path), grad_cache_key_chunk_size=2, use_cpu=True,
                                   deepspeed=str(repo_root / "data" / "deepspeed" / "stage3.json"))
    # refused before TrainingArguments set up DeepSpeed: later Trainers in this process must not start it
    assert os.environ.get("ACCELERATE_USE_DEEPSPEED", "false") != "true"
    with pytest.raises(UserError, match="--grad_cache_query_chunk_size: must be 0"):
        RetrievalTrainingArguments(output_dir=str(tmp_path), grad_cache_query_chunk_size=-1, use_cpu=True)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU refusal only")
@pytest.mark.parametrize("flag", ["--load_in_4bit", "--load_in_8bit"])
def test_qlora_flags_refuse_on_cpu_in_one_line(flag, capsys, tmp_path):
    from llm_embedder.training.run import main as run_dense

    with pytest.raises(SystemExit) as exit_info:
        run_dense(["--output_dir", str(tmp_path), "--train_data", "x.json", "--lora", flag])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {flag}: QLoRA needs a CUDA GPU and bitsandbytes"), err
    with pytest.raises(SystemExit):
        run_dense(["--output_dir", str(tmp_path), "--train_data", "x.json", flag])  # without LoRA
    assert "add --lora" in capsys.readouterr().err
