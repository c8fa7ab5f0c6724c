#!/usr/bin/env bash
# Train one embedder on all six LLM-Embedder tasks (the shipped toy files) plus SciFact and PubMedQA,
# with task-homogeneous batches and each task's recipe (docs/tasks.md), then evaluate on SciFact test.
#   NPROC=2 bash scripts/llm-embedder.sh        # two processes (torchrun, gloo on CPU)
#   MAX_SAMPLES=64 BATCH=4 GROUP=8 OUT=runs/llm-embedder are the defaults (sized for a 2-core CPU).
source "$(dirname "$0")/lib/common.sh"
OUT=${OUT:-runs/llm-embedder}
run_dense --model_name_or_path "${MODEL:-minilm}" \
  --train_data $TOY/qa.json $TOY/icl.json $TOY/chat.json $TOY/lrlm.json $TOY/tool.json $TOY/convsearch.json \
               llm-embedder:scifact/train.json llm-embedder:pubmedqa/train.json \
  --eval_data llm-embedder:scifact/test.json \
  --output_dir "$OUT" --overwrite_output_dir \
  --add_instruction --inbatch_same_dataset epoch \
  --max_sample_num "${MAX_SAMPLES:-64}" --per_device_train_batch_size "${BATCH:-4}" --train_group_size "${GROUP:-8}" \
  --query_max_length 128 --key_max_length 256 --learning_rate 5e-6 --warmup_ratio 0 --weight_decay 0 --num_train_epochs 1 \
  --negative_cross_device false --hits 100 \
  --metrics ndcg recall mrr --cutoffs 10 100 --logging_steps 5 "$@"
"$REPO/.venv/bin/llm-embedder" report "$OUT/metrics.json"
