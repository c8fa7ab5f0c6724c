"""Recompute an eval_retrieval summary's metrics with plain pytrec_eval from the run file and BEIR qrels.

Independent of our code path: the qrels come straight from the BEIR ``qrels/*.tsv`` (doc ids, not our
records' row numbers), the run from the TREC file eval_retrieval wrote, and the measures from
``pytrec_eval.RelevanceEvaluator``; the script prints both numbers and exits 1 on any difference > 1e-9.

    .venv/bin/python benchmarks/check_run_metrics.py outputs/retrieval/test.run.bm25.trec \
        data/scifact/qrels/test.tsv outputs/retrieval/test.eval.bm25.json
"""
from __future__ import annotations

import json
import sys

import pytrec_eval

MEASURES = {"ndcg": "ndcg_cut", "recall": "recall", "map": "map_cut"}


def main(run_path: str, qrels_tsv: str, summary_path: str) -> int:
    qrels: dict[str, dict[str, int]] = {}
    with open(qrels_tsv, encoding="utf-8") as f:
        next(f)  # header: query-id corpus-id score
        for line in f:
            qid, docid, score = line.split("\t")
            qrels.setdefault(qid, {})[docid] = int(score)
    with open(run_path, encoding="utf-8") as f:
        run = pytrec_eval.parse_run(f)
    ours = json.load(open(summary_path, encoding="utf-8"))["metrics"]
    worst = 0.0
    for key, value in ours.items():
        name, k = key.split("@")
        if name not in MEASURES:
            continue  # mrr@k needs a cut run; covered by tests/test_metrics.py
        measure = f"{MEASURES[name]}_{k}"
        scores = pytrec_eval.RelevanceEvaluator(qrels, {f"{MEASURES[name]}.{k}"}).evaluate(run)
        oracle = sum(scores.get(q, {}).get(measure, 0.0) for q in qrels) / len(qrels)
        worst = max(worst, abs(oracle - value))
        print(f"{key:12s} ours {value:.6f}   pytrec_eval {oracle:.6f}   diff {oracle - value:+.1e}")
    print(f"queries in qrels: {len(qrels)}, in run: {len(run)}; largest difference {worst:.1e}")
    return 0 if worst <= 1e-9 else 1


if __name__ == "__main__":
    if len(sys.argv) != 4:
        raise SystemExit(__doc__)
    raise SystemExit(main(*sys.argv[1:]))
