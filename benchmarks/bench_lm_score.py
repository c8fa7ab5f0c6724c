"""LM-scoring throughput: our batched path vs the pure forward pass (the limit) vs one pair at a time.

Pairs are real: the first PubMedQA train questions, each with its gold abstract and random other abstracts,
under the ``qa`` template with SmolLM2 (the same tokenisation and truncation as ``run_lm_score.py``).

* ``batched``: ``LMScorer.score`` (length-sorted token-budget batches, collation, body forward, LM head on the
  answer positions only, log-softmax and the per-pair means);
* ``limit_forward``: ``model(...)`` alone on exactly the same padded batches (full logits, nothing else);
* ``limit_body``: the transformer body alone on the same batches (no LM head at all; a lower bound);
* ``one_at_a_time``: a plain loop, one unpadded forward per pair, full logits, log-softmax, mean.

Throughput counts real tokens (prompt + answer, no padding) per second, both of wall time and of this
process's CPU time (with ``--threads 1`` the latter is immune to other jobs on a shared machine). Each
variant runs ``--repeats`` times in turn (interleaved, so a busy machine slows them alike); the best is kept.

    python benchmarks/bench_lm_score.py            # writes benchmarks/results/lm_score_bench.json
"""
from __future__ import annotations

import argparse
import os
import platform
import random
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from llm_embedder.corpus import load_corpus  # noqa: E402
from llm_embedder.lm.loading import load_lm  # noqa: E402
from llm_embedder.lm.pairs import build_plan  # noqa: E402
from llm_embedder.lm.scorer import LMScorer, collate, pack_batches  # noqa: E402
from llm_embedder.schema import read_json_objects, read_records, write_json, write_records  # noqa: E402


def pubmedqa_pairs(tokenizer, num_questions: int, keys_per_question: int, key_max_length: int, seed: int = 0):
    folder = REPO / "data" / "pubmedqa"
    corpus = load_corpus(folder / "corpus.jsonl")
    row_of = corpus.id_to_row()
    queries = read_json_objects(folder / "queries.jsonl")[1][:num_questions]
    rng = random.Random(seed)
    records = []
    for q in queries:
        gold = row_of[q["_id"]]
        others = [r for r in rng.sample(range(len(corpus)), keys_per_question + 1) if r != gold][: keys_per_question - 1]
        records.append({"query": q["text"], "answers": q["answers"][:1], "task": "qa", "pos_index": [gold], "neg_index": others})
    work = REPO / "benchmarks" / "results" / "tmp"
    path = write_records(work / "bench_lm_score.json", records)
    plan = build_plan(read_records(path, purpose="score", corpus_size=len(corpus)), tokenizer, corpus=corpus,
                      key_max_length=key_max_length)
    return [(p.prompt_ids, p.target_ids) for p in plan.pairs]


class Clock:
    """Wall time and this process's CPU time of a block. On a shared machine with one torch thread, CPU time
    is the work itself, free of the time spent waiting for a core."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


def time_batched(scorer: LMScorer, sequences, budget: int) -> Clock:
    with Clock() as clock:
        scorer.score(sequences, budget)
    return clock


def time_forward(model, sequences, budget: int, body_only: bool) -> Clock:
    batches = [collate([sequences[i] for i in b], pad_id=0)
               for b in pack_batches([len(p) + len(t) for p, t in sequences], budget)]
    forward = model.base_model if body_only else model
    with Clock() as clock, torch.inference_mode():
        for batch in batches:
            forward(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids,
                    use_cache=False)
    return clock


def time_one_at_a_time(model, sequences) -> Clock:
    with Clock() as clock, torch.inference_mode():
        for prompt, target in sequences:
            ids = torch.tensor([list(prompt) + list(target)])
            logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), dim=-1)
            logp.gather(1, ids[0, 1:, None])[-len(target):].mean().item()
    return clock


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model_name_or_path", default="smollm2")
    p.add_argument("--num_questions", type=int, default=4)
    p.add_argument("--keys_per_question", type=int, default=3)
    p.add_argument("--key_max_length", type=int, default=256)
    p.add_argument("--token_budget", type=int, default=8192)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--output", default=str(REPO / "benchmarks" / "results" / "lm_score_bench.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    lm = load_lm(args.model_name_or_path, "bfloat16" if args.bf16 else "float32")
    sequences = pubmedqa_pairs(lm.tokenizer, args.num_questions, args.keys_per_question, args.key_max_length)
    tokens = sum(len(a) + len(b) for a, b in sequences)
    batches = pack_batches([len(a) + len(b) for a, b in sequences], args.token_budget)
    padded = sum(len(b) * max(len(sequences[i][0]) + len(sequences[i][1]) for i in b) for b in batches)
    scorer = LMScorer(lm.model)
    variants = {
        "batched": lambda: time_batched(scorer, sequences, args.token_budget),
        "limit_forward": lambda: time_forward(lm.model, sequences, args.token_budget, body_only=False),
        "limit_body": lambda: time_forward(lm.model, sequences, args.token_budget, body_only=True),
        "one_at_a_time": lambda: time_one_at_a_time(lm.model, sequences),
    }
    load_before = os.getloadavg()
    wall = {name: float("inf") for name in variants}
    cpu = dict(wall)
    for _ in range(args.repeats):
        for name, run in variants.items():
            clock = run()
            wall[name], cpu[name] = min(wall[name], clock.wall), min(cpu[name], clock.cpu)
            print(f"{name}: {tokens / clock.wall:.1f} tokens/s wall, {tokens / clock.cpu:.1f} tokens/CPU-s", flush=True)

    def ratios(seconds: dict) -> dict:
        return {"batched_over_limit_forward": round(seconds["limit_forward"] / seconds["batched"], 3),
                "batched_over_limit_body": round(seconds["limit_body"] / seconds["batched"], 3),
                "batched_over_one_at_a_time": round(seconds["one_at_a_time"] / seconds["batched"], 3)}

    result = {
        "command": "python benchmarks/bench_lm_score.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "model": args.model_name_or_path, "dtype": lm.dtype, "threads": args.threads,
        "machine": f"{cpu_name()}, {os.cpu_count()} cpus",
        "load_average_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "pairs": len(sequences), "tokens": tokens, "padded_tokens": padded, "batches": len(batches),
        "token_budget": args.token_budget, "repeats": args.repeats,
        "note": "best of the repeats; tokens are real (unpadded) prompt+answer tokens; with one torch thread the "
                "CPU-time figures are the work itself, the wall-time figures also include waiting for a shared core",
        "tokens_per_cpu_s": {k: round(tokens / v, 1) for k, v in cpu.items()},
        "tokens_per_wall_s": {k: round(tokens / v, 1) for k, v in wall.items()},
        "ratios_cpu": ratios(cpu), "ratios_wall": ratios(wall),
    }
    write_json(args.output, result)
    print(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
