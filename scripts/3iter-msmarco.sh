#!/usr/bin/env bash
# Three rounds of mine -> LM-score -> train on MS MARCO in the schema (records with answers).
#   bash scripts/3iter-msmarco.sh TRAIN.json DEV.json CORPUS.jsonl     (convert with `llm-embedder convert beir`)
source "$(dirname "$0")/lib/3iter.sh"
[[ $# == 3 ]] || { echo "usage: $0 TRAIN.json DEV.json CORPUS.jsonl" >&2; exit 2; }
TEMPLATE=${TEMPLATE:-qa} three_iterations msmarco "$1" "$2" "$3"
