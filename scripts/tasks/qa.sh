#!/usr/bin/env bash
# Question answering (MS MARCO-style toy file): contrastive + stable distillation from LLM rewards.
source "$(dirname "$0")/../lib/common.sh"
train_toy_task qa "${OUT:-runs/tasks/qa}" --stable_distill --contrastive_weight 1 --distill_weight 1 "$@"
