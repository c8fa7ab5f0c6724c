"""Batched scoring: mean log p(target tokens | prompt) for many (prompt ids, target ids) sequences.

Sequences are sorted by length (longest first, so a memory problem shows at once) and packed into batches
whose padded size ``batch size x longest sequence`` stays within a token budget. Padding goes on the RIGHT:
every real token then sits at its natural position (position ids ``0..n-1``) and, under the causal mask,
never sees a pad; the attention mask marks the pads as well. One forward pass per batch under
``torch.inference_mode``.

Only the hidden states that predict target tokens go through the LM head, in chunks, so the vocabulary
projection is paid for the answer tokens alone and the full ``[batch, length, vocab]`` logits never exist.
A model whose forward does more than ``lm_head(hidden)`` (logit soft-capping, scaling) is detected by a
one-time check and scored with its full forward instead.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import torch

HEAD_CHUNK_ROWS = 1024  # target positions pushed through the LM head at once


def pack_batches(lengths: Sequence[int], token_budget: int) -> list[list[int]]:
    """Indices grouped longest-first so that ``len(batch) * max(length in batch) <= token_budget``.

    Ties keep input order, so the packing is a pure function of the lengths. A sequence longer than the
    budget gets a batch of its own.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        longest = lengths[current[0]] if current else lengths[i]
        if current and (len(current) + 1) * longest > token_budget:
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


@dataclass
class BatchInputs:
    """A right-padded batch and where its target tokens are."""

    input_ids: torch.Tensor  # [B, L]
    attention_mask: torch.Tensor  # [B, L]
    position_ids: torch.Tensor  # [B, L]
    rows: torch.Tensor  # [T] batch row of each target token
    predictor_positions: torch.Tensor  # [T] position whose output predicts that token (its position - 1)
    labels: torch.Tensor  # [T] the target token ids
    sizes: list[int]  # target tokens per sequence, in batch order


def collate(sequences: Sequence[tuple[Sequence[int], Sequence[int]]], pad_id: int) -> BatchInputs:
    """Right-pad ``(prompt_ids, target_ids)`` sequences and index their target tokens."""
    longest = max(len(p) + len(t) for p, t in sequences)
    input_ids = torch.full((len(sequences), longest), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), longest), dtype=torch.long)
    rows, positions, labels, sizes = [], [], [], []
    for b, (prompt, target) in enumerate(sequences):
        if not prompt or not target:
            raise ValueError("every sequence needs at least one prompt token and one target token")
        n = len(prompt) + len(target)
        input_ids[b, :n] = torch.tensor(list(prompt) + list(target), dtype=torch.long)
        attention_mask[b, :n] = 1
        rows.extend([b] * len(target))
        positions.extend(range(len(prompt) - 1, n - 1))
        labels.extend(target)
        sizes.append(len(target))
    position_ids = torch.arange(longest, dtype=torch.long).unsqueeze(0).expand(len(sequences), -1)
    return BatchInputs(input_ids, attention_mask, position_ids, torch.tensor(rows), torch.tensor(positions),
                       torch.tensor(labels), sizes)


def _uses_plain_head(model, device: torch.device) -> bool:
    """True when ``model(...).logits`` equals ``lm_head(body(...))``, so the head may be applied selectively."""
    head, body = model.get_output_embeddings(), getattr(model, "base_model", None)
    if head is None or body is None or body is model:
        return False
    ids = (torch.arange(3, 11, dtype=torch.long, device=device) % model.config.vocab_size).unsqueeze(0)
    with torch.inference_mode():
        full = model(input_ids=ids, use_cache=False).logits.float()
        hidden = body(input_ids=ids, use_cache=False).last_hidden_state
        partial = head(hidden).float()
    return full.shape == partial.shape and torch.allclose(full, partial, atol=1e-4, rtol=1e-4)


class LMScorer:
    """Scores ``(prompt_ids, target_ids)`` sequences with a causal LM: mean log-probability per target token."""

    def __init__(self, model, pad_id: int = 0, selective_head: bool | None = None):
        self.model = model
        self.pad_id = pad_id
        self.device = next(model.parameters()).device
        self.selective_head = _uses_plain_head(model, self.device) if selective_head is None else selective_head

    @torch.inference_mode()
    def target_logprobs(self, batch: BatchInputs) -> torch.Tensor:
        """log p of every target token in the batch, float32, in ``batch.labels`` order."""
        dev = self.device
        inputs = dict(input_ids=batch.input_ids.to(dev), attention_mask=batch.attention_mask.to(dev),
                      position_ids=batch.position_ids.to(dev), use_cache=False)
        rows, positions, labels = batch.rows.to(dev), batch.predictor_positions.to(dev), batch.labels.to(dev)
        if not self.selective_head:
            logits = self.model(**inputs).logits[rows, positions].float()
            return torch.log_softmax(logits, dim=-1).gather(1, labels[:, None]).squeeze(1)
        hidden = self.model.base_model(**inputs).last_hidden_state[rows, positions]
        head = self.model.get_output_embeddings()
        out = []
        for start in range(0, hidden.shape[0], HEAD_CHUNK_ROWS):
            logits = head(hidden[start:start + HEAD_CHUNK_ROWS]).float()
            chunk_labels = labels[start:start + HEAD_CHUNK_ROWS, None]
            out.append((logits.gather(1, chunk_labels) - torch.logsumexp(logits, dim=-1, keepdim=True)).squeeze(1))
        return torch.cat(out)

    def score_batch(self, sequences: Sequence[tuple[Sequence[int], Sequence[int]]]) -> list[float]:
        """Mean target log-probability of each sequence (float64 mean of float32 token log-probs)."""
        batch = collate(sequences, self.pad_id)
        token_logprobs = self.target_logprobs(batch).double().cpu()
        return [chunk.mean().item() for chunk in torch.split(token_logprobs, batch.sizes)]

    def score(self, sequences: Sequence[tuple[Sequence[int], Sequence[int]]], token_budget: int,
              batches: Iterable[list[int]] | None = None,
              on_batch: Callable[[list[int], list[float]], None] | None = None,
              progress=None) -> list[float | None]:
        """Scores in input order; ``batches`` (from :func:`pack_batches`) may be a subset, e.g. one rank's share.

        ``on_batch(indices, scores)`` runs after each batch (checkpointing); ``progress`` is a tqdm bar
        advanced by pairs, with scored tokens/s in its postfix.
        """
        if batches is None:
            batches = pack_batches([len(p) + len(t) for p, t in sequences], token_budget)
        scores: list[float | None] = [None] * len(sequences)
        start, tokens = time.perf_counter(), 0
        for indices in batches:
            values = self.score_batch([sequences[i] for i in indices])
            for i, v in zip(indices, values):
                scores[i] = v
            if on_batch is not None:
                on_batch(indices, values)
            if progress is not None:
                tokens += sum(len(sequences[i][0]) + len(sequences[i][1]) for i in indices)
                progress.update(len(indices))
                progress.set_postfix(tokens_per_s=f"{tokens / max(time.perf_counter() - start, 1e-9):.0f}", refresh=False)
        return scores
