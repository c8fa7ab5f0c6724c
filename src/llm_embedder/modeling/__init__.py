"""llm_embedder.modeling"""
