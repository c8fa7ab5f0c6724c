"""Turn schema records into scoring pairs: one (row, key, answer) -> (prompt ids, target ids) each.

Everything a user can get wrong is checked here, for the whole file, before the model is loaded: a row
without keys, keys given as corpus rows without ``--corpus``, a row with no answers under an answer
template, a row without ``task`` under ``--template auto``, an answer too long for ``--max_length``.
Each problem names its ``file:line``.

Token bookkeeping is exact for any tokenizer (:mod:`llm_embedder.lm.tokens`): ``prompt + target`` is
tokenised as one text and split at the target's first character, and the tokenizer's BOS (if it adds
one) starts every prompt. A key longer than ``key_max_length`` tokens is cut at that token's character
offset; a prompt that does not fit in ``max_length`` together with its target loses the left end of its
context first, then the end of its key (counted in the stats and logged), so the key stays in the prompt
and the target is always scored whole.
"""
from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from ..corpus import Corpus
from ..errors import UserError
from ..schema import KEY_ALIGNED_FIELDS, RecordFile, raise_if_errors, uses_history, validate_records
from .templates import LMTemplate, get_template, template_for_task
from .tokens import fit_pair, special_prefix, split_pairs

logger = logging.getLogger(__name__)
# fit_pair's "what was cut" -> the stats name
CUT_NAMES = {"context": "context", "key": "key", "left": "from_left"}

AUTO = "auto"


@dataclass
class RowPlan:
    """What will be scored for one output row: its key texts, template and targets."""

    index: int  # row number in the input file (0-based)
    template: LMTemplate
    keys: list[str]
    targets: list[str]  # one per answer, or the query for query_likelihood
    query: str
    context: str
    key_fields: str  # "pos+neg" or "history"
    truncated_fields: dict[str, int] = field(default_factory=dict)  # field -> kept length, set by --max_keys


@dataclass
class Pair:
    """One scored sequence: ``prompt_ids + target_ids``; the score is the mean log p of ``target_ids``."""

    row: int  # position in ScoringPlan.rows
    key: int
    answer: int
    prompt_ids: list[int]
    target_ids: list[int]

    @property
    def length(self) -> int:
        return len(self.prompt_ids) + len(self.target_ids)


@dataclass
class ScoringPlan:
    """The rows to write (copies of the input, truncated by --max_keys) and the pairs that score them."""

    rows: list[dict]
    row_plans: list[RowPlan]
    pairs: list[Pair]
    stats: dict

    def fingerprint(self, extra: dict) -> str:
        """sha256 over every pair's token ids and ``extra`` (model, dtype, batching): the identity of the work."""
        digest = hashlib.sha256(json.dumps(extra, sort_keys=True, default=str).encode())
        for pair in self.pairs:
            digest.update(f"{pair.row},{pair.key},{pair.answer}:".encode())
            digest.update(",".join(map(str, pair.prompt_ids)).encode() + b"|")
            digest.update(",".join(map(str, pair.target_ids)).encode() + b";")
        return digest.hexdigest()


def _key_texts(record: dict, side: str, corpus: Corpus | None, where: str, problems: list[str]) -> list[str]:
    texts, rows = record.get(side), record.get(f"{side}_index")
    if texts:
        return list(texts)
    if not rows:
        return []
    if corpus is None:
        problems.append(f"{where}: {side}_index: keys are given as corpus rows but no --corpus was passed")
        return []
    return [corpus.texts[i] for i in rows]


def as_record_file(records: RecordFile | Sequence[dict], corpus: Corpus | None = None) -> RecordFile:
    """A :class:`RecordFile` as is; a list of records checked like a file (``<records>:N`` in messages)."""
    if isinstance(records, RecordFile):
        return records
    if isinstance(records, dict) or not all(isinstance(r, dict) for r in records):
        raise TypeError("records: expected a RecordFile or a list of dicts")
    rf = RecordFile(Path("<records>"), list(records))
    raise_if_errors(validate_records(rf, purpose="score", corpus_size=len(corpus) if corpus is not None else None))
    return rf


def plan_rows(rf: RecordFile | Sequence[dict], *, template: str = AUTO, corpus: Corpus | None = None,
              max_queries: int | None = None, max_keys: int | None = None,
              max_pos: int | None = None) -> tuple[list[dict], list[RowPlan]]:
    """Check every row and decide its keys, template and targets; raise one UserError listing all problems.

    ``max_pos`` keeps the first N positives of a row (the others leave the written row too), so that
    ``max_keys`` then spends the rest of its budget on negatives: ``max_pos=1, max_keys=4`` scores the first
    positive and three negatives even where a row has several positives."""
    rf = as_record_file(rf, corpus)
    records = rf.records[:max_queries] if max_queries else rf.records
    fixed = None if template == AUTO else get_template(template)
    problems: list[str] = []
    rows, plans = [], []
    for i, record in enumerate(records):
        where, n_problems = rf.where(i), len(problems)
        if fixed is not None:
            tmpl = fixed
        elif not record.get("task"):
            problems.append(f"{where}: task: missing; --template auto picks the template by each row's task: "
                            "write one into the rows (llm-embedder convert beir --task qa) or pass --template NAME")
            continue
        else:
            try:
                tmpl = template_for_task(record["task"])
            except UserError as err:
                problems.append(f"{where}: task: {err}")
                continue
        row = dict(record)
        if uses_history(record):
            key_fields, sides = "history", {"history": list(record["history"])}
        else:
            key_fields = "pos+neg"
            sides = {side: _key_texts(record, side, corpus, where, problems) for side in ("pos", "neg")}
        keys = [k for texts in sides.values() for k in texts]
        if len(problems) > n_problems:
            continue
        if not keys:
            problems.append(f"{where}: pos: no keys to score (give pos/neg, pos_index/neg_index or history)")
            continue
        truncated = {}
        if max_pos and key_fields == "pos+neg" and len(sides["pos"]) > max_pos:
            _cut_side(row, "pos", len(sides["pos"]), max_pos, truncated)
            sides["pos"] = sides["pos"][:max_pos]
            keys = [k for texts in sides.values() for k in texts]
        if max_keys and len(keys) > max_keys:
            budget = max_keys
            for side, texts in sides.items():
                keep = min(len(texts), budget)
                budget -= keep
                if keep < len(texts):
                    _cut_side(row, side, len(texts), keep, truncated)
            keys = keys[:max_keys]
        if tmpl.uses_answers:
            answers = record.get("answers")
            if not answers:
                problems.append(f"{where}: answers: missing or empty, but template '{tmpl.name}' scores p(answer | prompt) "
                                "(pass --template query_likelihood to score p(query | key) instead)")
                continue
            if any(not a.strip() for a in answers):
                problems.append(f"{where}: answers: contains an empty answer")
                continue
            targets = [tmpl.render_target(query=record["query"], answer=a) for a in answers]
        else:
            targets = [tmpl.render_target(query=record["query"])]
        rows.append(row)
        plans.append(RowPlan(i, tmpl, keys, targets, record["query"], record.get("context") or "", key_fields, truncated))
    raise_if_errors(problems)
    return rows, plans


def _cut_side(row: dict, side: str, n_keys: int, keep: int, truncated: dict[str, int]) -> None:
    """Keep the first ``keep`` entries of every field aligned with the ``side`` keys of ``row`` (in place)."""
    for name in KEY_ALIGNED_FIELDS[side]:
        if isinstance(row.get(name), list) and len(row[name]) == n_keys:
            row[name] = row[name][:keep]
            truncated[name] = keep


def _encode(tokenizer, texts: list[str], offsets: bool = False):
    return tokenizer(texts, add_special_tokens=False, return_offsets_mapping=offsets,
                     return_attention_mask=False, verbose=False)


def truncate_keys(tokenizer, keys: list[str], key_max_length: int) -> tuple[dict[str, str], int]:
    """Map each distinct key text to itself cut after ``key_max_length`` tokens; also count the cut ones."""
    unique = list(dict.fromkeys(keys))
    if not unique:
        return {}, 0
    encoded = _encode(tokenizer, unique, offsets=tokenizer.is_fast)
    out, cut = {}, 0
    for n, text in enumerate(unique):
        ids = encoded["input_ids"][n]
        if len(ids) <= key_max_length:
            out[text] = text
            continue
        cut += 1
        if tokenizer.is_fast:
            out[text] = text[: encoded["offset_mapping"][n][key_max_length - 1][1]]
        else:
            out[text] = tokenizer.decode(ids[:key_max_length])
    return out, cut


def build_plan(rf: RecordFile | Sequence[dict], tokenizer, *, template: str = AUTO, corpus: Corpus | None = None,
               max_length: int = 1024, key_max_length: int = 256, max_queries: int | None = None,
               max_keys: int | None = None, max_pos: int | None = None) -> ScoringPlan:
    """Rows and tokenised pairs for a record file (or a list of records); all input errors are raised before
    any scoring."""
    rf = as_record_file(rf, corpus)
    rows, plans = plan_rows(rf, template=template, corpus=corpus, max_queries=max_queries, max_keys=max_keys,
                            max_pos=max_pos)
    cut_keys, n_cut_keys = truncate_keys(tokenizer, [k for p in plans for k in p.keys], key_max_length)

    prefix = special_prefix(tokenizer)  # BOS for Llama-style tokenizers, nothing for GPT-2 style ones
    room = max_length - len(prefix)
    jobs = [(r, k, a) for r, p in enumerate(plans) for k in range(len(p.keys)) for a in range(len(p.targets))]
    prompts = [plans[r].template.render_prompt(key=cut_keys[plans[r].keys[k]], query=plans[r].query,
                                               context=plans[r].context) for r, k, _ in jobs]
    split = split_pairs(tokenizer, prompts, [plans[r].targets[a] for r, _, a in jobs])

    pairs, problems, cuts, too_long = [], [], Counter(), set()
    for (r, k, a), (prompt_ids, target_ids, spans) in zip(jobs, split):
        plan = plans[r]
        if len(target_ids) > room - 1:
            if (r, a) not in too_long:
                too_long.add((r, a))
                problems.append(f"{rf.where(plan.index)}: answers: answer {a} has {len(target_ids)} tokens; "
                                f"--max_length {max_length} leaves room for at most {room - 1}")
            continue
        cuts["target_starts_inside_a_prompt_token"] += spans
        if len(prompt_ids) + len(target_ids) > room:
            prompt_ids, target_ids, cut = fit_pair(tokenizer, plan.template, cut_keys[plan.keys[k]], plan.query,
                                                   plan.context, plan.targets[a], room)
            cuts[f"prompts_cut_{CUT_NAMES[cut]}"] += 1
        pairs.append(Pair(r, k, a, prefix + prompt_ids, target_ids))
    raise_if_errors(problems)
    if cuts["prompts_cut_context"] or cuts["prompts_cut_key"] or cuts["prompts_cut_from_left"]:
        logger.warning("%d of %d prompts did not fit in --max_length %d with their target: %d lost the left end of "
                       "their context, %d the end of their key (context already empty), %d their left end (the query "
                       "alone was too long)", sum(cuts[f"prompts_cut_{n}"] for n in CUT_NAMES.values()), len(pairs),
                       max_length, cuts["prompts_cut_context"], cuts["prompts_cut_key"], cuts["prompts_cut_from_left"])
    stats = {"rows_in_file": len(rf.records), "rows": len(rows), "keys": sum(len(p.keys) for p in plans),
             "pairs": len(pairs), "target_tokens": sum(len(p.target_ids) for p in pairs),
             "total_tokens": sum(p.length for p in pairs), "distinct_keys_cut_to_key_max_length": n_cut_keys,
             "special_prefix_ids": prefix, **{f"prompts_cut_{n}": cuts[f"prompts_cut_{n}"] for n in CUT_NAMES.values()},
             "target_starts_inside_a_prompt_token": cuts["target_starts_inside_a_prompt_token"],
             "rows_with_keys_cut_by_max_keys": sum(bool(p.truncated_fields) for p in plans)}
    return ScoringPlan(rows, plans, pairs, stats)
