"""``llm-embedder convert lrlm SOURCE_DIR --output_dir DIR``: long-range LM records from Python files.

Writes ``train.json``, ``valid.json`` and ``test.json`` (split by file) with a ``.meta.json`` each that
holds the builder's parameters, the tokenizer, the file lists and counts. See :mod:`llm_embedder.lrlm.build`
and docs/lrlm-study.md.
"""
from __future__ import annotations

import argparse
import json

from ..errors import UserError, cli_guard
from ..lrlm.build import SPLITS, BuildParams, build, describe, python_files
from ..resources import resolve_data_path
from ..schema import meta_path, validate_records, write_json, write_records, RecordFile
from ..argparsing import ArgParser

SEPARATOR = "\n\n"  # between a retrieved key and the context when scoring (tokenised once, recorded in the meta)


def build_parser() -> argparse.ArgumentParser:
    p = ArgParser(prog="llm-embedder convert lrlm", description=__doc__.splitlines()[0])
    p.add_argument("source", metavar="SOURCE_DIR", help="folder of .py files (a path or llm-embedder:python_stdlib/files)")
    p.add_argument("--output_dir", required=True)
    p.add_argument("--tokenizer", default="smollm2", help="the scoring LM (alias or local folder) whose tokenizer cuts the chunks")
    d = BuildParams()
    p.add_argument("--chunk_tokens", type=int, default=d.chunk_tokens)
    p.add_argument("--context_chunks", type=int, default=d.context_chunks, help="query chunk + earlier context chunks")
    p.add_argument("--candidate_unit", choices=("chunk", "block"), default=d.candidate_unit)
    p.add_argument("--targets", choices=("any", "defref"), default=d.targets)
    p.add_argument("--n_candidates", type=int, default=d.n_candidates)
    p.add_argument("--min_candidates", type=int, default=d.min_candidates)
    p.add_argument("--key_max_tokens", type=int, default=d.key_max_tokens)
    p.add_argument("--test_files", type=int, default=d.test_files)
    p.add_argument("--valid_files", type=int, default=d.valid_files)
    for split in SPLITS:
        p.add_argument(f"--max_{split}_targets", type=int, default=d.max_targets[split])
    p.add_argument("--max_k", type=int, default=4, help="most keys an LM input will hold (checked against the LM window)")
    p.add_argument("--seed", type=int, default=d.seed)
    return p


def lm_window(folder) -> int | None:
    config = folder / "config.json"
    if not config.is_file():
        return None
    cfg = json.loads(config.read_text())
    return cfg.get("max_position_embeddings")


@cli_guard
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    params = BuildParams(args.chunk_tokens, args.context_chunks, args.candidate_unit, args.targets, args.n_candidates,
                         args.min_candidates, args.key_max_tokens if args.candidate_unit == "block" else args.chunk_tokens,
                         args.test_files, args.valid_files, {s: getattr(args, f"max_{s}_targets") for s in SPLITS}, args.seed)
    params.check()
    root = resolve_data_path(args.source)
    files = python_files(root)
    from ..lm.loading import load_tokenizer, local_lm_dir

    folder, alias, source = local_lm_dir(args.tokenizer, "--tokenizer")
    window = lm_window(folder)
    need = params.lm_tokens(args.max_k)
    if window is not None and need > window:
        raise UserError(f"--chunk_tokens {params.chunk_tokens}: an LM input of {args.max_k} keys + context + query + target "
                        f"needs {need} tokens, beyond the LM's {window} positions")
    tokenizer = load_tokenizer(folder, "--tokenizer")
    sep_ids = tokenizer(SEPARATOR, add_special_tokens=False)["input_ids"]
    splits = build(files, root, tokenizer, params)
    out_dir = resolve_data_path(args.output_dir)
    for split in SPLITS:
        if not splits[split]:
            raise UserError(f"{split} split: no {params.targets} targets in its files with --chunk_tokens {params.chunk_tokens}, "
                            f"--context_chunks {params.context_chunks}, --candidate_unit {params.candidate_unit}, "
                            f"--min_candidates {params.min_candidates} (longer files, or other settings); nothing written")
        rf = RecordFile(path=out_dir / f"{split}.json", records=splits[split], lines=list(range(1, len(splits[split]) + 1)))
        problems = validate_records(rf)
        if problems:
            raise UserError(problems[0])
    for split in SPLITS:
        records = splits[split]
        out = write_records(out_dir / f"{split}.json", records)
        meta = {"format": "lrlm", "source": str(root), "files": sorted({r["source"] for r in records}),
                "params": describe(params), "tokenizer": {"name": args.tokenizer, "alias": alias, "path": str(folder), "source": source},
                "separator": SEPARATOR, "separator_ids": sep_ids, "lm_window": window,
                "counts": {"records": len(records), "keys": sum(len(r["key_ids"]) for r in records),
                           "with_privileged_key": sum(r["privileged_key"] is not None for r in records)}}
        write_json(meta_path(out), meta)
        print(f"{split}: {len(records)} targets from {len(meta['files'])} files, {meta['counts']['keys']} keys -> {out}")
    return 0
