"""``llm-embedder search``: top-k of query embeddings over one or more key shards written by ``encode``.

Each ``.npy`` is read with the ``.json`` beside it (ids and row offset). Shards are searched one at a
time and merged into one global top ``--depth`` (exact by default), so the whole corpus never has to be
in memory at once. Output: ``qid<TAB>docid<TAB>score`` lines (``--format tsv``, Tevatron's) or a TREC
run file (``--format trec``), written atomically.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

from ..argparsing import ArgParser
from ..errors import UserError, cli_guard
from .dense import INDEX_TYPES, IndexParams, merge_topk, search


def build_parser() -> argparse.ArgumentParser:
    p = ArgParser(prog="llm-embedder search", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--query_emb", "--query_reps", required=True, help="query .npy written by `llm-embedder encode --side query`")
    p.add_argument("--key_emb", "--passage_reps", required=True, nargs="+",
                   help="one or more key .npy shards or glob patterns (a Tevatron .pkl name means its .npy)")
    p.add_argument("--depth", type=int, default=100, help="results per query")
    p.add_argument("--output", "--save_ranking_to", required=True, help="run file to write")
    p.add_argument("--format", choices=("tsv", "trec"), default="tsv")
    p.add_argument("--save_text", dest="format", action="store_const", const="tsv",
                   help="Tevatron: text ranking qid<TAB>docid<TAB>score (same as --format tsv)")
    p.add_argument("--faiss_index", choices=INDEX_TYPES, default="flat")
    p.add_argument("--query_chunk", "--batch_size", type=int, default=4096, help="queries searched at a time (-1: all)")
    p.add_argument("--tag", default="llm-embedder", help="run tag (TREC format)")
    return p


def expand_shards(patterns: list[str]) -> list[str]:
    """``--key_emb`` values as files: globs expanded (sorted), Tevatron's ``.pkl`` names mapped to our ``.npy``."""
    import glob

    paths = []
    for pattern in patterns:
        pattern = pattern[: -len(".pkl")] + ".npy" if pattern.endswith(".pkl") else pattern
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        if not matches:
            raise UserError(f"--key_emb: {pattern}: no file matches")
        paths.extend(matches)
    return paths


def load_embeddings(path: str | os.PathLike, argument: str) -> tuple[np.ndarray, dict]:
    """An ``encode`` output: the matrix and its ``.json`` metadata (ids, row_offset)."""
    path = Path(path)
    meta_path = path.with_suffix(".json")
    if not path.is_file():
        raise UserError(f"{argument}: {path}: file not found")
    if not meta_path.is_file():
        raise UserError(f"{argument}: {meta_path}: missing (the ids written by `llm-embedder encode` next to the .npy)")
    try:
        emb = np.load(path, allow_pickle=False)
    except ValueError as err:
        raise UserError(f"{argument}: {path}: not a plain numpy array ({err})") from None
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    if emb.ndim != 2 or len(meta.get("ids", [])) != len(emb):
        raise UserError(f"{argument}: {path}: {len(emb)} vectors but {len(meta.get('ids', []))} ids in {meta_path.name}")
    return emb, meta


def check_shards(metas: list[dict], paths: list[str]) -> None:
    """Shards must come from one encoding run and not overlap."""
    spans = sorted((m.get("row_offset", 0), m.get("row_offset", 0) + len(m["ids"]), p) for m, p in zip(metas, paths))
    for (lo1, hi1, p1), (lo2, _, p2) in zip(spans, spans[1:]):
        if lo2 < hi1:
            raise UserError(f"--key_emb: {p1} and {p2} overlap (rows {lo2}..{hi1 - 1})")
    models = {(m.get("model"), m.get("instruction"), json.dumps(m.get("settings"), sort_keys=True)) for m in metas}
    if len(models) > 1:
        raise UserError("--key_emb: the shards were encoded with different models, settings or instructions")


def write_run(path: Path, qids: list[str], ids: list[str], scores: np.ndarray, rows: np.ndarray, fmt: str, tag: str) -> None:
    from ..io import atomic_write

    def write(out):
        for qid, s_row, r_row in zip(qids, scores, rows):
            rank = 0
            for s, r in zip(s_row, r_row):
                if r < 0:
                    continue
                rank += 1
                if fmt == "tsv":
                    out.write(f"{qid}\t{ids[r]}\t{float(s)!r}\n")
                else:
                    out.write(f"{qid} Q0 {ids[r]} {rank} {float(s)!r} {tag}\n")

    atomic_write(path, write)


@cli_guard
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.key_emb = expand_shards(args.key_emb)
    if args.query_emb.endswith(".pkl"):
        args.query_emb = args.query_emb[: -len(".pkl")] + ".npy"
    if args.depth < 1:
        raise UserError(f"--depth: must be at least 1, got {args.depth}")
    if args.query_chunk == -1:  # Tevatron's --batch_size -1: all queries at once
        args.query_chunk = 1 << 31
    if args.query_chunk < 1:
        raise UserError(f"--query_chunk: must be at least 1, got {args.query_chunk}")
    if args.format == "trec" and (not args.tag or any(c.isspace() for c in args.tag)):
        raise UserError(f"--tag: {args.tag!r} must be one word")
    query_emb, query_meta = load_embeddings(args.query_emb, "--query_emb")
    shards = [load_embeddings(p, "--key_emb") for p in args.key_emb]  # every file checked before searching
    check_shards([m for _, m in shards], args.key_emb)
    for (emb, _), path in zip(shards, args.key_emb):
        if len(emb) and emb.shape[1] != query_emb.shape[1]:
            raise UserError(f"--key_emb: {path} has dimension {emb.shape[1]}, the queries {query_emb.shape[1]}")
    ids: list[str] = []
    parts = []
    from tqdm.auto import tqdm

    for emb, meta in tqdm(shards, desc="searching shards", unit="shard", disable=len(shards) < 2):
        if len(emb):
            s, r = search(query_emb, emb, args.depth, index=args.faiss_index, query_chunk=args.query_chunk,
                          params=IndexParams())
            parts.append((s, r, len(ids)))
        ids.extend(meta["ids"])
    if not parts:
        raise UserError("--key_emb: the shards hold no vectors")
    scores, rows = merge_topk(parts, args.depth)
    write_run(Path(args.output), [str(q) for q in query_meta["ids"]], ids, scores, rows, args.format, args.tag)
    print(f"wrote {args.output}: top {min(args.depth, len(ids))} of {len(ids)} keys for {len(query_emb)} queries")
    return 0
