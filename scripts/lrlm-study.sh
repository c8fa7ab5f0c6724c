#!/usr/bin/env bash
# The long-range LM study (issue 15, docs/lrlm-study.md): does an embedder distilled from the LM's preferences
# retrieve code that lowers that LM's perplexity more than BM25, the base encoder and contrastive training?
#
#   bash scripts/lrlm-study.sh [STAGE ...]      stages: data score train eval report (default: all, in order)
#
# Every size is a knob (environment variable); every stage resumes (finished files are skipped, LM scoring
# continues from its .partial.jsonl). Run it bigger with e.g. N_TRAIN=2000 N_TEST=300 SEEDS="1 2 3".
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}

OUT=${OUT:-outputs/lrlm-study}                 # everything is written here
SOURCE=${SOURCE:-llm-embedder:python_stdlib/files}
LM=${LM:-smollm2}                               # the teacher and the LM whose perplexity is measured
ENCODER=${ENCODER:-minilm}
CHUNK=${CHUNK:-64}                              # tokens per chunk (and per target)
CONTEXT_CHUNKS=${CONTEXT_CHUNKS:-2}             # query chunk + earlier context chunks
UNIT=${UNIT:-chunk}                             # candidate unit: chunk | block
TARGETS=${TARGETS:-defref}                      # target selection of the main study: any | defref
N_CAND=${N_CAND:-8}                             # candidate keys per target
TEST_FILES=${TEST_FILES:-10}; VALID_FILES=${VALID_FILES:-4}
N_TRAIN=${N_TRAIN:-120}; N_VALID=${N_VALID:-30}; N_TEST=${N_TEST:-64}
N_REL=${N_REL:-32}                              # train targets of the any-chunk setting (reliability table only)
SEEDS=${SEEDS:-"1 2"}                           # training seeds per recipe
EPOCHS=${EPOCHS:-3}; BATCH=${BATCH:-8}; LR=${LR:-2e-5}
THREADS=${THREADS:-1}
K=${K:-1}                                       # keys given to the LM at evaluation
export OMP_NUM_THREADS=$THREADS
NICE="nice -n 10"

build() {  # build TARGETS DIR N_TRAIN
  [ -f "$2/test.json" ] && { echo "data: $2 exists"; return; }
  $NICE $PY -m llm_embedder.cli convert lrlm "$SOURCE" --output_dir "$2" --tokenizer "$LM" --chunk_tokens "$CHUNK" \
    --context_chunks "$CONTEXT_CHUNKS" --candidate_unit "$UNIT" --targets "$1" --n_candidates "$N_CAND" \
    --test_files "$TEST_FILES" --valid_files "$VALID_FILES" --max_train_targets "$3" --max_valid_targets "$N_VALID" \
    --max_test_targets "$N_TEST"
}

score() {  # score DIR SPLIT
  local out="$1/$2.scored.$LM.json"
  [ -f "$out" ] && { echo "score: $out exists"; return; }
  /usr/bin/time -f "score $1/$2: %e s wall" $NICE $PY -m llm_embedder.lrlm.teacher --eval_data "$1/$2.json" \
    --model_name_or_path "$LM" --save_name "$LM" --threads "$THREADS"
}

stage_data() { build "$TARGETS" "$OUT/data" "$N_TRAIN"; build any "$OUT/data-any" "$N_REL"; }
stage_score() { score "$OUT/data" train; score "$OUT/data" valid; score "$OUT/data" test; score "$OUT/data-any" train; }

STAGES=${*:-data score train eval report}
for s in $STAGES; do "stage_$s"; done
