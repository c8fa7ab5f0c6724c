"""`python -m evaluation.eval_retrieval`: thin entry point into llm_embedder.retrieval."""
