"""``python -m evaluation.eval_lm``: the LM's own metric on held-out targets given the keys a retriever picks.

``--task lrlm`` (default): for every target of an lrlm file, each ``--retrieval_method`` ranks the target's
candidate keys; the top ``--k`` (in file order) + the context + the query form the LM input, and the LM's
mean NLL per target token is recorded. Rows come from a scored file when it holds the needed scores (every
key alone and no key: ``python -m llm_embedder.lrlm.teacher``), else the LM scores them. ``--reliability``
measures the teacher's split-half reliability on a scored (train) file instead.

``--task qa`` / ``--task icl`` (PubMedQA): the retriever searches a whole corpus (``--corpus``; for icl the
``--train_data`` questions) and the LM scores the answer given the top-k abstracts (qa: mean NLL per answer
token) or the yes/no/maybe label given k demonstrations (icl: accuracy, NLL of the gold label); see
:mod:`llm_embedder.lrlm.answer_tasks`.

Every mode scores in batches of ``--token_budget`` padded tokens, resumably (``{label}.k{k}.partial.jsonl``),
and writes per method ``{label}.k{k}.jsonl`` (one line per target) and ``summary.k{k}.json`` (means,
bootstrap intervals, ``--compare`` paired intervals).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import UserError, cli_guard
from ..resources import resolve_data_path, resolve_encoder, resolve_lm
from ..schema import write_json, write_records
from . import fitted, metrics, retrievers
from .teacher import read_lrlm
from ..argparsing import ArgParser

TASKS = ("lrlm", "qa", "icl")
ANSWER_TASK_FLAGS = ("corpus", "train_data", "queries", "max_queries", "max_length", "key_max_length", "bm25_backend")


def build_parser() -> argparse.ArgumentParser:
    p = ArgParser(prog="python -m evaluation.eval_lm", description=__doc__.splitlines()[0])
    p.add_argument("--eval_data", required=True, help="lrlm file (built by `llm-embedder convert lrlm`), scored or not; "
                   "for qa/icl a schema file (e.g. llm-embedder:pubmedqa/test.json)")
    p.add_argument("--task", default="lrlm", choices=TASKS, help="lrlm: perplexity of code given retrieved chunks; "
                   "qa: answer NLL given retrieved --corpus keys; icl: yes/no/maybe accuracy given --train_data demonstrations")
    p.add_argument("--retrieval_method", nargs="+", default=["none", "bm25"], choices=retrievers.METHODS)
    p.add_argument("--model_name_or_path", nargs="*", default=[], help="dense encoders (aliases or saved folders)")
    p.add_argument("--labels", nargs="*", default=None, help="row labels of the dense encoders (default dense:NAME)")
    p.add_argument("--lm", default="smollm2", help="the causal LM whose perplexity is measured")
    p.add_argument("--k", type=int, default=1, help="keys given to the LM")
    p.add_argument("--output_dir", required=True)
    p.add_argument("--compare", nargs=2, action="append", default=[], metavar=("A", "B"),
                   help="paired comparison of two row labels (repeatable)")
    p.add_argument("--reliability", action="store_true", help="split-half reliability of the teacher on a scored file "
                   "(with bm25 and dense: also a ranker cross-fitted on other files, the preference's systematic part)")
    p.add_argument("--fit_data", default=None, help="--retrieval_method fitted: the scored TRAIN lrlm file the small "
                   "feature ranker is fitted on (other source files than --eval_data)")
    p.add_argument("--fit_encoder", default="minilm", help="the encoder whose ranks are a feature of the fitted ranker")
    p.add_argument("--token_budget", type=int, default=8192, help="padded tokens per forward pass (batch x length)")
    qa = p.add_argument_group("qa / icl")
    qa.add_argument("--corpus", default=None, help="qa: the corpus the keys are retrieved from (JSONL; row = key index)")
    qa.add_argument("--train_data", default=None, help="icl: schema file whose questions are the demonstrations")
    qa.add_argument("--queries", default=None, help="icl: BEIR queries.jsonl with final_decision, joined by query_id "
                    "(when the records carry no final_decision)")
    qa.add_argument("--max_queries", type=int, default=None, help="evaluate the first N targets only")
    qa.add_argument("--max_length", type=int, default=None, help="tokens per LM input, answer included (default 1024, "
                    "as run_lm_score.py); keys are cut, never the answer")
    qa.add_argument("--key_max_length", type=int, default=None, help="tokens kept of each key (default 256, as run_lm_score.py)")
    qa.add_argument("--bm25_backend", default=None, choices=("pyserini", "bm25s", "rank_bm25"), help="default pyserini")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    return p


def _label(name: str) -> str:
    return f"dense:{Path(name).name if Path(name).exists() else name}"


def _file_name(label: str) -> str:
    return label.replace(":", "_").replace("/", "_")


def dense_labels(args) -> list[tuple[str, str]]:
    """``(row label, model)`` of each dense encoder."""
    return list(zip(args.labels or [_label(m) for m in args.model_name_or_path], args.model_name_or_path))


def _check_common(args) -> None:
    if args.k < 1:
        raise UserError(f"--k must be at least 1, got {args.k}")
    if "dense" in args.retrieval_method and not args.model_name_or_path:
        raise UserError("--retrieval_method dense needs --model_name_or_path (an alias or a saved encoder)")
    if args.labels is not None and len(args.labels) != len(args.model_name_or_path):
        raise UserError(f"--labels: {len(args.labels)} labels for {len(args.model_name_or_path)} models")
    if ("fitted" in args.retrieval_method) != (args.fit_data is not None):
        raise UserError("--retrieval_method fitted and --fit_data (a scored train file) go together")
    if args.task == "lrlm":
        given = [f"--{n}" for n in ANSWER_TASK_FLAGS if getattr(args, n) is not None]
        if given:
            raise UserError(f"{given[0]}: only used with --task qa or icl")
        return
    if args.reliability:
        raise UserError(f"--reliability: only for --task lrlm (a scored lrlm file), not --task {args.task}")
    for method in ("privileged", "fitted"):
        if method in args.retrieval_method:
            raise UserError(f"--retrieval_method {method}: only for --task lrlm")
    for name in ("max_queries", "max_length", "key_max_length"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UserError(f"--{name} must be at least 1, got {value}")
    if args.token_budget < (args.max_length or 1024):
        raise UserError(f"--token_budget ({args.token_budget}) must be at least --max_length ({args.max_length or 1024})")


def _check(args, records) -> None:
    if not records:
        raise UserError(f"--eval_data: {args.eval_data} has no records")
    pool = min(len(r["key_ids"]) for r in records)
    if args.k > pool:
        raise UserError(f"--k {args.k} is larger than the smallest candidate pool ({pool} keys)")
    scored = all("key_token_logprobs" in r for r in records)
    if args.reliability and not scored:
        raise UserError("--reliability needs a scored file (python -m llm_embedder.lrlm.teacher)")
    args.fit_records = _fit_records(args, records) if args.fit_data is not None else None  # checked before any work
    if "oracle" in args.retrieval_method and not scored:
        raise UserError("--retrieval_method oracle needs the LM's score of every key alone: pass a scored file "
                        "(python -m llm_embedder.lrlm.teacher)")


def rankings(args, records) -> dict[str, list[list[int]]]:
    """Label -> per-record key ranking, for every method except none."""
    loaders = [(lab, retrievers.load_encoder(m)) for lab, m in dense_labels(args)] \
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
    if "fitted" in args.retrieval_method:
        out["fitted"] = _fitted_ranking(args, records)
    return out


def _feature_ranks(records, encoder) -> dict[str, list[list[int]]]:
    return {"bm25": retrievers.rank_bm25(records), "dense": retrievers.rank_dense(records, encoder)}


def _fit_records(args, records) -> list[dict]:
    """``--fit_data``'s records: scored, and from other source files than the evaluated ones (one line if not)."""
    train, _ = read_lrlm(args.fit_data)
    shared = {r.get("source") for r in train} & {r.get("source") for r in records}
    if shared:
        raise UserError(f"--fit_data {args.fit_data} shares source files with --eval_data ({sorted(shared)[0]}, ...): "
                        "fit on train files only")
    if not all("teacher_scores" in r for r in train):
        raise UserError(f"--fit_data {args.fit_data}: not scored (python -m llm_embedder.lrlm.teacher)")
    return train


def _fitted_ranking(args, records) -> list[list[int]]:
    """Fit the feature ranker on ``--fit_data``'s teacher scores; rank ``records`` with it (coefficients saved)."""
    train = args.fit_records
    encoder = retrievers.load_encoder(args.fit_encoder)()
    model = fitted.fit(train, _feature_ranks(train, encoder), [r["teacher_scores"] for r in train])
    write_json(Path(args.output_dir) / "fitted.json", {"fit_data": str(args.fit_data), "targets": len(train),
                                                        "encoder": args.fit_encoder, "coefficients": fitted.coefficients(model)})
    return fitted.rank(model, records, _feature_ranks(records, encoder))


def _lazy_scorer(load_model):
    """An LMScorer whose model ``load_model()`` loads on first use (never, when every score is known)."""
    class Lazy:
        scorer = None

        def __getattr__(self, name):
            if Lazy.scorer is None:
                from ..lm.scorer import LMScorer

                model, pad_id = load_model()
                Lazy.scorer = LMScorer(model, pad_id=pad_id)
            return getattr(Lazy.scorer, name)
    return Lazy()


def _partial(args, label: str) -> Path:
    return Path(args.output_dir) / f"{_file_name(label)}.k{args.k}.partial.jsonl"


def lm_rows(args, records, meta, label: str, key_sets: list[tuple]) -> list[list[float]]:
    """Per-target token log-probs for one lrlm row: from the scored file when it has them, else from the LM."""
    cached = [_cached(r, s) for r, s in zip(records, key_sets)]
    missing = [i for i, c in enumerate(cached) if c is None]
    if missing:
        from .score import score_key_sets
        from .teacher import prepare_lm

        sub, sets = [records[i] for i in missing], [[key_sets[i]] for i in missing]
        sep = meta["separator_ids"]
        scorer = _lazy_scorer(lambda: (prepare_lm(args.lm, sub, sets, sep, argument="--lm").model, 0))
        res = score_key_sets(sub, sets, sep, scorer, args.token_budget, partial=_partial(args, label),
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
    """The lrlm mode: rows from the scored file or the LM, then the shared outputs."""
    ranks = rankings(args, records)
    rows = {}
    for label in (["none"] if "none" in args.retrieval_method else []) + list(ranks):
        key_sets = [()] * len(records) if label == "none" else [tuple(sorted(r[:args.k])) for r in ranks[label]]
        logprobs = lm_rows(args, records, meta, label, key_sets)
        first, second = metrics.halves(len(records[0]["answer_ids"]))
        rows[label] = [{"query_id": r["query_id"], "keys": list(s), "nll": metrics.nll_of(lp),
                        "nll_first_half": metrics.nll_of(lp, first), "nll_second_half": metrics.nll_of(lp, second)}
                       for r, s, lp in zip(records, key_sets, logprobs)]
    return write_results(args, rows, {"eval_data": str(resolve_data_path(args.eval_data))})


def write_results(args, rows: dict[str, list[dict]], info: dict) -> dict:
    """Every mode's outputs: ``{label}.k{k}.jsonl`` per row, and ``summary.k{k}.json`` (rows, --compare)."""
    out_dir = Path(args.output_dir)
    for label, per_target in rows.items():
        write_records(out_dir / f"{_file_name(label)}.k{args.k}.jsonl", per_target)
    summary_path = out_dir / f"summary.k{args.k}.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {"rows": {}, "compare": {}}
    for label, per_target in rows.items():
        summary["rows"][label] = metrics.summarise_targets(per_target, args.seed)
    for a, b in args.compare:
        try:
            summary["compare"][f"{a} vs {b}"] = metrics.compare_targets(_row_targets(out_dir, args.k, a, rows),
                                                                        _row_targets(out_dir, args.k, b, rows), args.seed)
        except ValueError:
            raise UserError(f"--compare {a} {b}: the two rows cover different targets (evaluate both in one run, "
                            "or with the same --max_queries)") from None
    summary.update(info, task=args.task, lm=args.lm, k=args.k)
    write_json(summary_path, summary)
    return summary


def _check_output_dir(args) -> None:
    """Rows of one task only in one summary (checked before any work)."""
    summary_path = Path(args.output_dir) / f"summary.k{args.k}.json"
    if summary_path.is_file():
        task = json.loads(summary_path.read_text()).get("task", "lrlm")
        if task != args.task:
            raise UserError(f"--output_dir: {summary_path} holds --task {task} results; use another folder for --task {args.task}")


def _row_targets(out_dir: Path, k: int, label: str, rows: dict) -> list[dict]:
    if label in rows:
        return rows[label]
    path = out_dir / f"{_file_name(label)}.k{k}.jsonl"
    if not path.is_file():
        raise UserError(f"--compare: no row {label!r} (evaluate it first, or list it in --retrieval_method)")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def evaluate_answers(args) -> dict:
    """The qa / icl modes: retrieve from the whole pool, build the LM inputs, score (resumable), summarise."""
    from ..convert.lrlm import lm_window
    from ..lm.loading import load_model, load_tokenizer, local_lm_dir
    from . import answer_tasks, corpus_retrieval
    from .score import score_items

    data = answer_tasks.load(args.task, args.eval_data, corpus=args.corpus, train_data=args.train_data,
                             queries=args.queries, max_queries=args.max_queries)
    answer_tasks.check_k(data, args.k, args.retrieval_method)
    max_length, key_max_length = args.max_length or 1024, args.key_max_length or 256
    folder, _, _ = local_lm_dir(args.lm, "--lm")
    window = lm_window(folder)
    if window is not None and max_length > window:
        raise UserError(f"--max_length {max_length} is beyond the LM's {window} positions")
    tokenizer = load_tokenizer(folder, "--lm")
    answer_tasks.plan(data, [[] for _ in data.records], tokenizer, max_length, key_max_length)  # answers fit: checked now
    encoders = {label: resolve_encoder(m, "--model_name_or_path") for label, m in dense_labels(args)}
    ranked: dict[str, list[list[int]]] = {}
    for method in args.retrieval_method:
        kw = dict(task=args.task, seed=args.seed, bm25_backend=args.bm25_backend or "pyserini",
                  positives=data.positives, exclude=data.exclude)
        queries, ids = [r["query"] for r in data.records], [r["query_id"] for r in data.records]
        if method == "none":
            ranked["none"] = [[] for _ in data.records]
        elif method == "dense":
            for label, path in encoders.items():
                ranked[label] = corpus_retrieval.top_rows("dense", queries, ids, data.pool, args.k, encoder_dir=path, **kw)
        else:
            ranked[method] = corpus_retrieval.top_rows(method, queries, ids, data.pool, args.k, **kw)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    scorer = _lazy_scorer(lambda: (load_model(folder, "float32", "--lm"), pad_id))
    known: dict = {}  # sequences another retriever already had scored (bm25, dense and oracle often agree)
    rows, stats = {}, {}
    for label, keys in ranked.items():
        items, stats[label] = answer_tasks.plan(data, keys, tokenizer, max_length, key_max_length)
        logprobs = score_items(items, scorer, args.token_budget, partial=_partial(args, label),
                               model_desc={"path": str(folder), "dtype": "float32"}, desc=label, known=known)
        rows[label] = [answer_tasks.target_row(data, r, k, lp) for r, k, lp in zip(data.records, keys, logprobs)]
    info = {"eval_data": str(resolve_data_path(args.eval_data)), "pool": str(data.pool.path or args.train_data),
            "pool_size": len(data.pool), "targets": len(data.records), "max_length": max_length,
            "key_max_length": key_max_length, "plan_stats": stats,
            "fewer_than_k": {label: sum(len(k) < args.k for k in keys) for label, keys in ranked.items() if label != "none"}}
    return write_results(args, rows, info)


@cli_guard
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _check_common(args)
    _check_output_dir(args)
    resolve_lm(args.lm, "--lm")  # a missing LM package is one line, before anything loads
    for m in args.model_name_or_path:
        resolve_encoder(m, "--model_name_or_path")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.task != "lrlm":
        summary = evaluate_answers(args)
        _print_summary(summary, args.k)
        return 0
    records, meta = read_lrlm(args.eval_data)
    _check(args, records)
    if args.reliability:
        args_methods = [m for m in args.retrieval_method if m in ("random", "bm25", "dense")]
        args.retrieval_method = args_methods
        ranks = rankings(args, records)
        dense = [label for label, _ in dense_labels(args)]
        cross_fit = None
        if "bm25" in ranks and dense:  # the feature ranker cross-fitted by file on first halves
            feature_ranks = {"bm25": ranks["bm25"], "dense": ranks[dense[0]]}
            cross_fit = lambda firsts: fitted.cross_fitted_rankings(records, feature_ranks, firsts)  # noqa: E731
        result = metrics.reliability(records, ranks, args.seed, cross_fit)
        write_json(Path(args.output_dir) / "reliability.json", result)
        _print_rows(result["rows_second_half"], f"reliability (second halves), split-half Spearman {result['spearman_split_half']:.3f}")
        return 0
    _print_summary(evaluate(args, records, meta), args.k)
    return 0


def _print_summary(summary: dict, k: int) -> None:
    _print_rows(summary["rows"], f"k={k}")
    for name, c in summary["compare"].items():
        acc = c.get("accuracy")
        extra = f"; accuracy gain {acc['mean_gain']:+.3f} [{acc['ci95'][0]:+.3f}, {acc['ci95'][1]:+.3f}]" if acc else ""
        print(f"{name}: gain {c['mean_gain_nats']:+.4f} nats, 95% CI [{c['ci95'][0]:+.4f}, {c['ci95'][1]:+.4f}]{extra}")


def _print_rows(rows: dict, title: str) -> None:
    print(title)
    for label, s in rows.items():
        acc = f"  acc {s['accuracy']:.3f} [{s['accuracy_ci95'][0]:.3f}, {s['accuracy_ci95'][1]:.3f}]" if "accuracy" in s else ""
        print(f"  {label:28s} NLL {s['mean_nll']:.4f}  ppl {s['ppl']:.3f}  [{s['ppl_ci95'][0]:.3f}, {s['ppl_ci95'][1]:.3f}]"
              f"{acc}  n={s['targets']}")
