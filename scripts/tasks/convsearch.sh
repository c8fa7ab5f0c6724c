#!/usr/bin/env bash
# Conversational search (QReCC-style): contrastive only.
source "$(dirname "$0")/../lib/common.sh"
train_toy_task convsearch "${OUT:-runs/tasks/convsearch}" --contrastive_weight 1 --distill_weight 0 "$@"
