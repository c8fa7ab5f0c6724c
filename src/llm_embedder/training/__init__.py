"""llm_embedder.training"""
