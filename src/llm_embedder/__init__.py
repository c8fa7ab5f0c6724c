"""llm-embedder: one dense embedder for every retrieval need of an LLM."""
__version__ = "0.1.0"
