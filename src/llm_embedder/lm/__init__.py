"""llm_embedder.lm"""
