"""BM25 backends side by side on SciFact test: index time, queries/s and nDCG@10, in one process.

Each backend indexes the same key texts (title + text, k1 0.9, b 0.4) into a fresh cache folder and
answers the same 300 test queries (top 100) ``--rounds`` times; the median search time is reported with
ratios to pyserini, as wall time and as process CPU time (all threads, the JVM's included; on a shared
machine the CPU time is the steadier of the two). The JVM start and pyserini's import (it pulls in torch
and transformers) are paid once per process and timed apart. Pyserini searches with ``--threads`` Java
threads; bm25s and rank-bm25 are single-threaded Python/numpy.

    .venv/bin/python benchmarks/bench_bm25.py            # writes benchmarks/results/bench_bm25.json
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from llm_embedder.corpus import load_corpus  # noqa: E402
from llm_embedder.retrieval.bm25 import BM25Retriever, _import_lucene_searcher, start_jvm  # noqa: E402
from llm_embedder.retrieval.evaluate import positive_rows, query_ids, score_topk  # noqa: E402
from llm_embedder.schema import read_records, write_json  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--eval_data", default="llm-embedder:scifact/test.json")
    p.add_argument("--corpus", default="llm-embedder:scifact/corpus.jsonl")
    p.add_argument("--backends", nargs="+", default=["pyserini", "bm25s", "rank_bm25"])
    p.add_argument("--hits", type=int, default=100)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--output", default=str(REPO / "benchmarks" / "results" / "bench_bm25.json"))
    args = p.parse_args()

    corpus = load_corpus(args.corpus, key_template="{title} {text}")
    rf = read_records(args.eval_data, purpose="eval", corpus_size=len(corpus))
    queries = [r["query"] for r in rf.records]
    qids, pos = query_ids(rf), positive_rows(rf, corpus)
    results = {}
    if "pyserini" in args.backends:
        t = time.perf_counter()
        start_jvm()
        results["jvm_start_s"] = round(time.perf_counter() - t, 3)
        t, c = time.perf_counter(), time.process_time()
        _import_lucene_searcher()  # pyserini's search module imports torch and transformers: once per process
        results["pyserini_import_s"] = round(time.perf_counter() - t, 3)
        results["pyserini_import_cpu_s"] = round(time.process_time() - c, 3)
    with tempfile.TemporaryDirectory() as tmp:
        for backend in args.backends:
            retriever = BM25Retriever(backend, k1=0.9, b=0.4, cache_dir=Path(tmp) / backend, threads=args.threads,
                                      show_progress=False)
            t, c = time.perf_counter(), time.process_time()
            retriever.index(corpus)
            index_s, index_cpu_s = time.perf_counter() - t, time.process_time() - c
            times, cpu_times = [], []
            for _ in range(args.rounds):
                t, c = time.perf_counter(), time.process_time()
                scores, rows = retriever.search(queries, args.hits)
                times.append(time.perf_counter() - t)
                cpu_times.append(time.process_time() - c)
            search_s, search_cpu_s = statistics.median(times), statistics.median(cpu_times)
            metrics = score_topk(rf, qids, pos, corpus, scores, rows, ["ndcg", "recall"], [10, 100], backend)["metrics"]
            results[backend] = {"index_s": round(index_s, 3), "index_cpu_s": round(index_cpu_s, 3),
                                "search_s": round(search_s, 3), "search_cpu_s": round(search_cpu_s, 3),
                                "search_s_all_rounds": [round(x, 3) for x in times],
                                "queries_per_s": round(len(queries) / search_s, 1),
                                "ndcg@10": round(metrics["ndcg@10"], 4), "recall@100": round(metrics["recall@100"], 4)}
            print(f"{backend:10s} index {index_s:6.2f}s (cpu {index_cpu_s:6.2f}s)  search {search_s:6.2f}s "
                  f"(cpu {search_cpu_s:6.2f}s)  "
                  f"{len(queries) / search_s:8.1f} q/s  nDCG@10 {metrics['ndcg@10']:.4f}", flush=True)
    base = args.backends[0]
    for backend in args.backends:
        results[backend]["queries_per_s_vs_" + base] = round(results[backend]["queries_per_s"] / results[base]["queries_per_s"], 3)
        results[backend]["index_time_vs_" + base] = round(results[backend]["index_s"] / results[base]["index_s"], 3)
    out = {"benchmark": "bm25 backends, SciFact test", "docs": len(corpus), "queries": len(queries), "hits": args.hits,
           "rounds": args.rounds, "threads": args.threads, "k1": 0.9, "b": 0.4, "results": results,
           "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                       "loadavg_at_end": os.getloadavg()}, "command": " ".join(sys.argv)}
    write_json(args.output, out)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
