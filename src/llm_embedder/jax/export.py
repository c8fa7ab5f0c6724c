"""Export trained JAX parameters as the torch trainer's model directory (one writer for both trainers).

The parameters are copied, under their torch names, into a :class:`~llm_embedder.modeling.encoder.
DenseEncoder` loaded from the run's base model with the run's settings, and that encoder's own
``save_pretrained`` writes the folder: torch-named safetensors, tokenizer, sentence-transformers modules,
``llm_embedder.json`` with the instructions (a ``key_encoder/`` folder when the towers are untied). So
``DenseEncoder``, ``AutoModel``, ``SentenceTransformer`` and the evaluation read it like any other.
"""
from __future__ import annotations

from pathlib import Path

from flax import nnx

from .weights import IGNORED_PREFIXES, LoadedEncoder, torch_state_dict


def to_dense_encoder(loaded: LoadedEncoder, graphdef, params):
    """A torch DenseEncoder holding ``params`` (the base model's pooler head, unused, stays as it was)."""
    import torch

    from ..modeling.encoder import DenseEncoder

    s = loaded.settings
    encoder = DenseEncoder.from_pretrained(loaded.path, pooling_method=s["pooling_method"], normalize=s["normalize"],
                                           query_max_length=s["query_max_length"], key_max_length=s["key_max_length"],
                                           tie_encoders=s["tie_encoders"])
    model = nnx.merge(graphdef, params)
    for jax_tower, torch_tower in ((model.query_model, encoder.model), (model.key_model, encoder.key_model)):
        if jax_tower is None:
            continue
        tensors = {name: torch.from_numpy(value.copy()) for name, value in torch_state_dict(jax_tower).items()}
        missing, unexpected = torch_tower.load_state_dict(tensors, strict=False)
        missing = [name for name in missing if not name.startswith(IGNORED_PREFIXES)]
        if missing or unexpected:
            raise RuntimeError(f"export: torch model lacks {unexpected[:3]} / JAX params lack {missing[:3]}")
    return encoder.eval()


def export_model(loaded: LoadedEncoder, graphdef, params, output_dir: str | Path, instructions: dict) -> Path:
    """Write the model folder into ``output_dir`` (atomically, as ``DenseEncoder.save_pretrained`` does)."""
    return to_dense_encoder(loaded, graphdef, params).save_pretrained(output_dir, instructions=instructions)
