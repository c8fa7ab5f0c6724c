"""Hugging Face ``model.safetensors`` <-> NNX BERT parameters (name map + transposes), and model loading.

The NNX attributes mirror Hugging Face's names, so a parameter path ``encoder/layer/0/attention/self/
query/kernel`` is the torch tensor ``encoder.layer.0.attention.self.query.weight`` transposed; embedding
tables and LayerNorm scales map one to one. Loading is strict: a weight the model needs but the file
lacks, or a file weight the model does not know, is one ``UserError`` naming it (the pooler head and
the ``position_ids`` buffer are known and ignored: the embedder pools token states itself).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..resources import resolve_encoder

# file tensors a BertModel checkpoint may hold that the embedder does not use
IGNORED_PREFIXES = ("pooler.", "embeddings.position_ids")
_PREFIXES = ("bert.",)  # BertFor* checkpoints nest the encoder under this


def torch_name(path: tuple) -> tuple[str, bool]:
    """``(torch name, transpose?)`` of an NNX parameter path."""
    *parts, leaf = [str(p) for p in path]
    if leaf == "kernel":
        return ".".join(parts + ["weight"]), True
    if leaf in ("embedding", "scale"):
        return ".".join(parts + ["weight"]), False
    return ".".join(parts + [leaf]), False


def read_safetensors(folder: Path) -> dict[str, np.ndarray]:
    """Every tensor of ``folder/model.safetensors`` (sharded files via their index), as float32 numpy."""
    from safetensors.numpy import load_file

    single, index = folder / "model.safetensors", folder / "model.safetensors.index.json"
    if single.is_file():
        files = [single]
    elif index.is_file():
        files = sorted({folder / name for name in json.loads(index.read_text())["weight_map"].values()})
    else:
        raise UserError(f"{folder}: no model.safetensors (the JAX trainer loads safetensors only; "
                        "convert with AutoModel.from_pretrained(...).save_pretrained(..., safe_serialization=True))")
    tensors: dict[str, np.ndarray] = {}
    for file in files:
        for name, value in load_file(str(file)).items():
            for prefix in _PREFIXES:
                if name.startswith(prefix):
                    name = name[len(prefix):]
            tensors[name] = value
    return tensors


def assign_weights(model, tensors: dict[str, np.ndarray], where: str) -> None:
    """Copy ``tensors`` into ``model``'s parameters in place; missing or unexpected names raise."""
    import jax.numpy as jnp
    from flax import nnx

    state = nnx.state(model, nnx.Param)
    flat = dict(nnx.to_flat_state(state))
    used = set()
    for path, variable in flat.items():
        name, transpose = torch_name(path)
        if name not in tensors:
            raise UserError(f"{where}: missing weight '{name}' (needed by the {len(flat)}-tensor BERT encoder)")
        value = tensors[name].T if transpose else tensors[name]
        if tuple(value.shape) != tuple(variable.get_value().shape):
            raise UserError(f"{where}: weight '{name}' has shape {tuple(tensors[name].shape)}, expected "
                            f"{tuple(variable.get_value().shape[::-1] if transpose else variable.get_value().shape)}")
        variable.set_value(jnp.asarray(value, dtype=variable.get_value().dtype))
        used.add(name)
    unexpected = sorted(n for n in tensors if n not in used and not n.startswith(IGNORED_PREFIXES))
    if unexpected:
        raise UserError(f"{where}: unexpected weight '{unexpected[0]}'" +
                        (f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else "") +
                        " (not a BERT encoder weight)")
    nnx.update(model, nnx.from_flat_state(flat))


def torch_state_dict(tower) -> dict[str, np.ndarray]:
    """``{torch name: float32 numpy}`` of one BERT tower, as ``BertModel.state_dict()`` names them."""
    from flax import nnx

    out = {}
    for path, variable in nnx.to_flat_state(nnx.state(tower, nnx.Param)):
        name, transpose = torch_name(path)
        value = np.asarray(variable.get_value(), dtype=np.float32)
        out[name] = np.ascontiguousarray(value.T if transpose else value)
    return out


@dataclass
class LoadedEncoder:
    """A JAX dual encoder, its tokenizer and the settings the torch encoder would use for the same folder."""

    model: object  # DualEncoder
    tokenizer: object
    settings: dict
    instructions: dict
    path: Path


def load_encoder(name_or_path, *, pooling_method: str | None = None, normalize: bool | None = None,
                 query_max_length: int | None = None, key_max_length: int | None = None,
                 tie_encoders: bool | None = None, add_pooler: bool | None = None, seed: int = 0) -> LoadedEncoder:
    """Load an alias (``minilm``) or a model folder with the torch encoder's settings resolution.

    Settings come from the arguments, else the folder's ``llm_embedder.json`` / sentence-transformers
    modules, else the torch defaults (:meth:`DenseEncoder._resolve_settings`), so both trainers embed a
    folder the same way. Untied towers read ``key_encoder/`` when the folder has one, else copy the query tower.
    """
    from flax import nnx
    from transformers import AutoTokenizer

    from ..modeling.encoder import KEY_ENCODER_DIR
    from ..modeling.encoder_settings import DEFAULTS, check_settings, resolve_settings
    from .model import BertConfig, DualEncoder, check_pooling

    explicit = {"pooling_method": pooling_method, "normalize": normalize, "query_max_length": query_max_length,
                "key_max_length": key_max_length, "tie_encoders": tie_encoders, "add_pooler": add_pooler,
                "projection_out_dim": None}
    if pooling_method is not None:
        check_pooling(pooling_method)
    check_settings({k: DEFAULTS[k] if v is None else v for k, v in explicit.items()}, "--")
    path = resolve_encoder(name_or_path)
    settings, saved, _ = resolve_settings(path, explicit)
    check_pooling(settings["pooling_method"])
    if settings["add_pooler"]:
        raise UserError("--add_pooler: the JAX trainer has no projection layer; train without it")
    if saved.get("append_eos"):
        raise UserError(f"{path}: saved with --append_eos_token (EOS last-token pooling), which the JAX BERT encoder does not do")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise UserError(f"{path}: no config.json")
    config = BertConfig.from_dict(json.loads(config_file.read_text()), str(config_file))
    for side in ("query", "key"):
        if settings[f"{side}_max_length"] > config.max_position_embeddings:
            raise UserError(f"--{side}_max_length: {settings[f'{side}_max_length']} exceeds the model's "
                            f"{config.max_position_embeddings} positions ({path})")
    model = DualEncoder(config, pooling_method=settings["pooling_method"], normalize=settings["normalize"],
                        tie_encoders=settings["tie_encoders"], rngs=nnx.Rngs(seed))
    assign_weights(model.query_model, read_safetensors(path), str(path))
    if model.key_model is not None:
        key_dir = path / KEY_ENCODER_DIR if saved.get("tie_encoders") is False else path
        assign_weights(model.key_model, read_safetensors(key_dir), str(key_dir))
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=False)
    return LoadedEncoder(model, tokenizer, settings, saved.get("instructions") or {}, path)
