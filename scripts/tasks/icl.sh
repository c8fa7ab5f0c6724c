#!/usr/bin/env bash
# In-context example retrieval: stable distillation, a random one of the LM-chosen positives.
source "$(dirname "$0")/../lib/common.sh"
train_toy_task icl "${OUT:-runs/tasks/icl}" --stable_distill --select_positive random --contrastive_weight 0 "$@"
