"""``python -m evaluation.eval_lm``: the LM's perplexity on held-out targets given the keys a retriever picks.

For every target of an lrlm file, each ``--retrieval_method`` ranks the target's candidate keys; the top
``--k`` (in file order) + the context + the query form the LM input, and the LM's mean NLL per target token
is recorded. Rows come from a scored file when it holds the needed scores (every key alone and no key:
``python -m llm_embedder.lrlm.teacher``), else the LM scores them (batched, resumable). Writes per method
``{label}.k{k}.jsonl`` (one line per target) and ``summary.k{k}.json`` (mean NLL, perplexity, bootstrap
intervals, ``--compare`` paired intervals). ``--reliability`` measures the teacher's split-half reliability
on a scored (train) file instead.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import UserError, cli_guard
from ..resources import resolve_data_path, resolve_lm
from ..schema import write_json, write_records
from . import metrics, retrievers
from .teacher import read_lrlm
from ..argparsing import ArgParser


def build_parser() -> argparse.ArgumentParser:
    p = ArgParser(prog="python -m evaluation.eval_lm", description=__doc__.splitlines()[0])
    p.add_argument("--eval_data", required=True, help="lrlm file (built by `llm-embedder convert lrlm`), scored or not")
    p.add_argument("--retrieval_method", nargs="+", default=["none", "bm25"], choices=retrievers.METHODS)
    p.add_argument("--model_name_or_path", nargs="*", default=[], help="dense encoders (aliases or saved folders)")
    p.add_argument("--labels", nargs="*", default=None, help="row labels of the dense encoders (default dense:NAME)")
    p.add_argument("--lm", default="smollm2", help="the causal LM whose perplexity is measured")
    p.add_argument("--k", type=int, default=1, help="keys given to the LM")
    p.add_argument("--output_dir", required=True)
    p.add_argument("--compare", nargs=2, action="append", default=[], metavar=("A", "B"),
                   help="paired comparison of two row labels (repeatable)")
    p.add_argument("--reliability", action="store_true", help="split-half reliability of the teacher on a scored file")
    p.add_argument("--token_budget", type=int, default=8192)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    return p


def _label(name: str) -> str:
    return f"dense:{Path(name).name if Path(name).exists() else name}"


def _check(args, records) -> None:
    if not records:
        raise UserError(f"--eval_data: {args.eval_data} has no records")
    pool = min(len(r["key_ids"]) for r in records)
    if args.k < 1:
        raise UserError(f"--k must be at least 1, got {args.k}")
    if args.k > pool:
        raise UserError(f"--k {args.k} is larger than the smallest candidate pool ({pool} keys)")
    if "dense" in args.retrieval_method and not args.model_name_or_path:
        raise UserError("--retrieval_method dense needs --model_name_or_path (an alias or a saved encoder)")
    if args.labels is not None and len(args.labels) != len(args.model_name_or_path):
        raise UserError(f"--labels: {len(args.labels)} labels for {len(args.model_name_or_path)} models")
    scored = all("key_token_logprobs" in r for r in records)
    if args.reliability and not scored:
        raise UserError("--reliability needs a scored file (python -m llm_embedder.lrlm.teacher)")
    if "oracle" in args.retrieval_method and not scored:
        raise UserError("--retrieval_method oracle needs the LM's score of every key alone: pass a scored file "
                        "(python -m llm_embedder.lrlm.teacher)")


def rankings(args, records) -> dict[str, list[list[int]]]:
    """Label -> per-record key ranking, for every method except none."""
    loaders = [(lab, retrievers.load_encoder(m)) for lab, m in
               zip(args.labels or [_label(m) for m in args.model_name_or_path], args.model_name_or_path)] \
        if "dense" in args.retrieval_method or args.reliability else []
    out: dict[str, list[list[int]]] = {}
    for method in args.retrieval_method:
        if method == "random":
            out["random"] = retrievers.rank_random(records, args.seed)
        elif method == "bm25":
            out["bm25"] = retrievers.rank_bm25(records)
        elif method == "oracle":
            out["oracle"] = retrievers.rank_by_scores(retrievers.mean_logprob_scores([r["key_token_logprobs"] for r in records]))
        elif method == "privileged":
            out["privileged"] = retrievers.rank_privileged(records)
    for label, load in loaders:
        out[label] = retrievers.rank_dense(records, load())
    return out


def _lazy_scorer(args, records, sets, sep):
    class Lazy:
        scorer = None

        def __getattr__(self, name):
            if Lazy.scorer is None:
                from ..lm.scorer import LMScorer
                from .teacher import prepare_lm

                Lazy.scorer = LMScorer(prepare_lm(args.lm, records, sets, sep, argument="--lm").model)
            return getattr(Lazy.scorer, name)
    return Lazy()


def lm_rows(args, records, meta, label: str, key_sets: list[tuple]) -> list[list[float]]:
    """Per-target token log-probs for one row: from the scored file when it has them, else from the LM."""
    cached = [_cached(r, s) for r, s in zip(records, key_sets)]
    missing = [i for i, c in enumerate(cached) if c is None]
    if missing:
        from .score import score_key_sets

        sub, sets = [records[i] for i in missing], [[key_sets[i]] for i in missing]
        sep = meta["separator_ids"]
        partial = Path(args.output_dir) / f"{label.replace(':', '_').replace('/', '_')}.k{args.k}.partial.jsonl"
        res = score_key_sets(sub, sets, sep, _lazy_scorer(args, sub, sets, sep), args.token_budget, partial=partial,
                             model_desc={"path": args.lm, "dtype": "float32"})
        for i, r in zip(missing, res):
            cached[i] = r[key_sets[i]]
    return cached  # type: ignore[return-value]


def _cached(record: dict, keys: tuple):
    if len(keys) == 0 and "none_token_logprobs" in record:
        return record["none_token_logprobs"]
    if len(keys) == 1 and "key_token_logprobs" in record:
        return record["key_token_logprobs"][keys[0]]
    return None


def evaluate(args, records, meta) -> dict:
    out_dir = Path(args.output_dir)
    ranks = rankings(args, records)
    rows = {}
    labels = (["none"] if "none" in args.retrieval_method else []) + list(ranks)
    for label in labels:
        key_sets = [()] * len(records) if label == "none" else [tuple(sorted(r[:args.k])) for r in ranks[label]]
        logprobs = lm_rows(args, records, meta, label, key_sets)
        first, second = metrics.halves(len(records[0]["answer_ids"]))
        per_target = [{"query_id": r["query_id"], "keys": list(s), "nll": metrics.nll_of(lp),
                       "nll_first_half": metrics.nll_of(lp, first), "nll_second_half": metrics.nll_of(lp, second)}
                      for r, s, lp in zip(records, key_sets, logprobs)]
        name = label.replace(":", "_").replace("/", "_")
        write_records(out_dir / f"{name}.k{args.k}.jsonl", per_target)
        rows[label] = [t["nll"] for t in per_target]
    summary_path = out_dir / f"summary.k{args.k}.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {"rows": {}, "compare": {}}
    for label, nll in rows.items():
        summary["rows"][label] = metrics.summarise(nll, args.seed)
    for a, b in args.compare:
        va, vb = _row_values(out_dir, args.k, a, rows), _row_values(out_dir, args.k, b, rows)
        summary["compare"][f"{a} vs {b}"] = metrics.paired(va, vb, args.seed)
    summary.update({"eval_data": str(resolve_data_path(args.eval_data)), "lm": args.lm, "k": args.k})
    write_json(summary_path, summary)
    return summary


def _row_values(out_dir: Path, k: int, label: str, rows: dict) -> list[float]:
    if label in rows:
        return rows[label]
    path = out_dir / f"{label.replace(':', '_').replace('/', '_')}.k{k}.jsonl"
    if not path.is_file():
        raise UserError(f"--compare: no row {label!r} (evaluate it first, or list it in --retrieval_method)")
    return [json.loads(line)["nll"] for line in path.read_text().splitlines() if line.strip()]


@cli_guard
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    resolve_lm(args.lm, "--lm")  # a missing LM package is one line, before anything loads
    for m in args.model_name_or_path:
        from ..resources import resolve_encoder

        resolve_encoder(m, "--model_name_or_path")
    records, meta = read_lrlm(args.eval_data)
    _check(args, records)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.reliability:
        args_methods = [m for m in args.retrieval_method if m in ("random", "bm25", "dense")]
        args.retrieval_method = args_methods
        result = metrics.reliability(records, rankings(args, records), args.seed)
        write_json(Path(args.output_dir) / "reliability.json", result)
        _print_rows(result["rows_second_half"], f"reliability (second halves), split-half Spearman {result['spearman_split_half']:.3f}")
        return 0
    summary = evaluate(args, records, meta)
    _print_rows(summary["rows"], f"k={args.k}")
    for name, c in summary["compare"].items():
        print(f"{name}: gain {c['mean_gain_nats']:+.4f} nats, 95% CI [{c['ci95'][0]:+.4f}, {c['ci95'][1]:+.4f}]")
    return 0


def _print_rows(rows: dict, title: str) -> None:
    print(title)
    for label, s in rows.items():
        print(f"  {label:28s} NLL {s['mean_nll']:.4f}  ppl {s['ppl']:.3f}  [{s['ppl_ci95'][0]:.3f}, {s['ppl_ci95'][1]:.3f}]  n={s['targets']}")
