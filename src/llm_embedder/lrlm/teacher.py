"""``python -m llm_embedder.lrlm.teacher``: teacher scores of lrlm records, by token ids.

For every record: the LM's per-token log-probabilities of the target with no retrieved key and with each
candidate key alone. Writes ``{name}.scored.{save_name}.json``: the records with ``teacher_scores`` (mean
log-probability per target token, aligned with ``neg``, the keys), ``key_token_logprobs`` and
``none_token_logprobs``, plus a ``.meta.json`` (LM, pairs, tokens, wall time). Resumable (see
:mod:`llm_embedder.lrlm.score`).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ..errors import UserError, cli_guard
from ..resources import resolve_data_path
from ..schema import derived_path, meta_path, read_records, write_json, write_records
from .score import check_window, mean, score_key_sets
from ..argparsing import ArgParser


def read_lrlm(path) -> tuple[list[dict], dict]:
    """Records of an lrlm file (validated, ids present) and its builder meta."""
    path = resolve_data_path(path)
    if not path.is_file():
        raise UserError(f"--eval_data: {path}: file not found")
    records = read_records(path).records
    for i, r in enumerate(records):
        for name in ("key_ids", "context_ids", "query_ids", "answer_ids"):
            if name not in r:
                raise UserError(f"{path}:{i + 1}: {name}: missing (build the file with `llm-embedder convert lrlm`)")
    meta_file = meta_path(path)
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    if "separator_ids" not in meta:
        meta = _builder_meta(path, meta)
    return records, meta


def _builder_meta(path: Path, meta: dict) -> dict:
    """A scored file's meta points to its source data; follow it to the builder's meta."""
    source = meta.get("eval_data")
    if source and meta_path(source).is_file():
        return json.loads(meta_path(source).read_text())
    raise UserError(f"{meta_path(path)}: no separator_ids (not written by `llm-embedder convert lrlm`)")


def prepare_lm(name: str, records, sets, sep_ids, dtype: str = "float32", argument: str = "--model_name_or_path"):
    """Resolve the LM, check every input fits its window (one line if not), then load it."""
    from ..lm.loading import load_model, load_tokenizer, local_lm_dir, LoadedLM
    from ..convert.lrlm import lm_window

    folder, alias, source = local_lm_dir(name, argument)
    check_window(records, sets, sep_ids, lm_window(folder), argument)
    tokenizer = load_tokenizer(folder, argument)
    model = load_model(folder, dtype, argument)
    return LoadedLM(model, tokenizer, folder, alias, source, dtype)


def build_parser() -> argparse.ArgumentParser:
    p = ArgParser(prog="python -m llm_embedder.lrlm.teacher", description=__doc__.splitlines()[0])
    p.add_argument("--eval_data", required=True)
    p.add_argument("--model_name_or_path", default="smollm2")
    p.add_argument("--save_name", required=True)
    p.add_argument("--output_dir", default=None)
    p.add_argument("--token_budget", type=int, default=8192)
    p.add_argument("--max_queries", type=int, default=None)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    return p


@cli_guard
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    records, data_meta = read_lrlm(args.eval_data)
    records = records[:args.max_queries] if args.max_queries else records
    sep = data_meta["separator_ids"]
    sets = [[()] + [(k,) for k in range(len(r["key_ids"]))] for r in records]
    out = derived_path(args.eval_data, "scored", args.save_name, args.output_dir)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    lm = prepare_lm(args.model_name_or_path, records, sets, sep)
    from ..lm.scorer import LMScorer

    start = time.time()
    results = score_key_sets(records, sets, sep, LMScorer(lm.model), args.token_budget,
                             partial=out.with_name(out.name + ".partial.jsonl"), model_desc=lm.describe())
    scored = []
    for r, res in zip(records, results):
        keys = [res[(k,)] for k in range(len(r["key_ids"]))]
        scored.append({**r, "teacher_scores": [mean(lp) for lp in keys], "key_token_logprobs": keys,
                       "none_token_logprobs": res[()]})
    write_records(out, scored)
    pairs = sum(len(s) for s in sets)
    tokens = sum(len(r["context_ids"]) + len(r["query_ids"]) + len(r["answer_ids"]) for r in records) + \
        sum(sum(len(k) + len(sep) for k in r["key_ids"]) + len(r["key_ids"]) * (len(r["context_ids"]) + len(r["query_ids"]) + len(r["answer_ids"]))
            for r in records)
    write_json(meta_path(out), {"eval_data": str(resolve_data_path(args.eval_data)), "lm": lm.describe(),
                                "separator_ids": sep, "builder": data_meta.get("params"),
                                "score": "per-token log p(target | keys + sep + context + query), ids from the file",
                                "counts": {"records": len(records), "pairs": pairs, "tokens": tokens},
                                "token_budget": args.token_budget, "threads": torch.get_num_threads(),
                                "wall_s_this_run": round(time.time() - start, 1)})
    out.with_name(out.name + ".partial.jsonl").unlink(missing_ok=True)
    print(f"{len(records)} records, {pairs} pairs, {tokens} tokens -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
