"""ZeRO-3 saving: ``consolidated_weights`` puts the consolidated tensors into sharded parameters while the
model directory is written, and the shards back afterwards (the 2-process run is in
tests/distributed/test_training_distributed.py)."""
from __future__ import annotations

import torch

from llm_embedder.training.trainer import consolidated_weights


def test_consolidated_weights_are_swapped_in_and_the_shards_put_back():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1))
    full = {name: torch.randn_like(p) for name, p in model.named_parameters()}
    for p in model.parameters():  # what a ZeRO-3 rank holds outside a forward: empty placeholders
        p.data = torch.empty(0)
    with consolidated_weights(model, full):
        for name, p in model.named_parameters():
            assert torch.equal(p.data, full[name])
        assert model(torch.ones(1, 3)).shape == (1, 1)
    assert all(p.numel() == 0 for p in model.parameters())
    with consolidated_weights(model, None):  # no ZeRO-3: nothing changes
        assert all(p.numel() == 0 for p in model.parameters())
