"""Long-range LM records from Python source files, as spans of the scoring LM's token ids.

Every file is tokenised once with the scoring LM's tokenizer (no special tokens) and cut into chunks of
``chunk_tokens`` ids. For a target chunk ``t``: the query is chunk ``t-1``, the context is the
``context_chunks - 1`` chunks before it, and the candidate keys are earlier parts of the same file that end
before the context starts: fixed chunks, or whole ``def``/``class`` blocks from the file's syntax tree (cut
to ``key_max_tokens``). Records carry the exact ids (``query_ids``, ``context_ids``, ``key_ids``,
``answer_ids``) so that scoring never re-tokenises text, plus the decoded texts for the encoder.

Target selection: ``any`` (every chunk with enough history) or ``defref`` (the target uses a name defined
by a ``def``/``class`` that starts before the context; the candidate holding that definition is always in
the pool and is named by ``privileged_key``). When a target has more candidates than ``n_candidates``, the
pool keeps the privileged key, the BM25 top half (bm25s, query = the query chunk) and a seeded random rest,
in file order. Everything is a pure function of the files and the parameters (files are split by a seeded
shuffle of their sorted names), so two runs write identical records.
"""
from __future__ import annotations

import ast
import bisect
import hashlib
import random
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

from ..errors import UserError

SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class BuildParams:
    chunk_tokens: int = 64
    context_chunks: int = 2  # the query chunk plus context_chunks - 1 earlier chunks
    candidate_unit: str = "chunk"  # chunk | block
    targets: str = "defref"  # any | defref
    n_candidates: int = 8
    min_candidates: int = 4
    key_max_tokens: int = 64  # block unit: a block is cut to this many tokens (chunk unit: = chunk_tokens)
    test_files: int = 10
    valid_files: int = 4
    max_targets: dict = field(default_factory=lambda: {"train": 100, "valid": 24, "test": 60})
    seed: int = 0

    def check(self) -> None:
        if self.chunk_tokens < 2:
            raise UserError(f"--chunk_tokens must be at least 2, got {self.chunk_tokens}")
        if self.context_chunks < 1:
            raise UserError(f"--context_chunks must be at least 1 (the query chunk), got {self.context_chunks}")
        if self.candidate_unit not in ("chunk", "block"):
            raise UserError(f"--candidate_unit must be chunk or block, got {self.candidate_unit!r}")
        if self.targets not in ("any", "defref"):
            raise UserError(f"--targets must be any or defref, got {self.targets!r}")
        if not 1 <= self.min_candidates <= self.n_candidates:
            raise UserError(f"--min_candidates ({self.min_candidates}) must be in 1..--n_candidates ({self.n_candidates})")

    def lm_tokens(self, k: int = 1, sep_tokens: int = 1) -> int:
        """Tokens of the longest LM input: k keys (+ separators), the context, the query and the target."""
        key = self.chunk_tokens if self.candidate_unit == "chunk" else self.key_max_tokens
        return k * (key + sep_tokens) + (self.context_chunks + 1) * self.chunk_tokens


@dataclass
class SourceFile:
    name: str
    ids: list[int]
    starts: list[int]  # character offset where each token starts
    defs: list[tuple[str, int, int]]  # (name, first token of the def/class line, end token) of every block


def python_files(folder: Path) -> list[Path]:
    """The ``.py`` files under ``folder`` (recursive), sorted; a clear error when there are none."""
    if not folder.is_dir():
        raise UserError(f"--source: {folder} is not a folder")
    files = sorted(p for p in folder.rglob("*.py") if p.is_file())
    if not files:
        raise UserError(f"--source: {folder} holds no .py files")
    return files


def _token_of(starts: list[int], char: int) -> int:
    """Index of the first token that starts at or after ``char``."""
    return bisect.bisect_left(starts, char)


def read_source(path: Path, name: str, tokenizer) -> SourceFile:
    text = path.read_text(encoding="utf-8")
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, starts = list(enc["input_ids"]), [s for s, _ in enc["offset_mapping"]]
    line_starts = [0]
    for line in text.split("\n"):
        line_starts.append(line_starts[-1] + len(line) + 1)
    defs = []
    try:
        tree = ast.parse(text)
    except SyntaxError:
        tree = None
    if tree is not None:
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                start = _token_of(starts, line_starts[node.lineno - 1])
                end = _token_of(starts, line_starts[min(node.end_lineno, len(line_starts) - 1)])
                defs.append((node.name, start, max(end, start + 1)))
    defs.sort(key=lambda d: (d[1], d[2], d[0]))
    return SourceFile(name, ids, starts, defs)


def split_files(names: Sequence[str], params: BuildParams) -> dict[str, list[str]]:
    """Seeded shuffle of the sorted names: the first ``test_files`` are test, the next ``valid_files`` valid."""
    order = sorted(names)
    random.Random(params.seed).shuffle(order)
    n_test, n_valid = params.test_files, params.valid_files
    if n_test + n_valid >= len(order):
        raise UserError(f"--test_files {n_test} + --valid_files {n_valid} leave no train files of {len(order)}")
    return {"test": sorted(order[:n_test]), "valid": sorted(order[n_test:n_test + n_valid]),
            "train": sorted(order[n_test + n_valid:])}


def _candidates(src: SourceFile, region_end: int, params: BuildParams) -> list[tuple[int, int]]:
    """Token spans of the candidate keys that end at or before ``region_end``, in file order."""
    if params.candidate_unit == "chunk":
        L = params.chunk_tokens
        return [(c * L, (c + 1) * L) for c in range(region_end // L)]
    spans = sorted({(s, min(e, s + params.key_max_tokens)) for _, s, e in src.defs if e <= region_end})
    return spans


def _uses(name: str, text: str) -> bool:
    return re.search(rf"(?<![\w.]){re.escape(name)}\b", text) is not None


def _privileged(src: SourceFile, cands: list[tuple[int, int]], region_end: int, target_text: str) -> tuple[int, str] | None:
    """(candidate index, name) of the definition a defref target uses, or None."""
    best = None
    for name, start, _ in src.defs:
        if start >= region_end or name.startswith("__") or len(name) < 3 or not _uses(name, target_text):
            continue
        holder = next((i for i, (s, e) in enumerate(cands) if s <= start < e), None)
        if holder is None:
            continue
        pos = re.search(rf"(?<![\w.]){re.escape(name)}\b", target_text).start()
        if best is None or (pos, start) < best[0]:
            best = ((pos, start), holder, name)
    return None if best is None else (best[1], best[2])


def _seed(*parts) -> int:
    return int.from_bytes(hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()[:8], "little")


def _pool(cand_texts: list[str], query_text: str, keep: int | None, params: BuildParams, rng: random.Random) -> list[int]:
    """Indices of the candidates kept: the privileged one, the BM25 top half, then random ones; file order."""
    n = len(cand_texts)
    if n <= params.n_candidates:
        return list(range(n))
    chosen = [] if keep is None else [keep]
    from .lexical import bm25_rank

    for i in bm25_rank(query_text, cand_texts):
        if len(chosen) >= max(params.n_candidates // 2, len(chosen)):
            break
        if i not in chosen:
            chosen.append(i)
    rest = [i for i in range(n) if i not in chosen]
    rng.shuffle(rest)
    chosen += rest[:params.n_candidates - len(chosen)]
    return sorted(chosen)


def targets_of(src: SourceFile, params: BuildParams, decode) -> list[dict]:
    """Every eligible target record of one file (before the per-split sampling)."""
    L, C = params.chunk_tokens, params.context_chunks
    n_chunks = len(src.ids) // L
    chunk_ids = lambda c: src.ids[c * L:(c + 1) * L]  # noqa: E731
    out = []
    for t in range(C, n_chunks):
        region_end = (t - C) * L
        cands = _candidates(src, region_end, params)
        if len(cands) < params.min_candidates:
            continue
        answer_ids = chunk_ids(t)
        answer_text = decode(answer_ids)
        priv = _privileged(src, cands, region_end, answer_text) if params.targets == "defref" else None
        if params.targets == "defref" and priv is None:
            continue
        query_ids = chunk_ids(t - 1)
        context_ids = src.ids[region_end:(t - 1) * L]
        cand_ids = [src.ids[s:e] for s, e in cands]
        cand_texts = [decode(ids) for ids in cand_ids]
        rng = random.Random(_seed(params.seed, src.name, t))
        keep = _pool(cand_texts, decode(query_ids), None if priv is None else priv[0], params, rng)
        record = {
            "query_id": f"{src.name}:{t}", "task": "lrlm", "query": decode(query_ids), "context": decode(context_ids),
            "pos": [], "neg": [cand_texts[i] for i in keep], "answers": [answer_text],
            "query_ids": query_ids, "context_ids": context_ids, "key_ids": [cand_ids[i] for i in keep],
            "answer_ids": answer_ids, "key_spans": [list(cands[i]) for i in keep], "source": src.name, "target_chunk": t,
            "privileged_key": None if priv is None else keep.index(priv[0]),
            "privileged_name": None if priv is None else priv[1],
        }
        out.append(record)
    return out


def build(files: Sequence[Path], root: Path, tokenizer, params: BuildParams) -> dict[str, list[dict]]:
    """Records per split (train / valid / test), deterministic for given files, tokenizer and parameters."""
    params.check()
    decode = lambda ids: tokenizer.decode(ids, clean_up_tokenization_spaces=False)  # noqa: E731
    names = {str(p.relative_to(root)): p for p in files}
    splits = split_files(list(names), params)
    out = {}
    for split in SPLITS:
        records = []
        for name in splits[split]:
            records += targets_of(read_source(names[name], name, tokenizer), params, decode)
        cap = params.max_targets.get(split)
        if cap is not None and len(records) > cap:
            rng = random.Random(_seed(params.seed, split, "targets"))
            picked = sorted(rng.sample(range(len(records)), cap))
            records = [records[i] for i in picked]
        out[split] = records
    return out


def describe(params: BuildParams) -> dict:
    return asdict(params)


__all__ = ["BuildParams", "SPLITS", "build", "python_files", "split_files", "read_source", "targets_of", "describe"]
