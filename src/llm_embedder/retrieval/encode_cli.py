"""``llm-embedder encode``: embed a corpus (keys) or schema records (queries) into ``.npy`` + ``.json``.

Writes ``OUTPUT.npy`` (float32 ``[rows, dim]``) and ``OUTPUT.json`` (ids, row offset, model, side,
instruction); with ``--num_shards N --shard_index I`` (or under torchrun, one shard per rank) the names
get ``.shardIofN`` and only that contiguous shard of rows is encoded. Chunks are cached under
``--cache_dir``, so a killed run resumes. Pooling, max lengths and instructions come from the saved model
unless given. ``llm-embedder search`` merges the shard files.
"""
from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from ..argparsing import ArgParser, BoolFlag
from ..errors import UserError, cli_guard
from ..modeling.backends import add_backend_argument, check_backend, with_backend
from ..resources import cache_dir as default_cache_dir
from ..schema import write_json

logger = logging.getLogger("llm_embedder.encode")


def build_parser() -> argparse.ArgumentParser:
    p = ArgParser(prog="llm-embedder encode", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", "--query_encoder", "--model_name_or_path", dest="model", default="minilm", help="encoder folder or alias")
    p.add_argument("--input", "--dataset_path", "--encode_in_path", required=True, help="corpus JSONL (--side key) or schema records (--side query)")
    p.add_argument("--side", choices=("key", "query"), default="key")
    p.add_argument("--encode_is_query", "--encode_is_qry", dest="side", action="store_const", const="query",
                   help="Tevatron: same as --side query")
    p.add_argument("--output", "--encode_output_path", "--encoded_save_path", required=True,
                   help="output prefix: writes PREFIX.npy and PREFIX.json (a Tevatron .pkl name loses its suffix)")
    p.add_argument("--key_template", default=None, help='corpus row -> key text, e.g. "{title} {text}"')
    p.add_argument("--num_shards", "--dataset_number_of_shards", "--encode_num_shard", type=int, default=None, help="split the rows into N contiguous shards")
    p.add_argument("--shard_index", "--dataset_shard_index", "--encode_shard_index", type=int, default=None, help="which shard to encode (0-based)")
    p.add_argument("--add_instruction", action=BoolFlag, default=None,
                   help="prepend the task's instruction for --side (default: only a saved model's own, if it has any)")
    p.add_argument("--task", default="qa", help="task whose instruction --add_instruction uses")
    p.add_argument("--pooling_method", "--pooling", default=None, help="default: the model's saved setting")
    p.add_argument("--query_max_length", "--query_max_len", "--q_max_len", type=int, default=None)
    p.add_argument("--key_max_length", "--passage_max_len", "--p_max_len", type=int, default=None)
    p.add_argument("--append_eos_token", "--append_eos", dest="append_eos", action=BoolFlag, default=None,
                   help="end every text with EOS (default: the model's saved setting)")
    p.add_argument("--batch_size", "--per_device_eval_batch_size", type=int, default=64)
    p.add_argument("--chunk_size", type=int, default=256, help="rows per cached chunk (the unit of resuming and sharding)")
    p.add_argument("--cache_dir", default=None, help="chunk cache for resuming (default $LLM_EMBEDDER_CACHE or .cache)")
    add_backend_argument(p)
    return p


def _shard(args) -> tuple[int, int]:
    """``(num_shards, shard_index)`` from the arguments, else from torchrun's environment, else (1, 0)."""
    if args.num_shards is None and args.shard_index is None:
        world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
        return world, rank
    if args.num_shards is None or args.shard_index is None:
        raise UserError("--num_shards and --shard_index go together")
    if args.num_shards < 1:
        raise UserError(f"--num_shards: must be at least 1, got {args.num_shards}")
    if not 0 <= args.shard_index < args.num_shards:
        raise UserError(f"--shard_index: {args.shard_index} is outside 0..{args.num_shards - 1}")
    return args.num_shards, args.shard_index


def output_paths(prefix: str, num_shards: int, shard_index: int) -> tuple[Path, Path]:
    prefix = prefix.removesuffix(".pkl").removesuffix(".npy")  # Tevatron names its pickles x.pkl; we write x.npy + x.json
    stem = f"{prefix}.shard{shard_index}of{num_shards}" if num_shards > 1 else prefix
    return Path(f"{stem}.npy"), Path(f"{stem}.json")


@cli_guard
def main(argv: list[str] | None = None, build_encoder=None) -> int:
    """``build_encoder(model_dir, pooling_method=, query_max_length=, key_max_length=)`` defaults to
    ``DenseEncoder.from_pretrained``; the JAX encoder (llm_embedder.jax.encode) passes its own."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    num_shards, shard_index = _shard(args)
    if args.batch_size < 1:
        raise UserError(f"--batch_size: must be at least 1, got {args.batch_size}")
    if args.chunk_size < 1:
        raise UserError(f"--chunk_size: must be at least 1, got {args.chunk_size}")
    if build_encoder is not None and args.encode_backend != "torch":
        raise UserError("--encode_backend: only for the torch encoder (this command runs its own)")
    check_backend(args.encode_backend)
    from ..corpus import load_corpus
    from ..resources import resolve_encoder
    from ..schema import read_records
    from .evaluate import query_ids

    if args.side == "key":
        corpus = load_corpus(args.input, key_template=args.key_template)
        texts, ids = corpus.texts, corpus.ids
    else:
        if args.key_template:
            raise UserError("--key_template: only for --side key")
        rf = read_records(args.input, purpose="any")
        texts, ids = [r["query"] for r in rf.records], query_ids(rf)
    if not texts:
        raise UserError(f"--input: {args.input} has no rows")
    model_dir = resolve_encoder(args.model, "--model")
    npy_path, meta_path = output_paths(args.output, num_shards, shard_index)

    from ..modeling.encoder import DenseEncoder
    from .encode import encode_texts, save_npy, shard_rows

    encoder = (build_encoder or DenseEncoder.from_pretrained)(
        model_dir, pooling_method=args.pooling_method, append_eos=args.append_eos,
        query_max_length=args.query_max_length, key_max_length=args.key_max_length)
    cache = Path(args.cache_dir) if args.cache_dir else default_cache_dir()
    encoder = with_backend(encoder, args.encode_backend, cache)
    from .retriever import eval_instructions

    query_instruction, key_instruction = eval_instructions(args.task, args.add_instruction,
                                                           getattr(encoder, "instructions", None))
    instruction = key_instruction if args.side == "key" else query_instruction
    chunk_size = args.chunk_size
    lo, hi = shard_rows(len(texts), chunk_size, num_shards, shard_index)
    emb = encode_texts(encoder, texts, side=args.side, instruction=instruction, batch_size=args.batch_size,
                       cache_dir=cache, model_dir=model_dir,
                       ids=ids, chunk_size=chunk_size, num_shards=num_shards, shard_index=shard_index,
                       describe={"input": str(args.input), "key_template": args.key_template})
    save_npy(npy_path, emb)
    write_json(meta_path, {"ids": list(ids[lo:hi]), "row_offset": lo, "rows": hi - lo, "total_rows": len(texts),
                           "dim": int(emb.shape[1]) if emb.ndim == 2 and len(emb) else 0, "side": args.side,
                           "model": str(model_dir), "instruction": instruction, "settings": encoder.settings(),
                           "input": str(args.input), "key_template": args.key_template,
                           "num_shards": num_shards, "shard_index": shard_index})
    print(f"wrote {npy_path} ({hi - lo} rows {lo}..{hi - 1} of {len(texts)}) and {meta_path}")
    return 0
