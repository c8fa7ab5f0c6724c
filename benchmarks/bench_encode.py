"""Encoding throughput: our ``DenseEncoder.encode`` vs ``SentenceTransformer.encode``, same model and texts.

Both load the same MiniLM folder (mean pooling, normalised, max length 256) and encode the same
``--num_docs`` SciFact documents (title + text) at the same batch size, alternating ``--rounds`` times
(ABBA) so background load hits both alike; the median docs/s (wall) and docs per process-CPU-second
(steadier on a shared machine) of each and their ratios are reported, plus the
largest difference between the two sets of vectors (they must be the same embedding).

    .venv/bin/python benchmarks/bench_encode.py          # writes benchmarks/results/bench_encode.json
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402

from llm_embedder.corpus import load_corpus  # noqa: E402
from llm_embedder.resources import resolve_encoder  # noqa: E402
from llm_embedder.schema import write_json  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="minilm")
    p.add_argument("--corpus", default="llm-embedder:scifact/corpus.jsonl")
    p.add_argument("--num_docs", type=int, default=500)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--max_length", type=int, default=256)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--output", default=str(REPO / "benchmarks" / "results" / "bench_encode.json"))
    args = p.parse_args()

    import sentence_transformers
    import torch
    from sentence_transformers import SentenceTransformer

    from llm_embedder.modeling.encoder import DenseEncoder

    texts = load_corpus(args.corpus, key_template="{title} {text}").texts[: args.num_docs]
    model_dir = resolve_encoder(args.model)
    ours = DenseEncoder.from_pretrained(model_dir, pooling_method="mean", normalize=True,
                                        query_max_length=args.max_length, key_max_length=args.max_length)
    st = SentenceTransformer(str(model_dir), device="cpu", local_files_only=True)
    st.max_seq_length = args.max_length
    systems = {
        "llm_embedder.DenseEncoder.encode": lambda: ours.encode(texts, side="key", batch_size=args.batch_size, show_progress=False),
        "SentenceTransformer.encode": lambda: st.encode(texts, batch_size=args.batch_size, normalize_embeddings=True,
                                                        convert_to_numpy=True, show_progress_bar=False),
    }
    times = {name: [] for name in systems}
    cpu_times = {name: [] for name in systems}
    vectors = {}
    for r in range(args.rounds):
        for name, run in (systems.items() if r % 2 == 0 else reversed(systems.items())):  # ABBA order
            t, c = time.perf_counter(), time.process_time()
            vectors[name] = np.asarray(run(), dtype=np.float32)
            times[name].append(time.perf_counter() - t)
            cpu_times[name].append(time.process_time() - c)
            print(f"round {r}: {name:36s} {len(texts) / times[name][-1]:6.2f} docs/s wall, "
                  f"{len(texts) / cpu_times[name][-1]:6.2f} docs per CPU-second", flush=True)
    ours_name, st_name = list(systems)
    docs_per_s = {name: len(texts) / statistics.median(t) for name, t in times.items()}
    docs_per_cpu_s = {name: len(texts) / statistics.median(t) for name, t in cpu_times.items()}
    diff = float(np.abs(vectors[ours_name] - vectors[st_name]).max())
    out = {"benchmark": "encode throughput, MiniLM, SciFact docs", "docs": len(texts), "batch_size": args.batch_size,
           "max_length": args.max_length, "rounds": args.rounds, "torch_threads": torch.get_num_threads(),
           "docs_per_s": {k: round(v, 2) for k, v in docs_per_s.items()},
           "docs_per_cpu_s": {k: round(v, 2) for k, v in docs_per_cpu_s.items()},
           "seconds_all_rounds": {k: [round(x, 2) for x in v] for k, v in times.items()},
           "cpu_seconds_all_rounds": {k: [round(x, 2) for x in v] for k, v in cpu_times.items()},
           "ratio_ours_over_sentence_transformers": round(docs_per_s[ours_name] / docs_per_s[st_name], 3),
           "cpu_ratio_ours_over_sentence_transformers": round(docs_per_cpu_s[ours_name] / docs_per_cpu_s[st_name], 3),
           "max_abs_vector_difference": diff,
           "versions": {"torch": torch.__version__, "sentence_transformers": sentence_transformers.__version__},
           "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "loadavg_at_end": os.getloadavg()},
           "command": " ".join(sys.argv)}
    write_json(args.output, out)
    print(f"ours / sentence-transformers = {out['ratio_ours_over_sentence_transformers']:.3f} wall, "
          f"{out['cpu_ratio_ours_over_sentence_transformers']:.3f} CPU "
          f"(max |diff| {diff:.2e}); wrote {args.output}")


if __name__ == "__main__":
    main()
