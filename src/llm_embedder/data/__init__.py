"""llm_embedder.data"""
