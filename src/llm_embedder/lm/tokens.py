"""Exact token ids for one scored sequence: ``prompt + target`` tokenised as one text, for any tokenizer.

Tokenising the prompt and the target separately and concatenating the ids is exact only for byte-level
BPE: a SentencePiece tokenizer (Llama, Mistral, T5) turns a separately tokenised " Paris" into a stray
``▁`` piece plus ``▁Paris`` and the LM would be scored on a token it never sees in running text. Here the
whole text is tokenised once and split by character offsets: the target tokens are those that start at
or after the first target character. A token that spans the boundary (``":▁"`` in ``"Answer: Paris"``)
stays in the prompt (the LM is scored on the target's own tokens, conditioned on the rest); when the
whole target is inside such a token, that one token is scored. Tokenizers without offsets (slow, Python
ones) fall back to the longest common prefix of the prompt's ids and the whole text's ids.

The special tokens the tokenizer puts before a text (Llama's BOS ``<s>``) are prepended to every prompt,
as the model saw them in training; nothing is appended (an EOS after the target is not part of it).

When ``prompt + target`` does not fit in ``max_length`` the prompt is shortened so the key stays
(:func:`fit_pair`): first the ``context`` loses text from its left end (lrlm: the oldest context goes
first), then the key loses text from its right end, and only if the query alone is still too long are
tokens cut from the left of the prompt. The target is always scored whole.
"""
from __future__ import annotations

from .templates import LMTemplate

MAX_FIT_ROUNDS = 8  # re-tokenising a shortened text can move the count by a token; a few rounds settle it


def special_prefix(tokenizer) -> list[int]:
    """The ids the tokenizer adds before any text (``[bos_token_id]`` for Llama-style, ``[]`` for GPT-2/SmolLM2)."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a")["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start:start + len(plain)] == plain:
            return list(full[:start])
    return []


def _split_by_offsets(ids: list[int], offsets: list[tuple[int, int]], boundary: int) -> tuple[list[int], list[int], bool]:
    """``(prompt ids, target ids, a token spans the boundary)`` from one text's ids and character offsets."""
    start = next((i for i, (s, e) in enumerate(offsets) if s >= boundary and e > s), len(ids))
    spans = any(s < boundary < e for s, e in offsets)
    if start == len(ids):  # the target lies entirely inside the last (boundary-spanning) token
        start = len(ids) - 1
    return list(ids[:start]), list(ids[start:]), spans


def split_pairs(tokenizer, prompts: list[str], targets: list[str]) -> list[tuple[list[int], list[int], bool]]:
    """``(prompt ids, target ids, spans)`` for each ``prompt + target`` (no special tokens; see module doc)."""
    if not prompts:
        return []
    texts = [p + t for p, t in zip(prompts, targets)]
    if tokenizer.is_fast:
        enc = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True, return_attention_mask=False,
                        verbose=False)
        return [_split_by_offsets(ids, offsets, len(p))
                for ids, offsets, p in zip(enc["input_ids"], enc["offset_mapping"], prompts)]
    whole = tokenizer(texts, add_special_tokens=False, return_attention_mask=False, verbose=False)["input_ids"]
    alone = tokenizer(prompts, add_special_tokens=False, return_attention_mask=False, verbose=False)["input_ids"]
    out = []
    for ids, prompt_ids in zip(whole, alone):
        n = 0
        while n < min(len(ids) - 1, len(prompt_ids)) and ids[n] == prompt_ids[n]:
            n += 1
        out.append((list(ids[:n]), list(ids[n:]), n < len(prompt_ids)))
    return out


def _cut_text(tokenizer, text: str, n_tokens: int, from_left: bool) -> str:
    """``text`` without its first (``from_left``) or last ``n_tokens`` tokens, cut at a character offset."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=tokenizer.is_fast, verbose=False)
    ids = enc["input_ids"]
    if n_tokens >= len(ids):
        return ""
    if not tokenizer.is_fast:
        return tokenizer.decode(ids[n_tokens:] if from_left else ids[:len(ids) - n_tokens])
    offsets = enc["offset_mapping"]
    return text[offsets[n_tokens][0]:] if from_left else text[:offsets[len(ids) - n_tokens - 1][1]]


def fit_pair(tokenizer, template: LMTemplate, key: str, query: str, context: str, target: str,
             room: int) -> tuple[list[int], list[int], str | None]:
    """``(prompt ids, target ids, what was cut)`` with at most ``room`` ids in all, the key kept if possible.

    ``what was cut`` is None, ``"context"``, ``"key"`` or ``"left"`` (the prompt's left end: the query alone
    did not fit). ``room`` excludes the special prefix.
    """
    fields = {"context": context, "key": key}
    cut = None
    for name in ("context", "key"):
        for _ in range(MAX_FIT_ROUNDS):
            prompt = template.render_prompt(key=fields["key"], query=query, context=fields["context"])
            (prompt_ids, target_ids, _), = split_pairs(tokenizer, [prompt], [target])
            excess = len(prompt_ids) + len(target_ids) - room
            if excess <= 0:
                return prompt_ids, target_ids, cut
            if not fields[name]:
                break
            fields[name] = _cut_text(tokenizer, fields[name], excess, from_left=name == "context")
            cut = name
    keep = max(room - len(target_ids), 0)
    return (prompt_ids[-keep:] if keep else []), target_ids, "left"
