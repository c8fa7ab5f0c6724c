"""How good are SmolLM2's teacher scores? Top-1 agreement and MRR of the gold key among 1 gold + 9 BM25 negatives.

For PubMedQA (train split) each question's candidates are scored with the ``qa`` template,
p(answer | abstract, question); for SciFact (train split) with ``query_likelihood``, p(claim | abstract).
Candidates are the gold document plus the top bm25s documents that are not relevant (hard negatives);
BM25's own order over the same ten candidates is reported as a baseline. The scoring itself is the
ordinary ``run_lm_score.py`` CLI, so this measures exactly what training would consume.

    python benchmarks/teacher_quality.py --num_queries 40            # writes benchmarks/results/lm_teacher_quality.json
    python benchmarks/teacher_quality.py --num_queries 40 --datasets scifact --bm25_backend pyserini \
        --output benchmarks/results/lm_teacher_quality_scifact_pyserini.json
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from llm_embedder.corpus import load_corpus  # noqa: E402
from llm_embedder.lm import run as lm_run  # noqa: E402
from llm_embedder.retrieval.bm25 import BACKENDS, BM25Retriever  # noqa: E402
from llm_embedder.schema import read_json_objects, write_json, write_records  # noqa: E402

DATASETS = {  # name -> (template, uses answers)
    "pubmedqa": ("qa", True),
    "scifact": ("query_likelihood", False),
}


def train_queries(folder: Path, n: int) -> list[tuple[dict, list[str]]]:
    """The first ``n`` train queries (qrels order) with their relevant doc ids."""
    queries = {q["_id"]: q for q in read_json_objects(folder / "queries.jsonl")[1]}
    relevant: dict[str, list[str]] = {}
    with open(folder / "qrels" / "train.tsv", encoding="utf-8") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            if int(row["score"]) > 0:
                relevant.setdefault(row["query-id"], []).append(row["corpus-id"])
    return [(queries[qid], docs) for qid, docs in list(relevant.items())[:n]]


def build_candidates(name: str, n: int, negatives: int, work: Path, backend: str = "bm25s") -> tuple[Path, Path, list[list[float]]]:
    """Write the schema file (gold first, then BM25 negatives as corpus rows); return it, the corpus and BM25 scores."""
    folder = REPO / "data" / name
    corpus_path = folder / "corpus.jsonl"
    corpus = load_corpus(corpus_path)
    row_of = corpus.id_to_row()
    picked = train_queries(folder, n)
    bm25 = BM25Retriever(backend, show_progress=False).index(corpus)
    scores, rows = bm25.search([q["text"] for q, _ in picked], k=len(corpus))  # every matching document, best first
    records, bm25_scores = [], []
    for (query, gold_ids), s, r in zip(picked, scores, rows):
        score_of = {int(x): float(v) for x, v in zip(r, s) if x >= 0}  # unmatched documents score 0
        gold = row_of[gold_ids[0]]
        excluded = {row_of[g] for g in gold_ids}
        negs = [int(x) for x in r if x >= 0 and int(x) not in excluded][:negatives]
        record = {"query": query["text"], "query_id": query["_id"], "pos_index": [gold], "neg_index": negs, "task": "qa"}
        if DATASETS[name][1]:
            record["answers"] = query["answers"]
        records.append(record)
        bm25_scores.append([score_of.get(x, 0.0) for x in [gold, *negs]])
    data = write_records(work / f"{name}.{backend}.train.json", records)
    return data, corpus_path, bm25_scores


def agreement(score_lists: list[list[float]]) -> dict:
    """Gold is candidate 0. Its rank is 1 + the candidates scoring higher; top-1 means strictly highest."""
    ranks = [1 + sum(s > scores[0] for s in scores[1:]) for scores in score_lists]
    top1 = [r == 1 and not any(s == scores[0] for s in scores[1:]) for r, scores in zip(ranks, score_lists)]
    return {"top1": float(np.mean(top1)), "mrr": float(np.mean([1.0 / r for r in ranks])), "queries": len(ranks)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num_queries", type=int, default=40)
    p.add_argument("--negatives", type=int, default=9)
    p.add_argument("--model_name_or_path", default="smollm2")
    p.add_argument("--key_max_length", type=int, default=256)
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    p.add_argument("--bm25_backend", default="bm25s", choices=BACKENDS, help="retriever that picks the negatives")
    p.add_argument("--output", default=str(REPO / "benchmarks" / "results" / "lm_teacher_quality.json"))
    args = p.parse_args(argv)
    work = REPO / "benchmarks" / "results" / "tmp" / "teacher_quality"
    work.mkdir(parents=True, exist_ok=True)
    results = {"command": "python benchmarks/teacher_quality.py " + " ".join(argv if argv is not None else sys.argv[1:]),
               "model": args.model_name_or_path, "negatives": f"{args.negatives} top {args.bm25_backend} (k1 0.9, b 0.4) documents that are not relevant",
               "key_max_length": args.key_max_length, "torch_threads": torch.get_num_threads(),
               "datasets": {}}
    for name in args.datasets:
        template = DATASETS[name][0]
        data, corpus, bm25_scores = build_candidates(name, args.num_queries, args.negatives, work, args.bm25_backend)
        started = time.perf_counter()
        lm_run.main(["--eval_data", str(data), "--corpus", str(corpus), "--model_name_or_path", args.model_name_or_path,
                     "--template", template, "--save_name", "teacher", "--key_max_length", str(args.key_max_length)])
        seconds = time.perf_counter() - started
        scored = read_json_objects(work / f"{name}.{args.bm25_backend}.train.scored.teacher.json")[1]
        meta = json.loads((work / f"{name}.{args.bm25_backend}.train.scored.teacher.meta.json").read_text())
        results["datasets"][name] = {
            "template": template, "lm": agreement([r["teacher_scores"] for r in scored]),
            "bm25_on_same_candidates": agreement(bm25_scores),
            "pairs": meta["counts"]["pairs"], "tokens": meta["counts"]["total_tokens"], "seconds": round(seconds, 1),
        }
        print(name, json.dumps(results["datasets"][name]), flush=True)
    write_json(args.output, results)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
