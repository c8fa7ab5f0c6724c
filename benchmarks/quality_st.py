"""The peer row of the quality table: sentence-transformers' own trainer with MultipleNegativesRankingLoss.

Same MiniLM folder, same mined file as our BM25 row (``{train}.neg.bm25.json``: query, positives, BM25
negatives as corpus rows), one example per query: its first positive (our ``--select_positive first``) and
``--negatives`` of its mined negatives drawn at random with the seed (our ``--select_negative random``; repeated
when a query has fewer, as our trainer does). Same batch,
epochs, learning rate, linear schedule with warm-up, weight decay 0 and seed as our rows (and, like our
trainer, the last partial batch of an epoch is dropped); MNRL's scale is
1 / temperature (20 = our τ 0.05), with in-batch negatives as in our contrastive loss. The model is saved in
the sentence-transformers format and evaluated by the same ``eval_retrieval`` command as ours.

    python benchmarks/quality_st.py --train_data runs/quality/scifact/shared/train.neg.bm25.json \
        --corpus llm-embedder:scifact/corpus.jsonl --output_dir runs/st --seed 0
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def examples(records: list[dict], corpus_texts: list[str], negatives: int, seed: int = 0) -> dict[str, list[str]]:
    """Columns ``anchor, positive, negative_1..N`` (MNRL's input), one row per query; the negatives are a seeded
    random choice from the query's mined ones (without repeats while the pool lasts)."""
    rng = random.Random(seed)
    columns: dict[str, list[str]] = {"anchor": [], "positive": [], **{f"negative_{i + 1}": [] for i in range(negatives)}}
    for line, record in enumerate(records, 1):
        pos = record.get("pos_index") or []
        neg = record.get("neg_index") or []
        if not pos or (negatives and not neg):
            raise ValueError(f"record {line}: needs pos_index and neg_index (a mined file)")
        columns["anchor"].append(record["query"])
        columns["positive"].append(corpus_texts[pos[0]])
        chosen = rng.sample(neg, min(negatives, len(neg))) if negatives else []
        for i in range(negatives):
            columns[f"negative_{i + 1}"].append(corpus_texts[chosen[i % len(chosen)]])
    return columns


def train(args) -> Path:
    import torch
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    from llm_embedder.corpus import load_corpus
    from llm_embedder.resources import resolve_data_path, resolve_encoder

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    corpus = load_corpus(resolve_data_path(args.corpus)).texts
    with open(resolve_data_path(args.train_data), encoding="utf-8") as f:
        records = [json.loads(line) for line in f if line.strip()]
    data = Dataset.from_dict(examples(records, corpus, args.negatives, args.seed))
    model = SentenceTransformer(str(resolve_encoder(args.model)), device="cpu")
    model.max_seq_length = args.max_seq_length
    loss = MultipleNegativesRankingLoss(model, scale=1.0 / args.temperature)
    out = Path(args.output_dir)
    targs = SentenceTransformerTrainingArguments(
        output_dir=str(out), per_device_train_batch_size=args.batch, num_train_epochs=args.epochs,
        learning_rate=args.lr, warmup_ratio=args.warmup, weight_decay=0.0, lr_scheduler_type="linear",
        seed=args.seed, data_seed=args.seed, dataloader_drop_last=True, logging_steps=5, report_to="none",
        use_cpu=True, disable_tqdm=True,
        save_strategy="steps" if args.save_steps else "no", save_steps=args.save_steps or 500, save_only_model=True)
    SentenceTransformerTrainer(model=model, args=targs, train_dataset=data, loss=loss).train()
    model.save(str(out))
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--train_data", required=True, help="mined records (pos_index, neg_index)")
    p.add_argument("--corpus", required=True)
    p.add_argument("--output_dir", required=True)
    p.add_argument("--model", default="minilm")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--negatives", type=int, default=3, help="hard negatives per query (columns)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--lr", type=float, default=2e-5)
    p.add_argument("--warmup", type=float, default=0.1)
    p.add_argument("--temperature", type=float, default=0.05, help="MNRL scale = 1 / temperature")
    p.add_argument("--max_seq_length", type=int, default=256)
    p.add_argument("--save_steps", type=int, default=0, help="also keep checkpoints every N steps (0: none)")
    args = p.parse_args(argv)
    if args.temperature <= 0:
        p.error("--temperature: must be > 0")
    print(f"saved {train(args)}")


if __name__ == "__main__":
    main()
