#!/usr/bin/env bash
# The quickstart with the JAX trainer: fine-tune MiniLM on SciFact train with python -m llm_embedder.jax.train
# (same data, batch, lengths and loss as scripts/quickstart.sh; the schedule is the quickstart's first recipe,
# one epoch at lr 2e-5, which docs/results.md compares with the torch trainer; EPOCHS=2 LR=1e-4 is the
# quickstart's current one), export, then evaluate the exported folder on SciFact test (full corpus) with
# python -m evaluation.eval_retrieval. Base MiniLM: nDCG@10 0.6451.
# Runs on CPU as is; on a GPU install jax[cuda12], on a TPU VM jax[tpu] (docs/jax.md). Resumable: rerun with
# RESUME=1 after an interruption (checkpoints every 5 steps in $OUT/checkpoints).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-runs/jax-scifact}
resume=()
if [ "${RESUME:-0}" = 1 ]; then resume=(--resume_from_checkpoint latest); fi
start=$(date +%s)
"$PY" -m llm_embedder.jax.train \
  --model_name_or_path minilm \
  --train_data llm-embedder:scifact/train.json \
  --corpus llm-embedder:scifact/corpus.jsonl \
  --output_dir "$OUT" --overwrite_output_dir \
  --train_group_size "${GROUP_SIZE:-2}" \
  --per_device_train_batch_size 32 \
  --num_train_epochs "${EPOCHS:-1}" --learning_rate "${LR:-2e-5}" --warmup_ratio 0.1 \
  --cos_temperature "${TEMPERATURE:-0.05}" \
  --query_max_length 64 --key_max_length 256 \
  --add_instruction false --weight_decay 0 --negative_cross_device false \
  --gradient_checkpointing --logging_steps 5 --save_steps 5 --seed 42 "${resume[@]}"
trained=$(date +%s)
"$PY" -m evaluation.eval_retrieval --eval_data llm-embedder:scifact/test.json \
  --corpus llm-embedder:scifact/corpus.jsonl --retrieval_method dense --query_encoder "$OUT" \
  --metrics ndcg recall mrr --cutoffs 10 100 --hits 100 --batch_size 32 --save_name jax-scifact \
  --output_dir "$OUT/eval"
echo "jax-scifact: training $(( trained - start )) s, evaluation $(( $(date +%s) - trained )) s; model in $OUT"
