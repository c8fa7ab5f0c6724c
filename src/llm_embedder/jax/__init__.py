"""JAX/Flax trainer: NNX BERT encoder, jnp losses, a jit train step on a device mesh, orbax checkpoints.

Reads the same schema files through the project's own dataset, sampler and tokenisation, computes the
same losses as :mod:`llm_embedder.modeling.losses`, and exports the same model directory as the torch
trainer (docs/jax.md). Nothing on the torch path imports this package, so jax stays an optional extra.
"""
