"""``python -m evaluation.eval_retrieval``: evaluate a retriever on schema records, and mine negatives.

Every argument is checked (files, corpus rows, ``--key_template`` fields, metric names, cutoffs, hits,
answers for ``nq``) before a model is loaded. Outputs go next to ``--eval_data`` (or to ``--output_dir``)::

    {name}.run.{save_name}.trec        TREC run file (qid Q0 docid rank score tag)
    {name}.metrics.{save_name}.jsonl   per-query metrics
    {name}.eval.{save_name}.json       summary: arguments, versions, metrics, corpus label, timings
    {name}.neg.{save_name}.json        with --metrics collate_neg: the records with mined negatives

Under ``torchrun`` every rank encodes its shard of the corpus (into the shared ``--cache_dir``) and rank 0
merges, searches and writes.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

from ..corpus import load_corpus
from ..argparsing import ArgParser, BoolFlag
from ..errors import UserError, cli_guard
from ..modeling.backends import add_backend_argument, check_backend, with_backend
from ..resources import cache_dir as default_cache_dir
from ..runinfo import versions
from ..schema import derived_path, read_records, sidecar_corpus, write_json, write_records
from .dense import INDEX_TYPES, IndexParams
from .metrics import ANSWER_METRICS, METRICS, check_metrics, write_trec_run
from .hybrid import FUSIONS, HybridRetriever, check_fusion

logger = logging.getLogger("llm_embedder.eval_retrieval")

ACTIONS = ("collate_neg",)  # --metrics entries that write files instead of computing a number


def build_parser() -> argparse.ArgumentParser:
    p = ArgParser(prog="python -m evaluation.eval_retrieval", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    data = p.add_argument_group("data")
    data.add_argument("--eval_data", required=True, help="schema records (JSONL); llm-embedder:scifact/test.json works")
    data.add_argument("--corpus", default=None,
                      help="corpus JSONL; its row number is the key index (default: the one --eval_data's .meta.json names)")
    data.add_argument("--key_template", default=None, help='how a corpus row becomes key text, e.g. "{title} {text}"')
    data.add_argument("--max_queries", type=int, default=None, help="evaluate only the first N records")
    data.add_argument("--output_dir", default=None, help="where outputs go (default: next to --eval_data)")
    data.add_argument("--save_name", default=None, help="output name part (default: bm25 or the encoder's folder name)")

    ret = p.add_argument_group("retrieval")
    ret.add_argument("--retrieval_method", choices=("dense", "bm25", "hybrid"), default="dense",
                     help="hybrid: the dense encoder and BM25, rankings fused (--fusion)")
    ret.add_argument("--metrics", nargs="+", default=["mrr", "recall", "ndcg"],
                     help=f"any of {', '.join(METRICS + ACTIONS)}")
    ret.add_argument("--cutoffs", nargs="+", type=int, default=[1, 5, 10, 100])
    ret.add_argument("--hits", type=int, default=200, help="retrieval depth per query")

    dense = p.add_argument_group("dense")
    dense.add_argument("--query_encoder", default="minilm", help="encoder folder or alias (minilm)")
    dense.add_argument("--pooling_method", default=None, help="cls | mean | last (default: the model's saved setting)")
    dense.add_argument("--query_max_length", type=int, default=None)
    dense.add_argument("--key_max_length", type=int, default=None)
    dense.add_argument("--add_instruction", action=BoolFlag, default=None,
                       help="prepend the task's instructions (default: only a saved model's own instructions, if it has any)")
    dense.add_argument("--task", default=None, help="task whose instructions --add_instruction uses (default: the "
                       "records' task field, else qa); a saved model's own instructions win over the registry's")
    dense.add_argument("--batch_size", type=int, default=64)
    dense.add_argument("--faiss_index", choices=INDEX_TYPES, default="flat")
    dense.add_argument("--nlist", type=int, default=None, help="IVF cells (default 4*sqrt(N))")
    dense.add_argument("--nprobe", type=int, default=16, help="IVF cells visited per query")
    dense.add_argument("--hnsw_m", type=int, default=32)
    dense.add_argument("--ef_search", type=int, default=128)
    dense.add_argument("--corpus_subsample", type=int, default=None,
                       help="search all positives plus N seeded other rows (labelled in the outputs)")
    dense.add_argument("--seed", type=int, default=0)
    dense.add_argument("--cache_dir", default=None, help="corpus-embedding and BM25-index cache (default $LLM_EMBEDDER_CACHE or .cache)")
    add_backend_argument(dense)

    bm25 = p.add_argument_group("bm25")
    bm25.add_argument("--bm25_backend", choices=("pyserini", "bm25s", "rank_bm25"), default="pyserini")
    bm25.add_argument("--bm25_k1", type=float, default=0.9)
    bm25.add_argument("--bm25_b", type=float, default=0.4)

    hybrid = p.add_argument_group("hybrid (dense + BM25)")
    hybrid.add_argument("--fusion", choices=FUSIONS, default="rrf",
                        help="rrf: reciprocal rank fusion; interpolation: per-query min-max scores, alpha x dense + "
                             "(1 - alpha) x BM25 (pyserini.fusion)")
    hybrid.add_argument("--fusion_rrf_k", type=float, default=60)
    hybrid.add_argument("--fusion_alpha", type=float, default=0.5, help="interpolation: the dense side's weight")
    hybrid.add_argument("--fusion_depth", type=int, default=None, help="keys each side retrieves (default --hits)")

    mine = p.add_argument_group("collate_neg (hard-negative mining)")
    mine.add_argument("--max_neg_num", type=int, default=100)
    mine.add_argument("--neg_start", type=int, default=0, help="skip the first N retrieved ranks")
    mine.add_argument("--filter_answers", action="store_true", help="drop keys that contain one of the answers")
    p.add_argument("--verbose", action="store_true", help="show third-party startup messages (faiss, datasets, DeepSpeed)")
    return p


def _dist_rank() -> tuple[int, int]:
    """Join the torchrun process group when launched by it; ``(rank, world)``. gloo: the ranks only meet at
    barriers around the shared embedding cache, which gloo serves on CPUs and GPUs alike."""
    from ..distributed import init_from_env

    return init_from_env(backend="gloo")


def validate_args(args) -> None:
    metrics, cutoffs = check_metrics(args.metrics, args.cutoffs, extra=ACTIONS)
    args.metrics, args.cutoffs = metrics, cutoffs
    if not metrics:
        raise UserError("--metrics: give at least one metric or collate_neg")
    if args.hits < 1:
        raise UserError(f"--hits: must be at least 1, got {args.hits}")
    if args.max_queries is not None and args.max_queries < 1:
        raise UserError(f"--max_queries: must be at least 1, got {args.max_queries}")
    if args.corpus_subsample is not None and args.corpus_subsample < 0:
        raise UserError(f"--corpus_subsample: must be 0 or more, got {args.corpus_subsample}")
    if args.corpus_subsample and "collate_neg" in metrics:
        raise UserError("--corpus_subsample: mining needs the full corpus; drop collate_neg or the subsample")
    if args.retrieval_method != "dense" and args.corpus_subsample:
        raise UserError("--corpus_subsample: only for --retrieval_method dense")
    if args.retrieval_method == "hybrid":
        check_fusion(args.fusion, args.fusion_rrf_k, args.fusion_alpha, args.fusion_depth)
    if args.batch_size < 1:
        raise UserError(f"--batch_size: must be at least 1, got {args.batch_size}")
    if args.retrieval_method in ("dense", "hybrid"):
        check_backend(args.encode_backend)
    if args.output_dir and Path(args.output_dir).exists() and not Path(args.output_dir).is_dir():
        raise UserError(f"--output_dir: {args.output_dir} exists and is not a folder")


def _bm25_retriever(args, cache: Path):
    """The BM25 side of ``--retrieval_method bm25`` and ``hybrid``, from the ``--bm25_*`` arguments."""
    from .bm25 import BM25Retriever

    return BM25Retriever(args.bm25_backend, k1=args.bm25_k1, b=args.bm25_b, cache_dir=cache)


@cli_guard
def main(argv: list[str] | None = None) -> int:
    from .evaluate import _check_hits, check_answers, evaluate, positive_rows, query_ids, subsample_label, subsample_rows
    from .retriever import DenseRetriever, eval_instructions, eval_task
    from .mining import check_mining_args, mine_negatives, write_mined_sidecar

    from ..noise import quiet_third_party

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    quiet_third_party(args.verbose)
    started = time.time()
    validate_args(args)
    eval_metrics = [m for m in args.metrics if m not in ACTIONS]
    mining = "collate_neg" in args.metrics
    if eval_metrics:
        _check_hits(args.hits, args.cutoffs)
    if mining:
        check_mining_args(args.max_neg_num, args.neg_start, args.hits)

    # ---- every input check before any model work ----
    if args.corpus is None:
        args.corpus = sidecar_corpus(args.eval_data)
        if args.corpus is None:
            raise UserError(f"--corpus: required ({args.eval_data} has no .meta.json sidecar naming its corpus)")
    corpus = load_corpus(args.corpus, key_template=args.key_template)
    if not len(corpus):
        raise UserError(f"--corpus: {args.corpus} has no rows")
    # answers-only records are enough for --metrics nq (answer recall), as in the reference
    needs_positives = any(m not in ANSWER_METRICS for m in eval_metrics) or bool(args.corpus_subsample)
    rf = read_records(args.eval_data, purpose="eval" if needs_positives else "any", corpus_size=len(corpus))
    if args.max_queries:
        rf.records, rf.lines = rf.records[:args.max_queries], rf.lines[:args.max_queries]
    records = rf.records
    qids = query_ids(rf)
    pos_rows = positive_rows(rf, corpus) if needs_positives else [[] for _ in records]
    check_answers(rf, eval_metrics)
    if args.filter_answers and not mining:
        raise UserError("--filter_answers: only used with --metrics collate_neg")
    save_name = args.save_name or ("bm25" if args.retrieval_method == "bm25" else
                                   ("hybrid-" if args.retrieval_method == "hybrid" else "") + Path(str(args.query_encoder)).name)
    if not save_name or any(c in save_name for c in "/\\ "):
        raise UserError(f"--save_name: {save_name!r} must be a plain name without spaces or slashes")
    cache = Path(args.cache_dir) if args.cache_dir else default_cache_dir()
    rank, world = _dist_rank() if args.retrieval_method != "bm25" else (int(os.environ.get("RANK", "0")), 1)
    if args.retrieval_method == "bm25" and rank != 0:
        return 0  # BM25 runs on rank 0 only; the other torchrun ranks have nothing to do

    # ---- retrieval: one Retriever, one evaluator (the trainer's evaluation and mining use the same) ----
    if args.retrieval_method == "bm25":
        retriever = _bm25_retriever(args, cache)
        label = f"full(N={len(corpus)}, bm25={args.bm25_backend}, k1={args.bm25_k1}, b={args.bm25_b})"
        instructions = ("", "")
    else:
        from ..modeling.encoder import DenseEncoder
        from ..resources import resolve_encoder
        from .encode import encode_texts

        model_dir = resolve_encoder(args.query_encoder, "--query_encoder")
        encoder = DenseEncoder.from_pretrained(model_dir, pooling_method=args.pooling_method,
                                               query_max_length=args.query_max_length,
                                               key_max_length=args.key_max_length)
        encoder = with_backend(encoder, args.encode_backend, cache)
        instructions = eval_instructions(eval_task(records, args.task), args.add_instruction, encoder.instructions)
        keep = None
        if args.corpus_subsample:
            keep = subsample_rows(len(corpus), [r for p in pos_rows for r in p], args.corpus_subsample, args.seed)
        label = subsample_label(args.corpus_subsample, args.seed, len(keep) if keep is not None else len(corpus), len(corpus))
        key_embeddings = None
        if keep is None:  # full corpus: cached, and sharded over torchrun ranks
            key_embeddings = encode_texts(encoder, corpus.texts, side="key", instruction=instructions[1],
                                          batch_size=args.batch_size, cache_dir=cache, model_dir=model_dir,
                                          ids=corpus.ids, describe={"corpus": str(corpus.path), "key_template": args.key_template})
        if rank != 0:
            return 0
        params = IndexParams(nlist=args.nlist, nprobe=args.nprobe, hnsw_m=args.hnsw_m, ef_search=args.ef_search)
        retriever = DenseRetriever(encoder, instructions[0], instructions[1], args.batch_size, cache, model_dir,
                                   args.faiss_index, params, keep, key_embeddings)
        if args.retrieval_method == "hybrid":
            retriever = HybridRetriever(retriever, _bm25_retriever(args, cache), args.fusion, args.fusion_rrf_k,
                                        args.fusion_alpha, args.fusion_depth)
            label = f"{label}, {retriever.describe()}, bm25={args.bm25_backend}"
    result = evaluate(retriever, rf, corpus, eval_metrics, args.cutoffs, args.hits, label, pos_rows=pos_rows)
    rows = result["rows"]

    # ---- outputs ----
    outputs, summary = {}, {"eval_data": str(rf.path), "corpus": label, "num_queries": len(records),
                            "retrieval_method": args.retrieval_method, "instructions": list(instructions)}
    outputs["run"] = str(write_trec_run(derived_path(rf.path, "run", save_name, args.output_dir).with_suffix(".trec"),
                                        result["run"], tag=save_name))
    if eval_metrics:
        per_query_path = derived_path(rf.path, "metrics", save_name, args.output_dir).with_suffix(".jsonl")
        write_records(per_query_path, ({"query_id": q, **result["per_query"][q]} for q in qids))
        outputs["per_query_metrics"] = str(per_query_path)
        summary["metrics"] = result["metrics"]
        print(f"{label}: " + " ".join(f"{k}={v:.4f}" for k, v in result["metrics"].items()))
    if mining:
        mined, stats = mine_negatives(records, rows, corpus, max_neg_num=args.max_neg_num, neg_start=args.neg_start,
                                      filter_answers=args.filter_answers)
        neg_path = derived_path(rf.path, "neg", save_name, args.output_dir)
        write_records(neg_path, mined)
        retrieval = {k: getattr(args, k) for k in ("retrieval_method", "query_encoder", "bm25_backend", "hits",
                                                   "max_neg_num", "neg_start", "filter_answers")}
        if args.retrieval_method == "hybrid":
            retrieval.update({k: getattr(args, k) for k in ("fusion", "fusion_rrf_k", "fusion_alpha", "fusion_depth")})
        write_mined_sidecar(neg_path, rf.path, corpus, args.key_template, stats, retrieval)
        outputs["negatives"] = str(neg_path)
        summary["mining"] = stats.as_dict()
        print(f"wrote {neg_path} ({stats.rows} rows, {stats.negatives} negatives, "
              f"{stats.rows_without_negatives} rows without negatives)")
    summary_path = derived_path(rf.path, "eval", save_name, args.output_dir)
    summary.update(outputs=outputs, args=vars(args), argv=sys.argv if argv is None else list(argv),
                   versions=versions(), wall_time_s=round(time.time() - started, 2))
    write_json(summary_path, summary)
    print(f"wrote {summary_path}")
    return 0
