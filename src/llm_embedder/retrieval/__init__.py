"""llm_embedder.retrieval"""
