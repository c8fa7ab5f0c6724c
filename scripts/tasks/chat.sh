#!/usr/bin/env bash
# Multi-session chat: KL distillation over the past sessions (history), the teacher picks the positive.
source "$(dirname "$0")/../lib/common.sh"
train_toy_task chat "${OUT:-runs/tasks/chat}" --select_positive teacher --teacher_temperature 0.1 \
  --contrastive_weight 0 --distill_weight 1 "$@"
