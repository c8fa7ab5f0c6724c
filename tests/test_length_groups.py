"""Length-grouped embedding: the grouping is optimal, and embed() gives the same vectors and gradients in groups."""
from __future__ import annotations

import itertools

import pytest
import torch

from llm_embedder.errors import UserError
from llm_embedder.modeling.encoder import DenseEncoder
from llm_embedder.modeling.length_groups import length_groups, padded_positions


def brute_force_cost(lengths, group_cost):
    """The cheapest split of the length-sorted rows into contiguous groups, by enumerating every cut set."""
    sorted_len = sorted(lengths, reverse=True)
    n, best = len(sorted_len), None
    for cuts in itertools.product([0, 1], repeat=n - 1):
        bounds = [0] + [i + 1 for i, c in enumerate(cuts) if c] + [n]
        cost = sum(sorted_len[a] * (b - a) + group_cost for a, b in zip(bounds, bounds[1:]))
        best = cost if best is None else min(best, cost)
    return best


@pytest.mark.parametrize("lengths,group_cost", [([256, 256, 250, 40, 38, 12, 11, 10], 64),
                                                ([5, 300, 7, 290, 6, 280, 9], 100),
                                                ([100] * 6, 10), ([200, 20, 199, 21, 198], 0)])
def test_groups_are_the_cheapest_split(lengths, group_cost):
    groups = length_groups(lengths, group_cost)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))  # every row exactly once
    cost = padded_positions(lengths, groups) + group_cost * len(groups)
    assert cost == brute_force_cost(lengths, group_cost)


def test_equal_lengths_stay_one_group_and_mixed_lengths_split():
    assert length_groups([64] * 10) == [list(range(10))]
    groups = length_groups([256] * 8 + [20] * 8)
    assert len(groups) == 2 and padded_positions([256] * 8 + [20] * 8, groups) == 8 * 256 + 8 * 20


@pytest.fixture(scope="module")
def encoder(tiny_bert_nodrop_dir):
    return DenseEncoder.from_pretrained(tiny_bert_nodrop_dir, pooling_method="mean", normalize=True,
                                        query_max_length=64, key_max_length=64)


TEXTS = ["a very long document " * 20, "short", "a medium length text about proteins and cells", "x",
         "another very long document about something else entirely " * 8, "tiny one", "long " * 80,
         "proteins fold " * 40, "one more", "cells divide and " * 30]


def test_grouped_embed_equals_one_padded_batch_values_and_gradients(encoder):
    batch = encoder.tokenize(TEXTS, side="key")
    lengths = batch["attention_mask"].sum(1).tolist()
    assert len(length_groups(lengths)) > 1 or max(lengths) < batch["attention_mask"].shape[1]  # guard: it splits
    grads = {}
    for split in (True, False):
        encoder.split_by_length = split
        encoder.zero_grad()
        emb = encoder.embed(batch, side="key")
        (emb * torch.linspace(-1, 1, emb.numel()).view_as(emb)).sum().backward()
        grads[split] = (emb.detach(), [p.grad.clone() for p in encoder.parameters() if p.grad is not None])
    encoder.split_by_length = True
    torch.testing.assert_close(grads[True][0], grads[False][0], atol=1e-6, rtol=1e-5)
    for a, b in zip(grads[True][1], grads[False][1]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_grouped_embed_keeps_input_order(encoder):
    """Guard for the re-ordering: each row's vector equals that text embedded alone."""
    batch = encoder.tokenize(TEXTS, side="key")
    with torch.no_grad():
        emb = encoder.embed(batch, side="key")
        for i, text in enumerate(TEXTS):
            alone = encoder.embed(encoder.tokenize([text], side="key"), side="key")
            torch.testing.assert_close(emb[i], alone[0], atol=1e-6, rtol=1e-5)


def test_config_overrides_change_the_loaded_config(tiny_bert_dir):
    enc = DenseEncoder.from_pretrained(tiny_bert_dir, config_overrides="attention_probs_dropout_prob=0,hidden_dropout_prob=0.25")
    assert enc.config.attention_probs_dropout_prob == 0 and enc.config.hidden_dropout_prob == 0.25
    assert DenseEncoder.from_pretrained(tiny_bert_dir).config.attention_probs_dropout_prob > 0  # guard: the fixture has dropout


def test_config_overrides_unknown_field_is_one_line(tiny_bert_dir):
    with pytest.raises(UserError, match=r"^--config_overrides: .*no_such_field") as err:
        DenseEncoder.from_pretrained(tiny_bert_dir, config_overrides="no_such_field=1")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("flags,split,attn_dropout", [([], True, 0.1),
                                                      (["--split_batch_by_length", "false",
                                                        "--config_overrides", "attention_probs_dropout_prob=0"], False, 0.0)])
def test_run_dense_flags_reach_the_encoder(tiny_bert_dir, tmp_path, flags, split, attn_dropout):
    from llm_embedder.training.run import build_trainer, parse_args

    argv = ["--model_name_or_path", str(tiny_bert_dir), "--output_dir", str(tmp_path / "o"),
            "--train_data", "llm-embedder:llm_embedder_toy/qa.json", "--use_cpu", *flags]
    encoder = build_trainer(*parse_args(argv)).model.encoder
    assert encoder.split_by_length is split
    assert encoder.config.attention_probs_dropout_prob == attn_dropout
