# Shared by the training scripts (source it): paths, environment and the launcher.
# NPROC   processes for torchrun (default 1; each CPU process uses TORCH_THREADS threads)
# OUT     output folder (each script has its own default)
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$REPO"
bash scripts/setup.sh >/dev/null
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export OMP_NUM_THREADS=${TORCH_THREADS:-$(( $(nproc) / ${NPROC:-1} > 0 ? $(nproc) / ${NPROC:-1} : 1 ))}
PY="$REPO/.venv/bin/python"
TOY=llm-embedder:llm_embedder_toy

# run_dense ARGS...: train under torchrun with $NPROC processes (gloo on CPU, NCCL on GPUs).
run_dense() {
  "$REPO/.venv/bin/torchrun" --standalone --nproc_per_node "${NPROC:-1}" "$REPO/run_dense.py" "$@"
}

# train_toy_task TASK OUT [EXTRA ARGS...]: one task's toy file, the reference's single-task recipe flags in EXTRA.
train_toy_task() {
  local task=$1 out=$2; shift 2
  run_dense --model_name_or_path "${MODEL:-minilm}" --train_data "$TOY/$task.json" --output_dir "$out" \
    --overwrite_output_dir --add_instruction --per_device_train_batch_size "${BATCH:-4}" \
    --train_group_size "${GROUP:-8}" --query_max_length 128 --key_max_length 128 \
    --max_steps "${MAX_STEPS:-4}" --learning_rate 5e-6 --warmup_ratio 0 --weight_decay 0 --negative_cross_device false \
    --logging_steps 1 --save_strategy no "$@"
}
