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


def units(records: Sequence[dict], sets: Sequence[Sequence[KeySet]], sep_ids, token_budget: int) -> list[list[int]]:
    """Consecutive record indices grouped so that pairs x longest input stays within the budget."""
    out, current, pairs, longest = [], [], 0, 0
    for i, (record, rsets) in enumerate(zip(records, sets)):
        lengths = [sum(map(len, lm_input(record, keys, sep_ids))) for keys in rsets]
        n, top = pairs + len(lengths), max([longest, *lengths])
        if current and n * top > token_budget:
            out.append(current)
            current, n, top = [], len(lengths), max(lengths)
        current.append(i)
        pairs, longest = n, top
    if current:
        out.append(current)
    return out


def fingerprint(records, sets, sep_ids, model_desc: dict, token_budget: int) -> str:
    h = hashlib.sha256(json.dumps([model_desc.get("path"), model_desc.get("dtype"), token_budget, list(sep_ids)]).encode())
    for record, rsets in zip(records, sets):
        h.update(json.dumps([record["key_ids"], record["context_ids"], record["query_ids"], record["answer_ids"],
                             [list(s) for s in rsets]]).encode())
    return h.hexdigest()


def _load_partial(path: Path, fp: str) -> dict[int, dict]:
    if not path.is_file():
        return {}
    done: dict[int, dict] = {}
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    try:
        head = json.loads(lines[0])
    except (json.JSONDecodeError, IndexError):
        return {}
    if head.get("fingerprint") != fp:
        raise UserError(f"{path}: partial scores of different inputs or arguments; delete it to start over")
    for line in lines[1:]:
        try:
            unit = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line torn by a kill
        for i, result in unit.items():
            done[int(i)] = result
    return done


def score_key_sets(records: Sequence[dict], sets: Sequence[Sequence[KeySet]], sep_ids, scorer, token_budget: int,
                   partial: Path | None = None, model_desc: dict | None = None, progress: bool = True) -> list[dict]:
    """For each record, ``{key set: per-token log-probs of the target}`` (key sets as tuples)."""
    plan = units(records, sets, sep_ids, token_budget)
    fp = fingerprint(records, sets, sep_ids, model_desc or {}, token_budget)
    done = _load_partial(partial, fp) if partial else {}
    results: list[dict | None] = [None] * len(records)
    for i, r in done.items():
        results[i] = {tuple(k): v for k, v in zip(r["sets"], r["logprobs"])}
    out = None
    if partial is not None:
        partial.parent.mkdir(parents=True, exist_ok=True)
        fresh = not partial.is_file() or not done
        out = open(partial, "w" if fresh else "a", encoding="utf-8")
        if fresh:
            out.write(json.dumps({"fingerprint": fp}) + "\n")
    from tqdm.auto import tqdm

    todo = [u for u in plan if any(results[i] is None for i in u)]
    bar = tqdm(total=sum(len(sets[i]) for u in todo for i in u), desc="lrlm pairs", unit="pair", disable=not progress)
    start, tokens = time.perf_counter(), 0
    try:
        for unit in todo:
            seqs, owners = [], []
            for i in unit:
                for keys in sets[i]:
                    seqs.append(lm_input(records[i], keys, sep_ids))
                    owners.append((i, keys))
            batch_logprobs = token_logprobs(scorer, seqs)
            line = {}
            for (i, keys), lp in zip(owners, batch_logprobs):
                results[i] = results[i] or {}
                results[i][keys] = lp
                entry = line.setdefault(str(i), {"sets": [], "logprobs": []})
                entry["sets"].append(list(keys))
                entry["logprobs"].append(lp)
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


def token_logprobs(scorer, seqs: Sequence[tuple[list[int], list[int]]]) -> list[list[float]]:
    """Per-token target log-probs of each sequence, rounded to 6 decimals (one forward pass)."""
    import torch

    from ..lm.scorer import collate

    batch = collate(seqs, scorer.pad_id)
    values = scorer.target_logprobs(batch).double().cpu()
    return [[round(v, 6) for v in chunk.tolist()] for chunk in torch.split(values, batch.sizes)]


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


__all__ = ["lm_input", "check_window", "units", "score_key_sets", "token_logprobs", "KeySet"]
