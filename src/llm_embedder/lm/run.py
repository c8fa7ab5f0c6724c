"""``run_lm_score.py``: write ``teacher_scores`` = an LLM's mean log-probability of the answer given each key.

Reads a schema file (keys as texts or as ``--corpus`` rows), scores every (row, key, answer) with the
task's template (``llm_embedder.lm.templates``) and writes ``{name}.scored.{save_name}.json`` (every input
row, in order, all fields kept, ``teacher_scores`` aligned with ``pos + neg`` or ``history``) plus a
``.meta.json`` that says which LM, templates, normalisation and limits produced them.

Under ``torchrun`` the length-sorted batches are dealt round-robin to the ranks (gloo) and rank 0 writes
the merged result. Finished pairs are logged every ``--save_every`` pairs so a killed run resumes where it
stopped; the output appears only when complete.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path


from ..runinfo import versions
from ..corpus import load_corpus
from ..argparsing import ArgParser
from ..errors import UserError, cli_guard
from ..paths import portable_path, sidecar_key_template
from ..schema import derived_path, meta_path, read_records, sidecar_corpus, write_json, write_records
from . import distributed as dist_utils
from .api import ANSWER_POLICIES, teacher_scores_from_pairs as aggregate
from .checkpoint import PartialScores, remove_partial
from .loading import lm_identity, load_model, load_tokenizer, local_lm_dir
from .pairs import AUTO, ScoringPlan, build_plan, plan_rows
from .scorer import LMScorer, pack_batches
from .templates import template_names

NORMALISATION = "mean log-probability per answer token"


def build_parser() -> argparse.ArgumentParser:
    p = ArgParser(prog="run_lm_score.py", description=__doc__.splitlines()[0])
    p.add_argument("--eval_data", required=True, help="schema file to score (llm-embedder:... paths allowed)")
    p.add_argument("--corpus", help="JSONL corpus that pos_index/neg_index refer to "
                   "(default: the corpus named in the file's .meta.json sidecar, if any; none otherwise)")
    p.add_argument("--key_template", help="format of a corpus row as key text, e.g. '{title} {text}'")
    p.add_argument("--model_name_or_path", default="smollm2", help="causal LM: alias (smollm2) or local HF folder")
    p.add_argument("--save_name", default=None,
                   help="output is {name}.scored.{save_name}.json (default: the LM's alias or folder name, e.g. smollm2)")
    p.add_argument("--output_dir", help="folder for the output (default: next to --eval_data)")
    p.add_argument("--template", default=AUTO, choices=[AUTO, *template_names()],
                   help="prompt template; auto picks each row's task's template")
    p.add_argument("--answer_policy", default="mean", choices=ANSWER_POLICIES,
                   help="how scores of several answers combine into one key score")
    p.add_argument("--max_length", type=int, default=1024, help="tokens per scored sequence (prompt cut from the left)")
    p.add_argument("--key_max_length", type=int, default=256, help="tokens kept of each key")
    p.add_argument("--token_budget", type=int, default=8192, help="padded tokens per forward pass (batch x length)")
    p.add_argument("--bf16", action="store_true", help="run the LM in bfloat16 (default float32)")
    p.add_argument("--max_queries", type=int, help="score only the first N rows")
    p.add_argument("--max_keys", type=int, help="score only the first N keys of each row (pos first)")
    p.add_argument("--max_pos", type=int, help="score only the first N positives of each row (the others leave the "
                                               "output row); with --max_keys the rest of the budget goes to negatives")
    p.add_argument("--save_every", type=int, default=256, help="checkpoint finished pairs every N pairs; 0 = never")
    p.add_argument("--verbose", action="store_true", help="show third-party startup messages (datasets, DeepSpeed, tokenizers)")
    return p


def check_args(args: argparse.Namespace) -> None:
    positive = {"--max_length": args.max_length, "--key_max_length": args.key_max_length,
                "--token_budget": args.token_budget, "--max_queries": args.max_queries, "--max_keys": args.max_keys,
                "--max_pos": args.max_pos}
    for name, value in positive.items():
        if value is not None and value < 1:
            raise UserError(f"{name}: must be at least 1, got {value}")
    if args.max_length < 2:
        raise UserError(f"--max_length: must leave room for a prompt and an answer token, got {args.max_length}")
    if args.token_budget < args.max_length:
        raise UserError(f"--token_budget ({args.token_budget}) must be at least --max_length ({args.max_length})")
    if args.save_every < 0:
        raise UserError(f"--save_every: must be 0 (never) or positive, got {args.save_every}")
    if args.save_name is None:
        args.save_name = Path(str(args.model_name_or_path).rstrip("/")).name
    if not args.save_name.strip() or "/" in args.save_name:
        raise UserError(f"--save_name: '{args.save_name}' must be a non-empty name without '/'")


def check_max_length(folder: Path, max_length: int) -> None:
    """--max_length may not exceed the positions the LM was built for (read from its config.json)."""
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    positions = config.get("max_position_embeddings")
    if isinstance(positions, int) and max_length > positions:
        raise UserError(f"--max_length: {max_length} exceeds the LM's {positions} positions ({folder / 'config.json'})")


def build_meta(args, plan: ScoringPlan, lm_info: dict, source: Path, output: Path, corpus, seconds: float,
               world_size: int, resumed: int) -> dict:
    templates = {}
    for rp, row in zip(plan.row_plans, plan.rows):
        templates.setdefault(row.get("task") or "(no task)", rp.template.to_dict())
    truncated = sorted({name for rp in plan.row_plans for name in rp.truncated_fields})
    return {
        "output": str(output), "eval_data": str(source),
        "corpus": portable_path(corpus.path, output.parent) if corpus is not None else None,
        "key_template": args.key_template,
        "lm": lm_info, "template_argument": args.template, "templates": templates,
        "normalisation": NORMALISATION, "answer_policy": args.answer_policy,
        "special_tokens": "prompt + answer tokenised as one text and split at the answer's first character; the "
                          f"tokenizer's own prefix {plan.stats['special_prefix_ids']} (BOS, if it adds one) before each prompt",
        "max_length": args.max_length, "key_max_length": args.key_max_length,
        "truncation": "keys cut to key_max_length tokens; a prompt too long loses its context's left end, then its "
                      "key's end, then (query alone too long) its left end; the answer is scored whole",
        "token_budget": args.token_budget, "max_queries": args.max_queries, "max_keys": args.max_keys,
        "max_pos": args.max_pos, "fields_truncated_by_max_keys": truncated, "teacher_scores_align_with": sorted({rp.key_fields for rp in plan.row_plans}),
        "counts": {**plan.stats, "pairs_resumed_from_partial": resumed},
        "world_size": world_size, "seconds": round(seconds, 2),
        "versions": versions(),
    }


def score_resumably(plan: ScoringPlan, scorer: LMScorer, args, output: Path, lm_info: dict, rank: int,
                    world: int) -> tuple[list[float] | None, int]:
    """Score this rank's share of the batches not yet in the partial folder; rank 0 gets every pair's score
    (``None`` on the other ranks) and the number of pairs taken from the partial folder."""
    from tqdm.auto import tqdm

    sequences = [(p.prompt_ids, p.target_ids) for p in plan.pairs]
    batches = pack_batches([len(p) + len(t) for p, t in sequences], args.token_budget)
    partial = PartialScores(output, plan.fingerprint({"lm": lm_identity(lm_info), "token_budget": args.token_budget}), rank)
    done = partial.load(len(sequences))
    if rank == 0 and args.save_every:
        partial.start()
    dist_utils.barrier(world)  # everyone has read the partial folder before anyone appends to it
    todo = [b for b in batches if not all(i in done for i in b)]
    mine = todo[rank::world]  # longest first, dealt round-robin: the ranks get similar work

    def checkpoint(indices, values):
        if args.save_every:
            partial.add(indices, values)
            if partial.pending >= args.save_every:
                partial.flush()

    with tqdm(total=sum(len(b) for b in mine), unit="pair", disable=rank != 0,
              desc="LM scoring" + (f" (rank 0 of {world})" if world > 1 else "")) as bar:
        scores = scorer.score(sequences, args.token_budget, batches=mine, on_batch=checkpoint, progress=bar)
    partial.flush()
    merged = dist_utils.merge_scores(scores, world)
    if rank != 0:
        return None, 0
    resumed = 0
    for i, value in done.items():
        if merged[i] is None:
            merged[i], resumed = value, resumed + 1
    if any(v is None for v in merged):
        raise RuntimeError(f"{sum(v is None for v in merged)} pairs were left unscored")
    return merged, resumed


def run(args: argparse.Namespace) -> Path | None:
    """Score ``args.eval_data``; returns the output path on rank 0 (None on other ranks)."""
    check_args(args)
    started = time.perf_counter()
    corpus_path = args.corpus or sidecar_corpus(args.eval_data)
    if args.corpus is None and args.key_template is None:
        args.key_template = sidecar_key_template(args.eval_data)  # a mined file's keys, rendered as when mined
    if args.key_template and corpus_path is None:
        raise UserError("--key_template: formats corpus rows, but there is no --corpus")
    corpus = load_corpus(corpus_path, args.key_template) if corpus_path else None
    rf = read_records(args.eval_data, purpose="score", corpus_size=len(corpus) if corpus else None)
    # every row-level check (task, keys, answers for the template) before the LM is located or converted
    plan_rows(rf, template=args.template, corpus=corpus, max_queries=args.max_queries, max_keys=args.max_keys,
              max_pos=args.max_pos)
    output = derived_path(rf.path, "scored", args.save_name, args.output_dir)
    rank, world = dist_utils.setup()
    try:
        with dist_utils.rank_zero_first(rank, world):  # rank 0 converts a GGUF alias; the others then find it cached
            folder, alias, source = local_lm_dir(args.model_name_or_path)
        check_max_length(folder, args.max_length)
        tokenizer = load_tokenizer(folder)
        plan = build_plan(rf, tokenizer, template=args.template, corpus=corpus, max_length=args.max_length,
                          key_max_length=args.key_max_length, max_queries=args.max_queries, max_keys=args.max_keys,
                          max_pos=args.max_pos)
        dtype = "bfloat16" if args.bf16 else "float32"
        model = load_model(folder, dtype).to(dist_utils.device_for(rank))
        lm_info = {"path": str(folder), "alias": alias, "source": source, "dtype": dtype, "class": type(model).__name__}
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        merged, resumed = score_resumably(plan, LMScorer(model, pad_id=pad_id), args, output, lm_info, rank, world)
        if rank != 0:
            return None
        per_key = aggregate(plan, merged, args.answer_policy)
        rows = [dict(row, teacher_scores=values) for row, values in zip(plan.rows, per_key)]
        write_records(output, rows)
        meta = build_meta(args, plan, lm_info, rf.path, output, corpus, time.perf_counter() - started, world, resumed)
        write_json(meta_path(output), meta)
        remove_partial(output)
        print(f"wrote {output} ({len(rows)} rows, {len(plan.pairs)} pairs) and {meta_path(output).name}")
        return output
    finally:
        dist_utils.teardown(world)


@cli_guard
def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from ..noise import quiet_third_party

    args = build_parser().parse_args(argv)
    quiet_third_party(args.verbose)
    run(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
