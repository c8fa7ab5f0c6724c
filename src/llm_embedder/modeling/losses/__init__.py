"""llm_embedder.modeling.losses"""
