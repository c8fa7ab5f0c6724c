#!/usr/bin/env bash
# Three rounds of mine -> LM-score -> train on SciFact (runs here end to end; see scripts/lib/3iter.sh for
# the sizes you can set). SciFact has no answers, so the LM scores query likelihood p(query | key).
source "$(dirname "$0")/lib/3iter.sh"
TEMPLATE=${TEMPLATE:-query_likelihood} three_iterations scifact \
  llm-embedder:scifact/train.json llm-embedder:scifact/test.json llm-embedder:scifact/corpus.jsonl
