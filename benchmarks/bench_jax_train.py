"""Training throughput: the JAX train step vs our torch training module, same model, batches and lengths, one run.

Both train MiniLM (dropout on, fp32, AdamW) on the same SciFact train batches, drawn and tokenised once by the
JAX data path (``TrainDataset`` + ``TaskBatchSampler`` + ``EmbedderCollator`` padded to length buckets), so
each side gets *identical* padded token arrays. The torch side is ``EmbedderModel`` (the module the torch
trainer optimises: ``DenseEncoder`` + ``compute_loss``) with ``torch.optim.AdamW``; the JAX side is
``TrainStep`` (jit, donated state, optax AdamW). The first JAX step (compilation) and the first torch step are
timed separately and left out of the throughput. Each side runs in its own subprocess (torch, then JAX), so
each one's peak resident memory is its own; on a shared machine the per-CPU-second rate is the steadier
figure (the wall rate depends on what else ran). Reports training examples (queries) per second of wall
and of process CPU and their JAX/torch ratios.

    .venv/bin/python benchmarks/bench_jax_train.py      # writes benchmarks/results/bench_jax_train.json
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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def batches(args):
    """``(loaded JAX encoder, [Batch])``: the same batches for both sides."""
    from llm_embedder.corpus import load_corpus
    from llm_embedder.data.collator import EmbedderCollator
    from llm_embedder.data.dataset import TrainDataArgs, TrainDataset
    from llm_embedder.jax.data import BatchStream, BucketTokenizer
    from llm_embedder.jax.weights import load_encoder

    loaded = load_encoder(args.model, query_max_length=args.query_max_length, key_max_length=args.key_max_length)
    corpus = load_corpus(args.corpus)
    dataset = TrainDataset([args.train_data], corpus=corpus, args=TrainDataArgs(train_group_size=args.group_size), seed=0)
    collator = EmbedderCollator(BucketTokenizer(loaded.tokenizer, {"query": args.query_max_length, "key": args.key_max_length}),
                                tasks=dataset.tasks)
    stream = BatchStream(dataset, collator, args.batch_size, seed=0).epoch(0)
    return loaded, [next(stream) for _ in range(args.steps + 1)]


def loss_params(args):
    from llm_embedder.modeling.losses import LossParams

    return LossParams(cos_temperature=0.05, stable_distill=True, negative_cross_device=False)


def run_torch(args, loaded, data) -> list[float]:
    import torch

    from llm_embedder.modeling.encoder import DenseEncoder
    from llm_embedder.training.model import EmbedderModel

    torch.manual_seed(0)
    encoder = DenseEncoder.from_pretrained(args.model, query_max_length=args.query_max_length, key_max_length=args.key_max_length)
    model = EmbedderModel(encoder, loss_params(args)).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-5, weight_decay=0.0)
    times = []
    for batch in data:
        start = time.perf_counter(), time.process_time()
        out = model({"input_ids": torch.from_numpy(batch.query_ids).long(), "attention_mask": torch.from_numpy(batch.query_mask).long()},
                    {"input_ids": torch.from_numpy(batch.key_ids).long(), "attention_mask": torch.from_numpy(batch.key_mask).long()},
                    None, task=batch.task, group_size=batch.group_size)
        out["loss"].backward()
        optimizer.step()
        optimizer.zero_grad()
        times.append((time.perf_counter() - start[0], time.process_time() - start[1]))
    return times


def run_jax(args, loaded, data) -> list[float]:
    import jax

    from llm_embedder.jax.step import Embedder, StepOptions, TrainStep, make_mesh, make_optimizer

    loaded.model.set_gradient_checkpointing(args.gradient_checkpointing)
    embed = Embedder(loaded.model)
    tx = make_optimizer(embed.params, 2e-5, 100, 0)
    step = TrainStep(embed, tx, make_mesh(1))
    state = step.replicate((embed.params, tx.init(embed.params)))
    from llm_embedder.jax.losses import task_terms

    options = StepOptions(args.group_size, False, task_terms(loss_params(args)))
    times = []
    for i, batch in enumerate(data):
        start = time.perf_counter(), time.process_time()
        state, metrics = step(state, batch.arrays(), options, jax.random.key(i))
        jax.block_until_ready(metrics)
        times.append((time.perf_counter() - start[0], time.process_time() - start[1]))
    return times


def side(args) -> None:
    """Subprocess: one side's step times and peak memory as one JSON line."""
    loaded, data = batches(args)
    times = (run_jax if args.side == "jax" else run_torch)(args, loaded, data)
    print(json.dumps({"times": times, "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="minilm")
    p.add_argument("--train_data", default=str(REPO / "data" / "scifact" / "train.json"))
    p.add_argument("--corpus", default=str(REPO / "data" / "scifact" / "corpus.jsonl"))
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--group_size", type=int, default=2)
    p.add_argument("--query_max_length", type=int, default=64)
    p.add_argument("--key_max_length", type=int, default=256)
    p.add_argument("--steps", type=int, default=4, help="timed steps per side (after one untimed first step)")
    p.add_argument("--gradient_checkpointing", action="store_true", help="JAX: per-layer remat")
    p.add_argument("--side", choices=("torch", "jax"), default=None, help=argparse.SUPPRESS)
    p.add_argument("--output", default=str(REPO / "benchmarks" / "results" / "bench_jax_train.json"))
    args = p.parse_args()
    if args.side:
        return side(args)
    results = {}
    for name in ("torch", "jax"):  # one subprocess each: peak memory per side; same batches (same seed)
        cmd = [sys.executable, __file__, "--side", name] + [a for a in sys.argv[1:] if not a.startswith("--output")]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
        results[name] = json.loads(proc.stdout.strip().splitlines()[-1])
    summary = {}
    for name, r in results.items():
        first, rest = r["times"][0], r["times"][1:]
        wall, cpu = statistics.median(t[0] for t in rest), statistics.median(t[1] for t in rest)
        summary[name] = {"first_step_s": round(first[0], 2), "median_step_wall_s": round(wall, 3),
                         "median_step_cpu_s": round(cpu, 3), "examples_per_s_wall": round(args.batch_size / wall, 3),
                         "examples_per_cpu_s": round(args.batch_size / cpu, 3), "peak_rss_gb": round(r["peak_rss_gb"], 2)}
    summary["ratio_jax_over_torch_wall"] = round(summary["jax"]["examples_per_s_wall"] / summary["torch"]["examples_per_s_wall"], 3)
    summary["ratio_jax_over_torch_cpu"] = round(summary["jax"]["examples_per_cpu_s"] / summary["torch"]["examples_per_cpu_s"], 3)
    import jax
    import torch

    record = {"args": {k: v for k, v in vars(args).items() if k != "side"}, "results": summary,
              "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "load_avg_at_end": os.getloadavg(),
                          "jax": jax.__version__, "torch": torch.__version__,
                          "note": "shared 2-core CPU: other engineers' jobs ran at the same time"}}
    from llm_embedder.schema import write_json

    write_json(args.output, record)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
