"""`python -m evaluation.eval_retrieval`: retrieval evaluation and hard-negative mining.

Thin entry point; the work is in :mod:`llm_embedder.retrieval.eval_cli` (see docs/retrieval.md).
"""
from llm_embedder.retrieval.eval_cli import main

if __name__ == "__main__":
    raise SystemExit(main())
