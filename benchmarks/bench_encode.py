"""Encoding throughput: our ``DenseEncoder.encode`` (torch, and optionally ONNX Runtime / torch.compile) vs
``SentenceTransformer.encode``, same model and texts.

Every side loads the same MiniLM folder (mean pooling, normalised, max length 256) and encodes the same
``--num_docs`` SciFact documents (title + text) at the same batch size, in one process, alternating over
``--rounds`` (A B C, C B A, ...) so background load hits all alike. Reported per side: the median docs/s (wall)
and docs per process-CPU-second (steadier on a shared machine), the ratios to sentence-transformers, and the
largest difference of its vectors from sentence-transformers' (a ratio counts only when that is <= 1e-5).
One-off costs (the ONNX export into a fresh cache, packing the oneDNN weights, torch.compile's first call) are
timed apart and reported.

``--profile_docs N`` then profiles our torch path on the first N documents with torch.profiler (and the ONNX
Runtime side with its own per-node profiler) and writes the top operators by self CPU time to
``benchmarks/results/bench_encode_profile.txt``: where the time goes.

    .venv/bin/python benchmarks/bench_encode.py          # writes benchmarks/results/bench_encode.json
    .venv/bin/python benchmarks/bench_encode.py --num_docs 300 --rounds 4 --backends torch onnxruntime onednn
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
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

ST = "SentenceTransformer.encode"
OURS = "llm_embedder.DenseEncoder.encode"
NAMES = {"torch": OURS, "onnxruntime": f"{OURS} --encode_backend onnxruntime",
         "onednn": f"{OURS} --encode_backend onednn", "compile": f"{OURS} + torch.compile(dynamic=True)"}
TOLERANCE = 1e-5


def build_sides(args, texts, model_dir, export_dir):
    """``({name: encode()}, {name: one-off seconds})`` for sentence-transformers and each requested backend."""
    import torch
    from sentence_transformers import SentenceTransformer

    from llm_embedder.modeling.backends import with_backend
    from llm_embedder.modeling.encoder import DenseEncoder

    ours = DenseEncoder.from_pretrained(model_dir, pooling_method="mean", normalize=True,
                                        query_max_length=args.max_length, key_max_length=args.max_length)
    st = SentenceTransformer(str(model_dir), device="cpu", local_files_only=True)
    st.max_seq_length = args.max_length
    sides = {ST: lambda: st.encode(texts, batch_size=args.batch_size, normalize_embeddings=True,
                                   convert_to_numpy=True, show_progress_bar=False)}
    one_off = {}
    for backend in args.backends:
        encoder = ours
        if backend in ("onnxruntime", "onednn"):
            encoder = with_backend(ours, backend, cache_dir=export_dir)
        elif backend == "compile":
            encoder = DenseEncoder(torch.compile(ours.model, dynamic=True), ours.tokenizer, pooling_method="mean",
                                   normalize=True, query_max_length=args.max_length, key_max_length=args.max_length)
        if backend != "torch":  # the export / packing / compilation, timed on its own (a short warm-up encode)
            t = time.perf_counter()
            encoder.encode(texts[:4], side="key", batch_size=args.batch_size, show_progress=False)
            one_off[NAMES[backend]] = round(time.perf_counter() - t, 2)
        sides[NAMES[backend]] = (lambda e: lambda: e.encode(texts, side="key", batch_size=args.batch_size,
                                                            show_progress=False))(encoder)
    return sides, one_off, ours


def profile(args, texts, ours, export_dir) -> str:
    """Top operators by self CPU time: torch.profiler on our torch path, ONNX Runtime's node profiler on its graph."""
    import torch
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    texts = texts[: args.profile_docs]
    lines = [f"# where the time goes: {len(texts)} SciFact docs, batch {args.batch_size}, max length "
             f"{args.max_length}, {torch.get_num_threads()} threads (machine load {os.getloadavg()[0]:.1f} at start)", ""]
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        ours.encode(texts, side="key", batch_size=args.batch_size, show_progress=False)
    lines += ["## torch: DenseEncoder.encode (torch.profiler, sorted by self CPU time)", "",
              prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15)]
    if "onednn" in args.backends:
        from llm_embedder.modeling.backends import with_backend

        encoder = with_backend(ours, "onednn")
        encoder.encode(texts[:2], side="key", show_progress=False)  # fuse before profiling
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            encoder.encode(texts, side="key", batch_size=args.batch_size, show_progress=False)
        lines += ["", "## torch --encode_backend onednn (torch.profiler, sorted by self CPU time)", "",
                  prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12)]
    if "onnxruntime" in args.backends:
        from llm_embedder.modeling.onnx_backend import OnnxRuntimeEncoder

        encoder = OnnxRuntimeEncoder(ours, cache_dir=export_dir)  # the graph build_sides exported

        def profiled_session(path):
            options = encoder.ort.SessionOptions()
            options.intra_op_num_threads = encoder.threads
            options.enable_profiling = True
            options.profile_file_prefix = str(Path(export_dir) / "ort_profile")
            return encoder.ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

        encoder._new_session = profiled_session
        encoder.encode(texts, side="key", batch_size=args.batch_size, show_progress=False)
        session = encoder._sessions[id(ours.model)][0]
        per_op = collections.Counter()
        for event in json.loads(Path(session.end_profiling()).read_text()):
            if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
                per_op[event["args"]["op_name"]] += event["dur"]
        total = sum(per_op.values()) or 1
        lines += ["", f"## onnxruntime: {encoder.exports['key'].parent.name} (ONNX Runtime node profiler, kernel time; "
                  "includes the probe batch)", "", f"{'operator':28s} {'seconds':>8s} {'share':>7s}"]
        lines += [f"{op:28s} {us / 1e6:8.3f} {100 * us / total:6.1f}%" for op, us in per_op.most_common(12)]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="minilm")
    p.add_argument("--corpus", default="llm-embedder:scifact/corpus.jsonl")
    p.add_argument("--num_docs", type=int, default=500)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--max_length", type=int, default=256)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--backends", nargs="+", choices=sorted(NAMES), default=["torch", "onnxruntime", "onednn"],
                   help="our sides (compile: torch.compile of the transformer, an experiment, not a product option)")
    p.add_argument("--profile_docs", type=int, default=64, help="0: no profile")
    p.add_argument("--output", default=str(REPO / "benchmarks" / "results" / "bench_encode.json"))
    p.add_argument("--profile_output", default=str(REPO / "benchmarks" / "results" / "bench_encode_profile.txt"))
    args = p.parse_args()

    import sentence_transformers
    import torch

    texts = load_corpus(args.corpus, key_template="{title} {text}").texts[: args.num_docs]
    model_dir = resolve_encoder(args.model)
    export_dir = tempfile.mkdtemp(prefix="bench_encode_onnx_")  # a fresh cache: the export is timed every run
    sides, one_off, ours = build_sides(args, texts, model_dir, export_dir)
    times = {name: [] for name in sides}
    cpu_times = {name: [] for name in sides}
    vectors = {}
    load_start = os.getloadavg()
    for r in range(args.rounds):
        for name, run in (list(sides.items()) if r % 2 == 0 else list(reversed(sides.items()))):
            t, c = time.perf_counter(), time.process_time()
            vectors[name] = np.asarray(run(), dtype=np.float32)
            times[name].append(time.perf_counter() - t)
            cpu_times[name].append(time.process_time() - c)
            print(f"round {r}: {name:62s} {len(texts) / times[name][-1]:6.2f} docs/s wall, "
                  f"{len(texts) / cpu_times[name][-1]:6.2f} docs per CPU-second", flush=True)
    docs_per_s = {name: len(texts) / statistics.median(t) for name, t in times.items()}
    docs_per_cpu_s = {name: len(texts) / statistics.median(t) for name, t in cpu_times.items()}
    diff = {name: float(np.abs(v - vectors[ST]).max()) for name, v in vectors.items() if name != ST}
    ratio = {name: round(docs_per_s[name] / docs_per_s[ST], 3) for name in diff}
    cpu_ratio = {name: round(docs_per_cpu_s[name] / docs_per_cpu_s[ST], 3) for name in diff}
    out = {"benchmark": "encode throughput, MiniLM, SciFact docs", "docs": len(texts), "batch_size": args.batch_size,
           "max_length": args.max_length, "rounds": args.rounds, "torch_threads": torch.get_num_threads(),
           "docs_per_s": {k: round(v, 2) for k, v in docs_per_s.items()},
           "docs_per_cpu_s": {k: round(v, 2) for k, v in docs_per_cpu_s.items()},
           "seconds_all_rounds": {k: [round(x, 2) for x in v] for k, v in times.items()},
           "cpu_seconds_all_rounds": {k: [round(x, 2) for x in v] for k, v in cpu_times.items()},
           "ratio_over_sentence_transformers": ratio, "cpu_ratio_over_sentence_transformers": cpu_ratio,
           "max_abs_vector_difference_from_sentence_transformers": diff,
           "ratio_counts": {name: d <= TOLERANCE for name, d in diff.items()},
           "one_off_seconds": one_off,
           # the torch side under the names earlier results used
           "ratio_ours_over_sentence_transformers": ratio[OURS] if OURS in ratio else None,
           "cpu_ratio_ours_over_sentence_transformers": cpu_ratio[OURS] if OURS in cpu_ratio else None,
           "versions": {"torch": torch.__version__, "sentence_transformers": sentence_transformers.__version__,
                        **_onnxruntime_version(args.backends)},
           "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "loadavg_at_start": load_start,
                       "loadavg_at_end": os.getloadavg()},
           "command": " ".join(sys.argv)}
    write_json(args.output, out)
    for name in diff:
        print(f"{name} / sentence-transformers = {ratio[name]:.3f} wall, {cpu_ratio[name]:.3f} CPU "
              f"(max |diff| {diff[name]:.2e}{'' if diff[name] <= TOLERANCE else ', does NOT count'})")
    print(f"wrote {args.output}")
    if args.profile_docs:
        Path(args.profile_output).write_text(profile(args, texts, ours, export_dir))
        print(f"wrote {args.profile_output}")
    shutil.rmtree(export_dir, ignore_errors=True)


def _onnxruntime_version(backends) -> dict:
    if "onnxruntime" not in backends:
        return {}
    import onnxruntime

    return {"onnxruntime": onnxruntime.__version__}


if __name__ == "__main__":
    main()
