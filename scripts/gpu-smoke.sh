#!/usr/bin/env bash
# GPU smoke test (~2 minutes on a GPU machine): the multi-GPU paths that CPU tests (gloo, fp32) cannot reach.
#   1. collectives of llm_embedder.distributed under torchrun + NCCL, one GPU per rank (cuda:LOCAL_RANK)
#   2. run_dense.py: torchrun on the available GPUs (at most 8), --bf16, GradCache + cross-device negatives (DDP)
#   3. the same under DeepSpeed ZeRO-2 (data/deepspeed/stage2.json)
#   4. both saved models load in sentence-transformers and agree with each other
#   5. run_lm_score.py (SmolLM2, bf16) on 2 ranks (1 with a single GPU), each on its own GPU
# Exits non-zero with one clear line when no GPU is visible or a step fails. Outputs go to $OUT (a temp dir).
#   bash scripts/gpu-smoke.sh            # or: OUT=runs/gpu-smoke NGPU=2 bash scripts/gpu-smoke.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}  # the project's venv (scripts/setup.sh), as the other scripts
[[ -x $PY ]] || PY=python
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}

if ! "$PY" -c "import torch" 2>/dev/null; then
  echo "gpu-smoke: $PY cannot import torch; run bash scripts/setup.sh first (or set PYTHON)" >&2
  exit 2
fi
if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() and torch.cuda.device_count() > 0 else 1)"; then
  echo "gpu-smoke: no CUDA GPU visible (torch.cuda.is_available() is False); this script needs at least one GPU" >&2
  exit 2
fi
AVAILABLE=$("$PY" -c "import torch; print(torch.cuda.device_count())")
NGPU=${NGPU:-$(( AVAILABLE < 8 ? AVAILABLE : 8 ))}
LM_RANKS=$(( NGPU < 2 ? 1 : 2 ))
OUT=${OUT:-$(mktemp -d -t gpu-smoke.XXXXXX)}
mkdir -p "$OUT"
start=$(date +%s)
echo "gpu-smoke: $NGPU GPU(s) of $AVAILABLE, outputs in $OUT"
torchrun_n() { "$PY" -m torch.distributed.run --standalone --nnodes 1 --nproc_per_node "$1" "${@:2}"; }
step() { echo "== $1 ($(( $(date +%s) - start )) s)"; }

step "1/5 collectives under NCCL"
torchrun_n "$NGPU" scripts/gpu_smoke_check.py collectives

TRAIN=(--model_name_or_path minilm --train_data llm-embedder:llm_embedder_toy/qa.json
       --per_device_train_batch_size 4 --train_group_size 3 --max_steps 4 --logging_steps 1
       --learning_rate 2e-5 --query_max_length 64 --key_max_length 128 --bf16
       --negative_cross_device --grad_cache_query_chunk_size 2 --grad_cache_key_chunk_size 4
       --disable_tqdm true --seed 42)

step "2/5 DDP + bf16 + GradCache + cross-device negatives"
torchrun_n "$NGPU" run_dense.py "${TRAIN[@]}" --output_dir "$OUT/ddp"

step "3/5 DeepSpeed ZeRO-2 + bf16 + GradCache + cross-device negatives"
torchrun_n "$NGPU" run_dense.py "${TRAIN[@]}" --output_dir "$OUT/zero2" --deepspeed data/deepspeed/stage2.json

step "4/5 saved models load in sentence-transformers"
"$PY" scripts/gpu_smoke_check.py model "$OUT/ddp"
"$PY" scripts/gpu_smoke_check.py model "$OUT/zero2" "$OUT/ddp"

step "5/5 LM scoring on $LM_RANKS rank(s)"
cp data/llm_embedder_toy/qa.json "$OUT/qa.json"
torchrun_n "$LM_RANKS" run_lm_score.py --eval_data "$OUT/qa.json" --model_name_or_path smollm2 --bf16 \
  --max_queries 4 --max_keys 4 --max_length 256 --save_name smoke
"$PY" scripts/gpu_smoke_check.py scored "$OUT/qa.scored.smoke.json" "$LM_RANKS"

echo "gpu-smoke: all 5 steps passed in $(( $(date +%s) - start )) s on $NGPU GPU(s); outputs in $OUT"
