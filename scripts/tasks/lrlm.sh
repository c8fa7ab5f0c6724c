#!/usr/bin/env bash
# Long-range language modelling: the teacher picks the positive chunk (pos is empty), margin-filtered.
source "$(dirname "$0")/../lib/common.sh"
train_toy_task lrlm "${OUT:-runs/tasks/lrlm}" --select_positive teacher --teacher_temperature 0.1 \
  --teacher_scores_margin 0.1 --contrastive_weight 0 --distill_weight 1 "$@"
