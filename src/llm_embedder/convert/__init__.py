"""llm_embedder.convert"""
