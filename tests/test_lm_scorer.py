"""Batched scoring (llm_embedder.lm.scorer) against an independent one-sequence-at-a-time computation."""
from __future__ import annotations

import math
import random

import pytest
import torch

from llm_embedder.lm.scorer import LMScorer, collate, pack_batches
from test_lm_fixtures import one_torch_thread, reference_score, tiny_lm, tiny_lm_dir  # noqa: F401  (fixtures)


def random_sequences(n: int, seed: int = 0, vocab: int = 49152) -> list[tuple[list[int], list[int]]]:
    rng = random.Random(seed)
    return [([rng.randrange(vocab) for _ in range(rng.randint(1, 40))],
             [rng.randrange(vocab) for _ in range(rng.randint(1, 12))]) for _ in range(n)]


def test_pack_batches_respects_budget_and_covers_every_index_once():
    lengths = [5, 17, 3, 17, 9, 30, 1, 12, 12, 8]
    batches = pack_batches(lengths, token_budget=40)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(lengths)))
    assert [lengths[i] for i in flat] == sorted(lengths, reverse=True)  # longest first
    assert flat[1:3] == [1, 3]  # equal lengths keep input order
    for b in batches:
        assert len(b) * max(lengths[i] for i in b) <= 40
    # greedy and tight: the next sequence would not have fitted into the previous batch
    for prev, nxt in zip(batches, batches[1:]):
        assert (len(prev) + 1) * lengths[prev[0]] > 40
    assert pack_batches([50, 4], token_budget=40) == [[0], [1]]  # too long for the budget: alone


def test_collate_right_pads_and_indexes_exactly_the_target_tokens():
    batch = collate([([11, 12, 13], [14, 15]), ([21], [22])], pad_id=0)
    assert batch.input_ids.tolist() == [[11, 12, 13, 14, 15], [21, 22, 0, 0, 0]]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]
    assert batch.position_ids.tolist() == [[0, 1, 2, 3, 4]] * 2
    assert batch.rows.tolist() == [0, 0, 1]
    assert batch.predictor_positions.tolist() == [2, 3, 0]  # the position before each target token
    assert batch.labels.tolist() == [14, 15, 22]
    assert batch.sizes == [2, 1]
    with pytest.raises(ValueError):
        collate([([], [5])], pad_id=0)


def test_batched_scores_equal_unbatched_reference(tiny_lm):
    sequences = random_sequences(12)
    scorer = LMScorer(tiny_lm.model)
    assert scorer.selective_head  # a Llama's logits are exactly lm_head(hidden)
    batched = scorer.score(sequences, token_budget=200)
    for seq, got in zip(sequences, batched):
        assert got == pytest.approx(reference_score(tiny_lm.model, *seq), abs=1e-4)
    assert max(batched) - min(batched) > 0.1  # the check above is not vacuous


def test_scores_do_not_depend_on_batch_composition_or_head_path(tiny_lm):
    sequences = random_sequences(12, seed=1)
    one_batch = LMScorer(tiny_lm.model).score(sequences, token_budget=10_000)
    singles = LMScorer(tiny_lm.model).score(sequences, token_budget=1)
    full_head = LMScorer(tiny_lm.model, selective_head=False).score(sequences, token_budget=300)
    assert one_batch == pytest.approx(singles, abs=1e-5)
    assert one_batch == pytest.approx(full_head, abs=1e-5)


def test_score_subset_of_batches_and_callbacks(tiny_lm):
    sequences = random_sequences(9, seed=2)
    batches = pack_batches([len(p) + len(t) for p, t in sequences], 120)
    seen = []
    scores = LMScorer(tiny_lm.model).score(sequences, 120, batches=batches[1::2],
                                           on_batch=lambda idx, vals: seen.extend(zip(idx, vals)))
    chosen = {i for b in batches[1::2] for i in b}
    assert {i for i, s in enumerate(scores) if s is not None} == chosen
    assert dict(seen) == {i: scores[i] for i in chosen}


def test_hand_computed_logprob_on_a_two_token_vocabulary():
    """A model whose logits are fixed per position: log p is known in closed form."""

    class FixedLM(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.config = type("C", (), {"vocab_size": 2})()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def get_output_embeddings(self):
            return None

        def forward(self, input_ids, attention_mask=None, position_ids=None, use_cache=False):
            # logits [0, 1] everywhere: p(token 1) = e/(1+e), p(token 0) = 1/(1+e)
            logits = torch.tensor([0.0, 1.0]).expand(*input_ids.shape, 2).clone()
            return type("O", (), {"logits": logits})()

    scorer = LMScorer(FixedLM())
    assert not scorer.selective_head
    (got,) = scorer.score([([0, 0], [1, 0, 1])], token_budget=10)
    p1 = math.log(math.e / (1 + math.e))
    p0 = math.log(1 / (1 + math.e))
    assert got == pytest.approx((2 * p1 + p0) / 3, abs=1e-6)
