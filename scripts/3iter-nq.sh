#!/usr/bin/env bash
# Three rounds of mine -> LM-score -> train on Natural Questions in the schema (records with answers).
#   bash scripts/3iter-nq.sh TRAIN.json TEST.json CORPUS.jsonl
source "$(dirname "$0")/lib/3iter.sh"
[[ $# == 3 ]] || { echo "usage: $0 TRAIN.json TEST.json CORPUS.jsonl" >&2; exit 2; }
TEMPLATE=${TEMPLATE:-qa} three_iterations nq "$1" "$2" "$3"
