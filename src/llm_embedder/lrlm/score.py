"""Score lrlm records by token ids: log p(target | keys + context + query) for sets of keys, per token.

The LM input is built from the ids stored in the record, exactly as they appear in the source file:
``key_1 + sep + ... + key_k + sep + context_ids + query_ids`` then ``answer_ids`` (no BOS, no re-tokenisation,
no added space). ``sep`` is the builder's separator ids (``\\n\\n``, recorded in the data's meta). The empty
key set is the no-retrieval baseline.

Per-token log-probabilities are kept (not only their mean) because the reliability measurement splits
every target into halves. Batches come from the project's scorer (:class:`llm_embedder.lm.scorer.LMScorer`:
right padding, selective LM head). Work is cut into units of whole targets packed to ``token_budget``; each
finished unit is appended to ``<output>.partial.jsonl`` (fsynced, fingerprinted), so a killed run resumes
and writes exactly what an uninterrupted run writes.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Sequence

from ..errors import UserError
from ..lm.loading import lm_files

KeySet = tuple[int, ...]


def lm_input(record: dict, keys: KeySet, sep_ids: Sequence[int]) -> tuple[list[int], list[int]]:
    """``(prompt ids, target ids)`` for one record and a set of its keys (indices into ``key_ids``)."""
    prompt: list[int] = []
    for k in keys:
        prompt += list(record["key_ids"][k]) + list(sep_ids)
    prompt += list(record["context_ids"]) + list(record["query_ids"])
    return prompt, list(record["answer_ids"])


def check_window(records: Sequence[dict], sets: Sequence[Sequence[KeySet]], sep_ids, window: int | None, where: str) -> None:
    """One clear line when an LM input would exceed the LM's positions (before the model loads)."""
    if window is None:
        return
    for i, (record, rsets) in enumerate(zip(records, sets)):
        for keys in rsets:
            p, t = lm_input(record, keys, sep_ids)
            if len(p) + len(t) > window:
                raise UserError(f"{where}: record {i} ({record.get('query_id')}) with {len(keys)} keys needs "
                                f"{len(p) + len(t)} tokens, beyond the LM's {window} positions")


Sequence_ = tuple[list[int], list[int]]  # (prompt ids, target ids)


def units(items: Sequence[Sequence[Sequence_]], token_budget: int) -> list[list[int]]:
    """Consecutive item indices grouped so that sequences x longest sequence stays within the budget."""
    out, current, pairs, longest = [], [], 0, 0
    for i, seqs in enumerate(items):
        lengths = [len(p) + len(t) for p, t in seqs]
        n, top = pairs + len(lengths), max([longest, *lengths])
        if current and n * top > token_budget:
            out.append(current)
            current, n, top = [], len(lengths), max(lengths)
        current.append(i)
        pairs, longest = n, top
    if current:
        out.append(current)
    return out


def fingerprint(model_desc: dict, token_budget: int) -> str:
    """The identity of the scoring set-up (the model's files, not where they are; dtype; batching); a partial
    file of another is refused."""
    path = model_desc.get("path")
    model = lm_files(path) if path and Path(path).is_dir() else path  # else an alias's name
    return hashlib.sha256(json.dumps([model, model_desc.get("dtype"), token_budget], sort_keys=True).encode()).hexdigest()


def item_digest(seqs: Sequence[Sequence_]) -> str:
    """The identity of one item's work: every sequence's ids."""
    return hashlib.sha256(json.dumps([[list(p), list(t)] for p, t in seqs]).encode()).hexdigest()[:32]


def _load_partial(path: Path, fp: str) -> dict[str, list] | None:
    """Item digest -> log-probs from a partial file (None when there is none yet)."""
    if not path.is_file():
        return None
    done: dict[str, list] = {}
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    try:
        head = json.loads(lines[0])
    except (json.JSONDecodeError, IndexError):
        return None
    if head.get("fingerprint") != fp:
        raise UserError(f"{path}: partial scores of another model or --token_budget; delete it to start over")
    for line in lines[1:]:
        try:
            done.update(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line torn by a kill
    return done


def score_items(items: Sequence[Sequence[Sequence_]], scorer, token_budget: int, partial: Path | None = None,
                model_desc: dict | None = None, progress: bool = True, desc: str = "LM sequences",
                known: dict | None = None) -> list[list[list[float]]]:
    """Per item (a target), per sequence: the per-token log-probs of its target ids.

    Items are the unit of work: packed into forward passes of at most ``token_budget`` padded tokens, each
    finished unit appended to ``partial`` (fsynced, keyed by each item's digest) so a killed run resumes and
    returns exactly what an uninterrupted run returns, and a run over more items (a larger ``--max_queries``)
    reuses the items already scored. ``known`` maps ``(prompt ids, target ids)`` tuples to log-probs already
    scored in this process (e.g. by another retriever that picked the same keys); items whose sequences are
    all known are not scored again, and newly scored sequences are added to it.
    """
    fp = fingerprint(model_desc or {}, token_budget)
    loaded = _load_partial(partial, fp) if partial else None
    digests = [item_digest(seqs) for seqs in items]
    results: list[list | None] = [(loaded or {}).get(d) for d in digests]
    memo = known if known is not None else {}
    keys = [[(tuple(p), tuple(t)) for p, t in seqs] for seqs in items]
    for i in range(len(items)):  # only what was known before this call, so a resumed run batches as a fresh one
        if results[i] is None and all(k in memo for k in keys[i]):
            results[i] = [memo[k] for k in keys[i]]
    for i, values in enumerate(results):
        if values is not None:
            memo.update(zip(keys[i], values))
    out = None
    if partial is not None:
        partial.parent.mkdir(parents=True, exist_ok=True)
        out = open(partial, "w" if loaded is None else "a", encoding="utf-8")
        if loaded is None:
            out.write(json.dumps({"fingerprint": fp}) + "\n")
    from tqdm.auto import tqdm

    todo = [u for u in units(items, token_budget) if any(results[i] is None for i in u)]
    bar = tqdm(total=sum(len(items[i]) for u in todo for i in u if results[i] is None), desc=desc, unit="seq",
               disable=not progress)
    start, tokens = time.perf_counter(), 0
    try:
        for unit in todo:
            unit = [i for i in unit if results[i] is None]
            seqs = [s for i in unit for s in items[i]]
            batch_logprobs = token_logprobs(scorer, seqs)
            line, at = {}, 0
            for i in unit:
                results[i] = batch_logprobs[at:at + len(items[i])]
                at += len(items[i])
                line[digests[i]] = results[i]
                memo.update(zip(keys[i], results[i]))
            if out is not None:
                out.write(json.dumps(line) + "\n")
                out.flush()
                os.fsync(out.fileno())
            tokens += sum(len(p) + len(t) for p, t in seqs)
            bar.update(len(seqs))
            bar.set_postfix(tokens_per_s=f"{tokens / max(time.perf_counter() - start, 1e-9):.0f}", refresh=False)
    finally:
        bar.close()
        if out is not None:
            out.close()
    return results  # type: ignore[return-value]


def score_key_sets(records: Sequence[dict], sets: Sequence[Sequence[KeySet]], sep_ids, scorer, token_budget: int,
                   partial: Path | None = None, model_desc: dict | None = None, progress: bool = True) -> list[dict]:
    """For each lrlm record, ``{key set: per-token log-probs of the target}`` (key sets as tuples)."""
    items = [[lm_input(r, keys, sep_ids) for keys in rsets] for r, rsets in zip(records, sets)]
    scored = score_items(items, scorer, token_budget, partial, model_desc, progress, desc="lrlm pairs")
    return [{tuple(keys): lp for keys, lp in zip(rsets, values)} for rsets, values in zip(sets, scored)]


def token_logprobs(scorer, seqs: Sequence[tuple[list[int], list[int]]]) -> list[list[float]]:
    """Per-token target log-probs of each sequence, rounded to 6 decimals (one forward pass)."""
    import torch

    from ..lm.scorer import collate

    batch = collate(seqs, scorer.pad_id)
    values = scorer.target_logprobs(batch).double().cpu()
    return [[round(v, 6) for v in chunk.tolist()] for chunk in torch.split(values, batch.sizes)]


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


__all__ = ["lm_input", "check_window", "units", "score_items", "score_key_sets", "token_logprobs", "KeySet"]
