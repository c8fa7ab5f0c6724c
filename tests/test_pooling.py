"""Pooling on hand-built tensors: each method, both padding sides, and the registry's errors."""
from __future__ import annotations

import pytest
import torch

from llm_embedder.errors import UserError
from llm_embedder.modeling import pooling
from llm_embedder.modeling.pooling import available_poolings, get_pooling, pool, register_pooling

# Two texts: row 0 has 3 real tokens, row 1 has 1; token t of a row has hidden state [row*10 + t, -(t+1)].
REAL = [[[0.0, -1.0], [1.0, -2.0], [2.0, -3.0]], [[10.0, -1.0]]]
PAD = [99.0, 99.0]  # pad states are large so any leak shows


def batch(padding_side: str):
    """Hidden states [2, 4, 2] and mask [2, 4], padded to length 4 on ``padding_side``."""
    states, masks = [], []
    for tokens in REAL:
        pads = 4 - len(tokens)
        if padding_side == "right":
            states.append(tokens + [PAD] * pads)
            masks.append([1] * len(tokens) + [0] * pads)
        else:
            states.append([PAD] * pads + tokens)
            masks.append([0] * pads + [1] * len(tokens))
    return torch.tensor(states), torch.tensor(masks)


EXPECTED = {
    "cls": [[0.0, -1.0], [10.0, -1.0]],
    "mean": [[1.0, -2.0], [10.0, -1.0]],
    "last": [[2.0, -3.0], [10.0, -1.0]],
    "eos": [[2.0, -3.0], [10.0, -1.0]],
}


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("method", sorted(EXPECTED))
def test_pool_hand_computed(method, side):
    hidden, mask = batch(side)
    torch.testing.assert_close(pool(hidden, mask, method), torch.tensor(EXPECTED[method]))


def test_padding_side_detected_per_row():
    """One row left-padded, the other right-padded in the same batch: each row still finds its tokens."""
    left_h, left_m = batch("left")
    right_h, right_m = batch("right")
    hidden = torch.stack([left_h[0], right_h[1]])
    mask = torch.stack([left_m[0], right_m[1]])
    for method in ("cls", "mean", "last"):
        torch.testing.assert_close(pool(hidden, mask, method), torch.tensor(EXPECTED[method]))


def test_unpadded_batch_and_gradient():
    hidden = torch.arange(12, dtype=torch.float32).reshape(2, 3, 2).requires_grad_()
    mask = torch.ones(2, 3, dtype=torch.long)
    torch.testing.assert_close(pool(hidden, mask, "mean"), hidden.mean(dim=1))
    torch.testing.assert_close(pool(hidden, mask, "last"), hidden[:, -1])
    pool(hidden, mask, "mean").sum().backward()
    torch.testing.assert_close(hidden.grad, torch.full_like(hidden, 1 / 3))


def test_mean_ignores_pad_gradient():
    hidden, mask = batch("right")
    hidden.requires_grad_()
    pool(hidden, mask, "mean").sum().backward()
    assert hidden.grad[mask == 0].abs().sum() == 0
    torch.testing.assert_close(hidden.grad[1, 0], torch.ones(2))  # the only token of row 1 gets weight 1


def test_registry_lookup_and_errors():
    assert {"cls", "mean", "last", "eos"} <= set(available_poolings())
    assert get_pooling("eos").fn is get_pooling("last").fn
    assert get_pooling("last").sentence_transformers_mode == "lasttoken"
    with pytest.raises(UserError, match=r"^--pooling_method: unknown pooling 'max' \(choose from"):
        pool(*batch("right"), "max")
    with pytest.raises(UserError, match="already registered"):
        register_pooling("mean", lambda h, m: h[:, 0])
    with pytest.raises(ValueError, match=r"expected hidden states \[N, L, H\]"):
        pool(torch.zeros(2, 4), torch.ones(2, 4), "mean")


def test_register_custom_pooling(monkeypatch):
    monkeypatch.setattr(pooling, "_REGISTRY", dict(pooling._REGISTRY))  # keep the global registry clean
    method = register_pooling("first_token_test", lambda h, m: h[:, 0])
    hidden, mask = batch("right")
    torch.testing.assert_close(pool(hidden, mask, "first_token_test"), hidden[:, 0])
    assert method.sentence_transformers_mode is None
