"""Peak memory and step time of a training step with and without GradCache, batch 32 / 128 / 512.

Each configuration runs in a fresh subprocess (so every peak RSS is its own): it loads MiniLM (the
``minilm`` alias), builds the trainer's module (``EmbedderModel``: contrastive InfoNCE over all keys of
the batch, 1 positive + 1 negative per query, texts cut to ``--max_length`` tokens) and runs ``--steps`` SGD steps after one
warm-up step. Reported per configuration: peak RSS of the process, peak RSS above the RSS after loading
the model (the step's own memory: activations, gradients, cached embeddings), CUDA peak memory when a
GPU is used, and the median step time. GradCache embeds in chunks of ``--chunk`` rows.

    nice -n 10 python benchmarks/bench_grad_cache.py            # -> benchmarks/results/bench_grad_cache.json

Goals of issue 12: with GradCache, batch 512 needs at most 1.5x the memory of batch 32, and its step
time is at most 1.3x that of the plain step (where the plain step fits at all).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "bench_grad_cache.json"
TOY = Path(__file__).resolve().parents[1] / "data" / "llm_embedder_toy" / "qa.json"
GROUP = 2


def rss_mib() -> float:
    """Current resident set size of this process (Linux /proc), MiB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def texts(n: int) -> list[str]:
    """``n`` short texts cycled from the toy QA file (queries, positives and negatives)."""
    pool = []
    for line in TOY.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        pool += [row["query"], *row.get("pos", []), *row.get("neg", [])]
    return [f"{i} {pool[i % len(pool)]}" for i in range(n)]


def one_config(batch: int, chunk: int, steps: int, threads: int, max_length: int) -> dict:
    """Run in the child process: load, warm up, time ``steps`` steps; return the measurements."""
    import torch

    from llm_embedder.modeling.encoder import DenseEncoder
    from llm_embedder.modeling.losses import LossParams
    from llm_embedder.training.model import EmbedderModel

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    encoder = DenseEncoder.from_pretrained("minilm", query_max_length=max_length, key_max_length=max_length)
    model = EmbedderModel(encoder, LossParams(contrastive_weight=1.0, distill_weight=0.0, negative_cross_device=False),
                          grad_cache_chunk_size=chunk).to(device).train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    all_texts = texts(batch * (1 + GROUP))
    query_inputs = encoder.tokenize(all_texts[:batch], "query")
    key_inputs = encoder.tokenize(all_texts[batch:], "key")
    loaded_rss = rss_mib()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        cuda_base = torch.cuda.memory_allocated()
    times = []
    for step in range(steps + 1):
        start = time.perf_counter()
        out = model(query_inputs=query_inputs, key_inputs=key_inputs, group_size=GROUP)
        out["loss"].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step:  # step 0 is the warm-up
            times.append(time.perf_counter() - start)
    result = {"batch": batch, "grad_cache_chunk": chunk, "texts_per_step": batch * (1 + GROUP),
              "peak_rss_mib": round(peak_rss_mib(), 1), "rss_after_load_mib": round(loaded_rss, 1),
              "step_peak_over_load_mib": round(peak_rss_mib() - loaded_rss, 1),
              "step_seconds_median": round(statistics.median(times), 3), "step_seconds": [round(t, 3) for t in times],
              "loss": round(float(out["loss"].detach()), 4), "device": str(device), "threads": threads,
              "max_length": max_length}
    if device.type == "cuda":
        result["cuda_peak_over_load_mib"] = round((torch.cuda.max_memory_allocated() - cuda_base) / 2**20, 1)
    return result


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[32, 128, 512])
    parser.add_argument("--chunk", type=int, default=32, help="GradCache chunk size (rows)")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per configuration (after one warm-up)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max_length", type=int, default=16, help="tokens per query and key text")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--child", nargs=2, type=int, metavar=("BATCH", "CHUNK"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(one_config(args.child[0], args.child[1], args.steps, args.threads, args.max_length)))
        return {}
    runs = []
    for batch in args.batches:
        for chunk in (0, args.chunk):
            cmd = [sys.executable, __file__, "--child", str(batch), str(chunk), "--steps", str(args.steps),
                   "--threads", str(args.threads), "--max_length", str(args.max_length)]
            env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
            started = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                raise SystemExit(f"batch {batch} chunk {chunk} failed:\n{proc.stderr[-3000:]}")
            run = json.loads(proc.stdout.strip().splitlines()[-1])
            run["wall_seconds"] = round(time.perf_counter() - started, 1)
            runs.append(run)
            print(json.dumps(run), flush=True)
    by = {(r["batch"], r["grad_cache_chunk"]): r for r in runs}
    small, large = min(args.batches), max(args.batches)
    summary = {
        "gc_peak_rss_ratio_large_vs_small": round(by[large, args.chunk]["peak_rss_mib"] / by[small, args.chunk]["peak_rss_mib"], 3),
        "gc_step_memory_ratio_large_vs_small": round(by[large, args.chunk]["step_peak_over_load_mib"]
                                                     / max(by[small, args.chunk]["step_peak_over_load_mib"], 1.0), 3),
        "plain_step_memory_ratio_large_vs_small": round(by[large, 0]["step_peak_over_load_mib"]
                                                        / max(by[small, 0]["step_peak_over_load_mib"], 1.0), 3),
        "gc_time_overhead": {b: round(by[b, args.chunk]["step_seconds_median"] / by[b, 0]["step_seconds_median"], 3)
                             for b in args.batches},
    }
    report = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "runs": runs, "summary": summary,
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                          "load_average_at_end": os.getloadavg()}}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.output.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    tmp.replace(args.output)
    print(json.dumps(summary, indent=2))
    return report


if __name__ == "__main__":
    main()
