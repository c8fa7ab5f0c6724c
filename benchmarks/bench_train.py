"""Training throughput: our trainer's step vs sentence-transformers' on the same work, in one process.

Both sides train the same MiniLM folder (fp32, CPU, same torch thread count) on the same
(query, positive, negative) rows: SciFact training queries, their first positive document and one
random corpus document as negative (seeded), every text truncated to ``--max_length`` (queries too).

* ours: ``EmbedderModel`` (the module ``run_dense.py``'s trainer optimises) around
  ``DenseEncoder.from_pretrained(..., pooling_method="mean", normalize=True)`` with the InfoNCE loss
  (``cos_temperature=0.05``, in-batch negatives), batches built by ``EmbedderCollator`` from the texts
  inside the timed step (tokenisation included, as in real training), each batch embedded in groups of
  similar length as ``run_dense.py`` does (``--split_batch_by_length``; ``--no_split`` turns it off),
  attention dropout by ``modeling/attention_dropout.py`` as ``run_dense.py`` does on CPU
  (``--fast_attention_dropout``; ``--torch_attention_dropout`` uses torch's own, as theirs does),
  ``torch.optim.AdamW(fused=True)`` (Hugging Face's default optimiser with torch >= 2.8, which both our
  trainer and sentence-transformers' trainer use).
* theirs: ``SentenceTransformer(folder)`` with ``losses.MultipleNegativesRankingLoss`` (scale 20 = 1/0.05),
  features tokenised with ``model.tokenize`` inside the timed step, the same fused AdamW.

``--config_overrides 'attention_probs_dropout_prob=0'`` changes both models' config alike (Hugging Face
``run_mlm.py`` syntax): attention dropout is what keeps BERT training on CPU off the fused attention kernel.

One warm-up step per side is excluded; then ``--rounds`` rounds of ``--steps`` steps per side, alternating
A B / B A, both sides seeing the same batches in the same order. Reported per side: median seconds per
step (wall) and process CPU-seconds per step (``time.process_time``), examples/s, and the ratio
ours/theirs of examples per second (> 1: ours faster).

GEMM peak and FLOP count. A few ``N x N @ N x N`` fp32 ``torch.matmul`` (2 N^3 FLOP each) time the
machine's dense GEMM rate, before the first round and after every round (the rate drifts on a shared machine);
each side's share of the peak is its analytic FLOP/s over the median of those measurements, and per round over
the mean of the measurements on either side of that round. FLOP per step
are counted on PADDED tokens (what the kernels compute; both sides pad to the batch's longest text, so the
count is the same for both), for each tokenised batch (queries, and positive+negative keys) of B rows × T:

    forward  = 2 * P_mm * B * T  +  L * 4 * B * T^2 * d     (P_mm = L * (4 d^2 + 2 d d_ff): the Q,K,V,O and
                                                             FFN weight matrices; attention: QK^T and AV)
    training = 3 * forward                                  (backward ≈ 2 × forward)

Embedding look-ups, layer norms, softmax, biases, the loss and the optimiser are left out (small).
Non-pad token counts are recorded too.

    .venv/bin/python benchmarks/bench_train.py          # writes benchmarks/results/bench_train.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from llm_embedder.corpus import load_corpus  # noqa: E402
from llm_embedder.io import write_json  # noqa: E402
from llm_embedder.resources import resolve_encoder  # noqa: E402


def rows(args, n: int) -> list[tuple[str, str, str]]:
    """``n`` seeded (query, positive, negative) text triples from SciFact train + corpus."""
    corpus = load_corpus(args.corpus, key_template="{title} {text}").texts
    with open(args.train_data, encoding="utf-8") as f:
        records = [json.loads(line) for line in f if line.strip()]
    rng = random.Random(args.seed)
    rng.shuffle(records)
    out = []
    for rec in records[:n]:
        pos = rec["pos_index"][0]
        neg = rng.randrange(len(corpus))
        while neg in rec["pos_index"]:
            neg = rng.randrange(len(corpus))
        out.append((rec["query"], corpus[pos], corpus[neg]))
    if len(out) < n:
        raise SystemExit(f"only {len(out)} training queries, need {n}")
    return out


def gemm_peak(n: int, reps: int) -> float:
    """Median fp32 FLOP/s of ``n x n @ n x n`` (one warm-up excluded)."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.matmul(a, b)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        torch.matmul(a, b)
        times.append(time.perf_counter() - t)
    return 2 * n ** 3 / statistics.median(times)


def round_shares(times: list[float], flops: list[float], peaks: list[float], steps: int) -> list[float]:
    """Each round's share of the GEMM peak: the side's FLOP/s in that round over the mean of the peak measured
    just before and just after it (a drifting machine moves both alike)."""
    shares = []
    for r in range(len(times) // steps):
        seconds, done = sum(times[r * steps:(r + 1) * steps]), sum(flops[r * steps:(r + 1) * steps])
        shares.append(round(done / seconds / ((peaks[r] + peaks[r + 1]) / 2), 3))
    return shares


def write_profile(path: str, step, batch, args) -> None:
    """Profile one step of ``step`` and write the top operators by self CPU time (where the time goes)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step(batch)
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25)
    header = (f"# one training step of ours (torch.profiler, self CPU time; both threads' time summed)\n"
              f"# {' '.join(sys.argv)}\n# config_overrides={args.config_overrides} split_batch_by_length={not args.no_split} "
              f"fast_attention_dropout={not args.torch_attention_dropout}\n")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(header + table + "\n", encoding="utf-8")
    print(f"wrote the profile to {path}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="minilm")
    p.add_argument("--corpus", default="llm-embedder:scifact/corpus.jsonl")
    p.add_argument("--train_data", default=str(REPO / "data" / "scifact" / "train.json"))
    p.add_argument("--steps", type=int, default=3, help="timed steps per side per round")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--max_length", type=int, default=256)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--lr", type=float, default=2e-5)
    p.add_argument("--gemm_size", type=int, default=2048)
    p.add_argument("--gemm_reps", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--config_overrides", default=None, help="applied to BOTH models' configs, e.g. attention_probs_dropout_prob=0")
    p.add_argument("--bf16", action="store_true", help="both sides run forward under torch.autocast('cpu', bfloat16), as "
                                                       "--bf16 does in both trainers (weights and optimiser stay fp32)")
    p.add_argument("--no_split", action="store_true", help="ours embeds each batch as one padded batch")
    p.add_argument("--torch_attention_dropout", action="store_true",
                   help="ours uses torch's attention dropout (run_dense.py --fast_attention_dropout false)")
    p.add_argument("--profile", default=None, help="also profile one step of ours with torch.profiler and write the "
                                                   "top operators by self CPU time to this file")
    p.add_argument("--output", default=str(REPO / "benchmarks" / "results" / "bench_train.json"))
    args = p.parse_args()

    import sentence_transformers
    import torch
    from sentence_transformers import SentenceTransformer, losses

    from llm_embedder.data.collator import EmbedderCollator
    from llm_embedder.modeling.encoder import DenseEncoder
    from llm_embedder.modeling.losses import LossParams
    from llm_embedder.training.model import EmbedderModel

    if args.threads:
        torch.set_num_threads(args.threads)
    n_batches = 1 + args.rounds * args.steps
    data = rows(args, n_batches * args.batch_size)
    batches = [data[i * args.batch_size:(i + 1) * args.batch_size] for i in range(n_batches)]
    model_dir = resolve_encoder(args.model)

    torch.manual_seed(args.seed)
    encoder = DenseEncoder.from_pretrained(model_dir, pooling_method="mean", normalize=True,
                                           query_max_length=args.max_length, key_max_length=args.max_length,
                                           config_overrides=args.config_overrides)
    encoder.split_by_length = not args.no_split
    encoder.fast_attention_dropout = not args.torch_attention_dropout
    ours = EmbedderModel(encoder, LossParams(cos_temperature=0.05, negative_cross_device=False)).train()
    ours_opt = torch.optim.AdamW(ours.parameters(), lr=args.lr, fused=True)
    collator = EmbedderCollator(encoder, default_task="qa")

    torch.manual_seed(args.seed)
    st_config = {}
    if args.config_overrides:
        from transformers import AutoConfig

        overridden = AutoConfig.from_pretrained(model_dir, local_files_only=True)
        overridden.update_from_string(args.config_overrides)
        st_config = {kv.split("=")[0]: getattr(overridden, kv.split("=")[0]) for kv in args.config_overrides.split(",")}
    st = SentenceTransformer(str(model_dir), device="cpu", local_files_only=True, config_kwargs=st_config)
    st.max_seq_length = args.max_length
    st.train()
    st_loss = losses.MultipleNegativesRankingLoss(st, scale=20.0)
    for name in st_config:  # the same config on both sides
        assert getattr(st[0].auto_model.config, name) == getattr(encoder.config, name), name
    st_opt = torch.optim.AdamW(st.parameters(), lr=args.lr, fused=True)

    def autocast():
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16)

    def ours_step(batch):
        inputs = collator([{"query": q, "keys": [pos, neg], "task": "qa"} for q, pos, neg in batch])
        with autocast():
            loss = ours(**inputs)["loss"]
        loss.backward()
        ours_opt.step()
        ours_opt.zero_grad()
        return float(loss.detach())

    def st_step(batch):
        features = [st.tokenize([row[i] for row in batch]) for i in range(3)]
        with autocast():
            loss = st_loss(features, None)
        loss.backward()
        st_opt.step()
        st_opt.zero_grad()
        return float(loss.detach())

    # analytic FLOP per batch (padded tokens), same tokenizer and truncation on both sides
    cfg = encoder.config if getattr(encoder, "config", None) is not None else st[0].auto_model.config
    L, d, d_ff = cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size
    p_mm = L * (4 * d * d + 2 * d * d_ff)

    def batch_flops(batch):
        flops, padded, real = 0, 0, 0
        for texts in ([r[0] for r in batch], [t for r in batch for t in r[1:]]):
            mask = encoder.tokenize(texts, side="key")["attention_mask"]
            B, T = mask.shape
            flops += 3 * (2 * p_mm * B * T + L * 4 * B * T * T * d)
            padded += B * T
            real += int(mask.sum())
        return flops, padded, real

    counts = [batch_flops(b) for b in batches]
    peaks = [gemm_peak(args.gemm_size, args.gemm_reps)]  # and again after every round: the machine's speed drifts
    print(f"GEMM {args.gemm_size}^3 fp32: {peaks[0] / 1e9:.1f} GFLOP/s; torch threads {torch.get_num_threads()}", flush=True)

    systems = {"llm_embedder EmbedderModel (InfoNCE)": ours_step,
               "sentence-transformers MNRL": st_step}
    times = {name: [] for name in systems}
    cpu_times = {name: [] for name in systems}
    flops_done = {name: [] for name in systems}
    losses_seen = {name: [] for name in systems}
    for name, step in systems.items():  # warm-up, excluded
        t = time.perf_counter()
        losses_seen[name].append(round(step(batches[0]), 4))
        print(f"warm-up: {name:38s} {time.perf_counter() - t:6.2f} s", flush=True)
    for r in range(args.rounds):
        for name, step in (systems.items() if r % 2 == 0 else reversed(systems.items())):  # ABBA order
            for s in range(args.steps):
                i = 1 + r * args.steps + s
                t, c = time.perf_counter(), time.process_time()
                losses_seen[name].append(round(step(batches[i]), 4))
                times[name].append(time.perf_counter() - t)
                cpu_times[name].append(time.process_time() - c)
                flops_done[name].append(counts[i][0])
                print(f"round {r} step {s}: {name:38s} {times[name][-1]:6.2f} s wall, {cpu_times[name][-1]:6.2f} CPU-s",
                      flush=True)
        peaks.append(gemm_peak(args.gemm_size, args.gemm_reps))
        print(f"GEMM after round {r}: {peaks[-1] / 1e9:.1f} GFLOP/s", flush=True)
    peak = statistics.median(peaks)

    if args.profile:
        write_profile(args.profile, ours_step, batches[-1], args)
    ours_name, st_name = list(systems)
    per = {}
    for name in systems:
        s_step = statistics.median(times[name])
        flop_s = sum(flops_done[name]) / sum(times[name])
        per[name] = {"s_per_step": round(s_step, 3),
                     "cpu_s_per_step": round(statistics.median(cpu_times[name]), 3),
                     "examples_per_s": round(args.batch_size / s_step, 3),
                     "examples_per_cpu_s": round(args.batch_size / statistics.median(cpu_times[name]), 3),
                     "gflop_per_s": round(flop_s / 1e9, 2),
                     "share_of_gemm_peak": round(flop_s / peak, 3),
                     "share_of_gemm_peak_per_round": round_shares(times[name], flops_done[name], peaks, args.steps)}
    timed = [counts[1 + i] for i in range(args.rounds * args.steps)]
    out = {"benchmark": "training step throughput, MiniLM, SciFact (query, positive, negative) rows",
           "batch_size": args.batch_size, "texts_per_example": 3, "max_length": args.max_length,
           "steps_per_round": args.steps, "rounds": args.rounds, "warmup_steps": 1, "lr": args.lr,
           "dtype": "bfloat16 autocast (fp32 weights)" if args.bf16 else "float32",
           "optimizer": "torch.optim.AdamW(fused=True), both sides", "config_overrides_both_sides": args.config_overrides,
           "ours_split_batch_by_length": not args.no_split,
           "ours_fast_attention_dropout": not args.torch_attention_dropout,
           "torch_threads": torch.get_num_threads(), "cos_temperature_ours": 0.05, "scale_sentence_transformers": 20.0,
           "per_side": per,
           "ratio_ours_over_sentence_transformers": round(per[ours_name]["examples_per_s"] / per[st_name]["examples_per_s"], 3),
           "cpu_ratio_ours_over_sentence_transformers": round(
               per[ours_name]["examples_per_cpu_s"] / per[st_name]["examples_per_cpu_s"], 3),
           "gemm": {"size": args.gemm_size, "reps": args.gemm_reps, "peak_gflop_per_s": round(peak / 1e9, 2),
                    "peak": "median of the measurements before the first round and after every round",
                    "measurements_gflop_per_s": [round(x / 1e9, 2) for x in peaks]},
           "flop_count": {"tokens": "padded", "formula": "3 * (2*P_mm*B*T + L*4*B*T^2*d) per tokenised batch",
                          "P_mm": p_mm, "layers": L, "hidden": d, "ffn": d_ff,
                          "mean_gflop_per_step": round(statistics.mean(c[0] for c in timed) / 1e9, 2),
                          "mean_padded_tokens_per_step": round(statistics.mean(c[1] for c in timed), 1),
                          "mean_real_tokens_per_step": round(statistics.mean(c[2] for c in timed), 1)},
           "seconds_all_steps": {k: [round(x, 3) for x in v] for k, v in times.items()},
           "cpu_seconds_all_steps": {k: [round(x, 3) for x in v] for k, v in cpu_times.items()},
           "losses_warmup_then_timed": losses_seen,
           "versions": {"torch": torch.__version__, "sentence_transformers": sentence_transformers.__version__},
           "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "loadavg_at_end": os.getloadavg()},
           "command": " ".join(sys.argv)}
    write_json(args.output, out)
    print()
    print("| side | s/step (wall) | CPU-s/step | examples/s | GFLOP/s | share of GEMM peak |")
    print("|---|---|---|---|---|---|")
    for name, v in per.items():
        rounds = ", ".join(f"{100 * x:.0f}" for x in v["share_of_gemm_peak_per_round"])
        print(f"| {name} | {v['s_per_step']:.2f} | {v['cpu_s_per_step']:.2f} | {v['examples_per_s']:.2f} | "
              f"{v['gflop_per_s']:.1f} | {100 * v['share_of_gemm_peak']:.1f}% (rounds: {rounds}) |")
    print(f"\nours / sentence-transformers = {out['ratio_ours_over_sentence_transformers']:.3f} examples/s (wall), "
          f"{out['cpu_ratio_ours_over_sentence_transformers']:.3f} (CPU); GEMM peak {peak / 1e9:.1f} GFLOP/s; "
          f"wrote {args.output}")


if __name__ == "__main__":
    main()
