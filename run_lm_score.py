"""Score keys with a causal LM into teacher_scores (see docs/lm-scoring.md); thin wrapper over llm_embedder.lm.run."""
from llm_embedder.lm.run import main

if __name__ == "__main__":
    raise SystemExit(main())
