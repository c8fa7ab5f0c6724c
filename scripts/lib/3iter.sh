# The mine -> score -> train loop shared by scripts/3iter-*.sh (source it, then call three_iterations).
#
#   three_iterations NAME TRAIN TEST CORPUS
#
# Round 1 mines negatives with BM25, later rounds with the previous round's encoder; each round scores the
# candidates with the LM, trains (from the previous round's model), and evaluates on TEST. Sizes come from
# the environment so a 2-core CPU finishes in reasonable time:
#   N_QUERIES (48)  training queries mined and scored per round     N_KEYS (6)  keys per query (1 pos + negs)
#   ROUNDS (3)  MODEL (minilm)  LM (smollm2)  TEMPLATE (auto; query_likelihood for data without answers)
#   EPOCHS (2)  BATCH (8)  LR (2e-5)  BM25_BACKEND (pyserini)  OUT (runs/3iter-NAME)
#   EXTRA_TRAIN_ARGS / EXTRA_EVAL_ARGS  more arguments for run_dense.py / eval_retrieval
# Everything each step writes stays in OUT/round-R/, so any step can be inspected or re-run on its own.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

three_iterations() {
  local name=$1 train=$2 test=$3 corpus=$4
  local out=${OUT:-runs/3iter-$name} rounds=${ROUNDS:-3} n_queries=${N_QUERIES:-48} n_keys=${N_KEYS:-6}
  local model=${MODEL:-minilm} lm=${LM:-smollm2} template=${TEMPLATE:-auto}
  local evaluate=("$PY" -m evaluation.eval_retrieval --corpus "$corpus" --metrics ndcg recall mrr --cutoffs 10 100 --hits 100)
  mkdir -p "$out"
  local table="$out/results.md" started=$SECONDS
  printf '| round | negatives mined by | nDCG@10 | R@100 | MRR@10 | minutes |\n|---|---|---|---|---|---|\n' > "$table"

  summary_row() {  # ROUND MINER SUMMARY_JSON MINUTES
    "$PY" - "$@" >> "$table" <<'PYEOF'
import json, sys
r, miner, path, minutes = sys.argv[1:]
m = json.load(open(path))["metrics"]
print(f"| {r} | {miner} | {m['ndcg@10']:.4f} | {m['recall@100']:.4f} | {m['mrr@10']:.4f} | {minutes} |")
PYEOF
  }

  echo "== round 0: $model before training"
  local t0=$SECONDS
  "${evaluate[@]}" --eval_data "$test" --retrieval_method dense --query_encoder "$model" \
    --output_dir "$out/round-0" --save_name eval ${EXTRA_EVAL_ARGS:-}
  summary_row 0 "-" "$out/round-0/$(basename "${test#llm-embedder:}" .json).eval.eval.json" $(( (SECONDS - t0) / 60 ))

  local encoder=$model
  for r in $(seq 1 "$rounds"); do
    t0=$SECONDS
    local dir="$out/round-$r" stem
    stem=$(basename "${train#llm-embedder:}" .json)
    mkdir -p "$dir"
    if [[ $r == 1 ]]; then
      echo "== round $r: mine with BM25"
      "${evaluate[@]}" --eval_data "$train" --retrieval_method bm25 --bm25_backend "${BM25_BACKEND:-pyserini}" \
        --metrics collate_neg --max_queries "$n_queries" --max_neg_num $(( n_keys - 1 )) --output_dir "$dir" --save_name bm25
      miner=bm25
    else
      echo "== round $r: mine with the round-$(( r - 1 )) encoder"
      "${evaluate[@]}" --eval_data "$train" --retrieval_method dense --query_encoder "$encoder" \
        --metrics collate_neg --max_queries "$n_queries" --max_neg_num $(( n_keys - 1 )) --output_dir "$dir" --save_name dense
      miner="dense (round $(( r - 1 )))"
    fi
    local mined="$dir/$stem.neg.${miner%% *}.json"
    echo "== round $r: score $(wc -l < "$mined") queries x $n_keys keys with $lm"
    "$PY" run_lm_score.py --eval_data "$mined" --corpus "$corpus" --model_name_or_path "$lm" --template "$template" \
      --save_name lm --max_keys "$n_keys" --output_dir "$dir"
    echo "== round $r: train from $encoder"
    run_dense --model_name_or_path "$encoder" --train_data "$dir/$stem.neg.${miner%% *}.scored.lm.json" --corpus "$corpus" \
      --output_dir "$dir/model" --overwrite_output_dir --train_group_size "$n_keys" \
      --per_device_train_batch_size "${BATCH:-8}" --num_train_epochs "${EPOCHS:-2}" --learning_rate "${LR:-2e-5}" \
      --cos_temperature 0.05 --stable_distill --logging_steps 1 --save_strategy no ${EXTRA_TRAIN_ARGS:-}
    encoder="$dir/model"
    echo "== round $r: evaluate"
    "${evaluate[@]}" --eval_data "$test" --retrieval_method dense --query_encoder "$encoder" \
      --output_dir "$dir" --save_name eval ${EXTRA_EVAL_ARGS:-}
    summary_row "$r" "$miner" "$dir/$(basename "${test#llm-embedder:}" .json).eval.eval.json" $(( (SECONDS - t0) / 60 ))
  done
  echo "total wall time: $(( (SECONDS - started) / 60 )) min" >> "$table"
  cat "$table"
}
