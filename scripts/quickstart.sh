#!/usr/bin/env bash
# Quickstart (README's first command): install, then fine-tune MiniLM on SciFact train and print SciFact
# test nDCG@10 / R@100 before and after. Negatives are drawn at random from the corpus (hard-negative
# mining is scripts/3iter-scifact.sh). Two epochs at lr 1e-4 (the recipe chosen on a dev split of SciFact
# train): 18 min 22 s on 2 idle CPU cores from a fresh clone, set-up included (two full-corpus encodings of
# ~3 min, 50 training steps of ~13 s; docs/results.md).
# Override with env vars, e.g. QUICKSTART_EPOCHS=1 QUICKSTART_LR=2e-5 OUT=runs/qs1 bash scripts/quickstart.sh
# (the first recipe, 25 steps)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-runs/quickstart}
start=$(date +%s)
.venv/bin/python run_dense.py \
  --model_name_or_path minilm \
  --train_data llm-embedder:scifact/train.json \
  --eval_data llm-embedder:scifact/test.json \
  --corpus llm-embedder:scifact/corpus.jsonl \
  --output_dir "$OUT" --overwrite_output_dir \
  --train_group_size "${QUICKSTART_GROUP_SIZE:-2}" \
  --per_device_train_batch_size 32 --per_device_eval_batch_size 32 \
  --num_train_epochs "${QUICKSTART_EPOCHS:-2}" --learning_rate "${QUICKSTART_LR:-1e-4}" --warmup_ratio 0.1 \
  --cos_temperature "${QUICKSTART_TEMPERATURE:-0.05}" \
  --query_max_length 64 --key_max_length 256 \
  --metrics ndcg recall mrr --cutoffs 10 100 \
  --add_instruction false --weight_decay 0 --negative_cross_device false --hits 100 \
  --eval_on_start --logging_steps 5 --seed 42 --encode_backend onednn
.venv/bin/llm-embedder report "$OUT/metrics.json" --metrics eval_ndcg@10 eval_recall@100 eval_mrr@10
echo "quickstart wall time: $(( $(date +%s) - start )) s; model saved in $OUT (load it with SentenceTransformer('$OUT'))"
