"""The LM's perplexity given retrieved keys (long-range LM on code); logic in llm_embedder.lrlm.eval_cli."""
from llm_embedder.lrlm.eval_cli import main

if __name__ == "__main__":
    raise SystemExit(main())
