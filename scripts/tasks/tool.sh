#!/usr/bin/env bash
# Tool retrieval (ToolBench-style): contrastive only (the file has no teacher scores).
source "$(dirname "$0")/../lib/common.sh"
train_toy_task tool "${OUT:-runs/tasks/tool}" --contrastive_weight 1 --distill_weight 0 "$@"
