# The mine -> score -> train loop shared by scripts/3iter-*.sh (source it, then call three_iterations).
#
#   three_iterations NAME TRAIN TEST CORPUS
#
# Round 1 mines negatives with BM25, later rounds with the previous round's encoder; each round scores the
# candidates with the LM, trains (from the previous round's model), and evaluates on TEST. Sizes come from
# the environment so a 2-core CPU finishes in reasonable time:
#   N_QUERIES (48)  training queries mined and scored per round     N_KEYS (6)  keys per query (1 pos + negs)
#   MAX_POS (N_KEYS - 1)  positives scored per query, so a query with many positives still keeps a negative
#   ROUNDS (3)  MODEL (minilm)  LM (smollm2)  TEMPLATE (auto; query_likelihood for data without answers)
#   EPOCHS (2)  BATCH (8)  LR (2e-5)  BM25_BACKEND (pyserini)  OUT (runs/3iter-NAME)
#   SEED (42)  every round's --seed; round R shuffles its training data with --data_seed SEED+R-1. Each round's
#              file has the same queries in the same order, so one data seed would give every round the same
#              shuffle: with EPOCHS below 1, every round would train on the same first batches and never on
#              the rest (at 2/3 epoch a round, 265 of SciFact's 809 queries were never trained on)
#   EXTRA_TRAIN_ARGS / EXTRA_EVAL_ARGS  more arguments for run_dense.py / eval_retrieval
#   SCORE_PROCESSES (1)  LM scoring under torchrun with this many ranks, sharing OMP_NUM_THREADS between them
#                        (on 2 cores, 2 ranks of one thread: 1.2x the tokens/s of one process of two, 2 x 201
#                        against 336 on 30 PubMedQA pairs, but each rank loads the LM, so it pays on large files)
# Everything each step writes stays in OUT/round-R/, so any step can be inspected or re-run on its own.
# Resumable: run it again with the same OUT and every step whose output is complete is reused (said in the
# log and counted under the table); FORCE=1 redoes everything. Once a step of round 1 or later runs, every
# step after it runs too (each depends on the one before), so deleting round-2/model/.complete retrains round 2
# and re-evaluates it, then redoes the rounds after it. Each step's seconds go to OUT/timings.tsv
# (round, step, seconds; the latest run of a step wins), so the table's minutes are what each round cost over
# every run, not only the last one. Outputs appear only when a step succeeds (the
# tools write temp files and rename; a trained model is marked complete by OUT/round-R/model/.complete).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

three_iterations() {
  local name=$1 train=$2 test=$3 corpus=$4 v
  for v in ROUNDS N_QUERIES N_KEYS MAX_POS SCORE_PROCESSES BATCH; do  # before any work: one line naming the variable
    [[ -z ${!v:-} || ${!v} =~ ^[1-9][0-9]*$ ]] || { echo "3iter.sh: $v=${!v}: expected a positive whole number" >&2; return 2; }
  done
  [[ -z ${SEED:-} || $SEED =~ ^[0-9]+$ ]] || { echo "3iter.sh: SEED=$SEED: expected a whole number" >&2; return 2; }
  [[ -z ${EPOCHS:-} || ( $EPOCHS =~ ^[0-9]*\.?[0-9]+$ && $EPOCHS =~ [1-9] ) ]] ||
    { echo "3iter.sh: EPOCHS=$EPOCHS: expected a positive number" >&2; return 2; }
  [[ ${N_KEYS:-6} -ge 2 ]] || { echo "3iter.sh: N_KEYS=$N_KEYS: needs at least 2 (the positive and a negative)" >&2; return 2; }
  local out=${OUT:-runs/3iter-$name} rounds=${ROUNDS:-3} n_queries=${N_QUERIES:-48} n_keys=${N_KEYS:-6}
  local max_pos=${MAX_POS:-$(( ${N_KEYS:-6} - 1 ))}
  local model=${MODEL:-minilm} lm=${LM:-smollm2} template=${TEMPLATE:-auto}
  local evaluate=("$PY" -m evaluation.eval_retrieval --corpus "$corpus" --metrics ndcg recall mrr --cutoffs 10 100 --hits 100)
  local score_procs=${SCORE_PROCESSES:-1} score=("$PY")
  if (( score_procs > 1 )); then  # one rank per share of the threads (torchrun would otherwise keep OMP_NUM_THREADS per rank)
    local rank_threads=$(( OMP_NUM_THREADS / score_procs > 0 ? OMP_NUM_THREADS / score_procs : 1 ))
    score=(env OMP_NUM_THREADS=$rank_threads MKL_NUM_THREADS=$rank_threads
           "$REPO/.venv/bin/torchrun" --standalone --nproc_per_node "$score_procs")
  fi
  mkdir -p "$out"
  local table="$out/results.md" started=$SECONDS reused=0 redone=""
  printf '| round | negatives mined by | nDCG@10 | R@100 | MRR@10 | minutes (all runs) |\n|---|---|---|---|---|---|\n' > "$table"

  timed() {  # ROUND STEP CMD...: run CMD; when it succeeds, append its seconds to OUT/timings.tsv
    local round=$1 step=$2 t=$SECONDS
    shift 2
    "$@" || return
    [[ $round == 0 ]] || redone=1  # every later step depends on this one's output: none of them is reused
    printf '%s\t%s\t%s\n' "$round" "$step" $(( SECONDS - t )) >> "$out/timings.tsv"
  }
  round_minutes() {  # [ROUND]: minutes the round's steps (all steps without ROUND) took, over every run that recorded them
    [[ -f $out/timings.tsv ]] || { echo 0.0; return; }
    awk -F'\t' -v r="${1:-}" 'r == "" || $1 == r { s[$1 FS $2] = $3 } END { for (k in s) t += s[k]; printf "%.1f", t / 60 }' \
      "$out/timings.tsv"
  }
  done_already() {  # OUTPUT STEP: true (and says so) when OUTPUT exists and FORCE is unset
    if [[ -z ${FORCE:-} && -z $redone && -e $1 ]]; then echo "   reusing $1 ($2 done in an earlier run; FORCE=1 redoes it)"; reused=$(( reused + 1 )); return 0; fi
    return 1
  }
  summary_row() {  # ROUND MINER SUMMARY_JSON MINUTES
    "$PY" - "$@" >> "$table" <<'PYEOF'
import json, sys
r, miner, path, minutes = sys.argv[1:]
m = json.load(open(path))["metrics"]
print(f"| {r} | {miner} | {m['ndcg@10']:.4f} | {m['recall@100']:.4f} | {m['mrr@10']:.4f} | {minutes} |")
PYEOF
  }

  echo "== round 0: $model before training"
  local test_stem train_stem
  test_stem=$(basename "${test#llm-embedder:}" .json) train_stem=$(basename "${train#llm-embedder:}" .json)
  done_already "$out/round-0/$test_stem.eval.eval.json" evaluation ||
    timed 0 evaluate "${evaluate[@]}" --eval_data "$test" --retrieval_method dense --query_encoder "$model" \
      --output_dir "$out/round-0" --save_name eval ${EXTRA_EVAL_ARGS:-}
  summary_row 0 "-" "$out/round-0/$test_stem.eval.eval.json" "$(round_minutes 0)"

  local encoder=$model
  for r in $(seq 1 "$rounds"); do
    local dir="$out/round-$r"
    mkdir -p "$dir"
    # tag names the files ({train}.neg.{tag}.json); miner is the table's label
    local tag=bm25 miner=bm25 method=(--retrieval_method bm25 --bm25_backend "${BM25_BACKEND:-pyserini}")
    if [[ $r != 1 ]]; then
      tag=dense miner="dense (round $(( r - 1 )))" method=(--retrieval_method dense --query_encoder "$encoder")
    fi
    local mined="$dir/$train_stem.neg.$tag.json" scored="$dir/$train_stem.neg.$tag.scored.lm.json"
    echo "== round $r: mine with ${miner}"
    done_already "$mined" mining ||
      timed "$r" mine "${evaluate[@]}" --eval_data "$train" "${method[@]}" --metrics collate_neg --max_queries "$n_queries" \
        --max_neg_num $(( n_keys - 1 )) --output_dir "$dir" --save_name "$tag"
    echo "== round $r: score $(wc -l < "$mined") queries x $n_keys keys with $lm"
    done_already "$scored" "LM scoring" ||
      timed "$r" score "${score[@]}" run_lm_score.py --eval_data "$mined" --corpus "$corpus" --model_name_or_path "$lm" --template "$template" \
        --save_name lm --max_keys "$n_keys" --max_pos "$max_pos" --output_dir "$dir"
    echo "== round $r: train from $encoder"
    if ! done_already "$dir/model/.complete" training; then
      timed "$r" train run_dense --model_name_or_path "$encoder" --train_data "$scored" --corpus "$corpus" \
        --output_dir "$dir/model" --overwrite_output_dir --train_group_size "$n_keys" \
        --per_device_train_batch_size "${BATCH:-8}" --num_train_epochs "${EPOCHS:-2}" --learning_rate "${LR:-2e-5}" \
        --seed "${SEED:-42}" --data_seed $(( ${SEED:-42} + r - 1 )) \
        --cos_temperature 0.05 --stable_distill --logging_steps 1 --save_strategy no \
        --add_instruction false --warmup_ratio 0 --weight_decay 0 --negative_cross_device false ${EXTRA_TRAIN_ARGS:-}
      touch "$dir/model/.complete"
    fi
    encoder="$dir/model"
    echo "== round $r: evaluate"
    done_already "$dir/$test_stem.eval.eval.json" evaluation ||
      timed "$r" evaluate "${evaluate[@]}" --eval_data "$test" --retrieval_method dense --query_encoder "$encoder" \
        --output_dir "$dir" --save_name eval ${EXTRA_EVAL_ARGS:-}
    summary_row "$r" "$miner" "$dir/$test_stem.eval.eval.json" "$(round_minutes "$r")"
  done
  echo "wall time of this run: $(( (SECONDS - started) / 60 )) min; all runs: $(round_minutes) min" >> "$table"
  (( reused == 0 )) || echo "($reused steps reused from an earlier run; a reused step without a line in timings.tsv, e.g. copied from elsewhere, counts 0 minutes)" >> "$table"
  cat "$table"
}
