"""The model directory format: Hugging Face weights + tokenizer, sentence-transformers modules, our settings.

A saved encoder loads with ``AutoModel.from_pretrained(dir)``, ``SentenceTransformer(dir)`` (same pooling,
normalisation, projection and instructions as prompts) and ``DenseEncoder.from_pretrained(dir)`` (which
also reads ``llm_embedder.json``). This module reads a directory's sentence-transformers layout and writes
one tower (query, or the separate key encoder) in that format; safetensors only, LoRA merged with the
adapter kept beside it.
"""
from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from ..errors import UserError
from ..io import write_json
from .pooling import get_pooling

logger = logging.getLogger(__name__)

SETTINGS_FILE = "llm_embedder.json"  # our settings, written beside the HF / sentence-transformers files
KEY_ENCODER_DIR = "key_encoder"  # untied encoders: the key encoder's own full directory
LORA_ADAPTER_DIR = "lora_adapter"  # the peft adapter, kept beside the merged weights
FORMAT_VERSION = 1
# sentence-transformers pooling modes we reproduce, by their name in our registry's terms.
_ST_POOLING_TO_OURS = {"cls": "cls", "mean": "mean", "lasttoken": "last"}
_ST_LEGACY_POOLING_KEYS = {"pooling_mode_cls_token": "cls", "pooling_mode_mean_tokens": "mean",
                           "pooling_mode_max_tokens": "max", "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
                           "pooling_mode_weightedmean_tokens": "weightedmean", "pooling_mode_lasttoken": "lasttoken"}


def load_json(path: Path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"{path}: cannot read JSON ({err})") from None


def read_sentence_transformers_layout(path: Path) -> dict:
    """What a sentence-transformers directory says about pooling, normalisation and a Dense layer.

    Returns ``{}`` when ``path`` has no ``modules.json``; otherwise ``pooling_method`` (our name, or the
    unsupported ST mode prefixed with ``unsupported:``), ``normalize``, ``dense_dir`` and ``ignored`` modules.
    """
    modules_file = path / "modules.json"
    if not modules_file.is_file():
        return {}
    modules = load_json(modules_file)
    if not isinstance(modules, list):
        raise UserError(f"{modules_file}: expected a list of modules")
    layout: dict = {"normalize": False, "ignored": []}
    for module in modules:
        kind = str(module.get("type", "")).rsplit(".", 1)[-1]
        folder = path / module.get("path", "")
        if kind == "Transformer":
            continue
        if kind == "Pooling":
            config = load_json(folder / "config.json")
            modes = config.get("pooling_mode") or [st for key, st in _ST_LEGACY_POOLING_KEYS.items() if config.get(key)]
            modes = [modes] if isinstance(modes, str) else list(modes)
            supported = len(modes) == 1 and modes[0] in _ST_POOLING_TO_OURS
            layout["pooling_method"] = _ST_POOLING_TO_OURS[modes[0]] if supported else "unsupported:" + "+".join(modes)
        elif kind == "Normalize":
            layout["normalize"] = True
        elif kind == "Dense":
            layout["dense_dir"] = folder
        else:
            layout["ignored"].append(kind)
    return layout


def load_projection(folder: Path) -> nn.Linear:
    """A projection saved as a sentence-transformers ``Dense`` folder (identity activation, safetensors)."""
    from safetensors.torch import load_file

    config = load_json(folder / "config.json")
    activation = config.get("activation_function", "torch.nn.modules.linear.Identity")
    if not str(activation).endswith("Identity"):
        raise UserError(f"{folder / 'config.json'}: Dense activation {activation} is not supported (only Identity)")
    weights_file = folder / "model.safetensors"
    if not weights_file.is_file():
        raise UserError(f"{folder}: no model.safetensors (pickle weights are never loaded)")
    weights = load_file(weights_file)
    bias = bool(config.get("bias", True))
    linear = nn.Linear(int(config["in_features"]), int(config["out_features"]), bias=bias)
    state = {"weight": weights["linear.weight"]}
    if bias:
        state["bias"] = weights["linear.bias"]
    linear.load_state_dict(state)
    return linear


def is_peft(model) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # peft is a dependency, but the encoder works without it when LoRA is off
        return False
    return isinstance(model, PeftModel)


def settings_record(encoder, instructions: dict, side: str | None = None) -> dict:
    import transformers

    from .. import __version__

    record = {"format_version": FORMAT_VERSION, **encoder.settings(),
              "similarity_fn_name": encoder.similarity_fn_name,
              "instructions": {task: {"query": q, "key": k} for task, (q, k) in instructions.items()},
              "lora": None if encoder.lora is None else {**encoder.lora, "merged": True, "adapter_dir": LORA_ADAPTER_DIR},
              "versions": {"llm_embedder": __version__, "torch": torch.__version__,
                           "transformers": transformers.__version__}}
    if side is not None:  # the key encoder's own directory: a standalone, single-encoder description
        record.update(tie_encoders=True, role=side)
    return record



def write_tower(encoder, folder: Path, side: str, instructions: dict) -> None:
    """One full model directory: HF weights + tokenizer, sentence-transformers modules, adapter if any."""
    model, projection = encoder._tower(side)
    folder.mkdir(parents=True, exist_ok=True)
    if is_peft(model):
        merged = copy.deepcopy(model).merge_and_unload()
        merged.save_pretrained(folder, safe_serialization=True)
        del merged
        model.save_pretrained(folder / LORA_ADAPTER_DIR, safe_serialization=True)
    else:
        model.save_pretrained(folder, safe_serialization=True)
    encoder.tokenizer.save_pretrained(folder)
    write_sentence_transformers(encoder, folder, projection, instructions)
    if side == "key":
        write_json(folder / SETTINGS_FILE, settings_record(encoder, instructions, side="key"))



def write_sentence_transformers(encoder, folder: Path, projection: nn.Linear | None, instructions: dict) -> None:
    """modules.json and module folders in the classic layout every sentence-transformers >= 2.3 loads."""
    import sentence_transformers
    import transformers

    st_mode = get_pooling(encoder.pooling_method).sentence_transformers_mode
    if st_mode is None:
        logger.warning("pooling '%s' has no sentence-transformers equivalent: %s loads with transformers and "
                       "llm-embedder only", encoder.pooling_method, folder)
        return
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    write_json(folder / "sentence_bert_config.json",
               {"max_seq_length": max(encoder.max_lengths.values()), "do_lower_case": False})
    write_json(folder / "1_Pooling" / "config.json",
               {"word_embedding_dimension": encoder.hidden_size,
                **{key: st_mode == mode for key, mode in _ST_LEGACY_POOLING_KEYS.items()},
                "include_prompt": True})
    if projection is not None:
        from safetensors.torch import save_file

        dense = folder / f"{len(modules)}_Dense"
        dense.mkdir()
        write_json(dense / "config.json", {"in_features": projection.in_features,
                                           "out_features": projection.out_features,
                                           "bias": projection.bias is not None,
                                           "activation_function": "torch.nn.modules.linear.Identity"})
        tensors = {"linear.weight": projection.weight.detach().cpu().contiguous()}
        if projection.bias is not None:
            tensors["linear.bias"] = projection.bias.detach().cpu().contiguous()
        save_file(tensors, str(dense / "model.safetensors"), metadata={"format": "pt"})
        modules.append({"idx": len(modules), "name": str(len(modules)), "path": dense.name,
                        "type": "sentence_transformers.models.Dense"})
    if encoder.normalize:
        normalize = folder / f"{len(modules)}_Normalize"
        normalize.mkdir()
        modules.append({"idx": len(modules), "name": str(len(modules)), "path": normalize.name,
                        "type": "sentence_transformers.models.Normalize"})
    write_json(folder / "modules.json", modules)
    write_json(folder / "config_sentence_transformers.json", {
        "__version__": {"sentence_transformers": sentence_transformers.__version__,
                        "transformers": transformers.__version__, "pytorch": torch.__version__},
        "model_type": "SentenceTransformer",
        "prompts": sentence_transformers_prompts(instructions),
        "default_prompt_name": None,
        "similarity_fn_name": encoder.similarity_fn_name,
    })




def sentence_transformers_prompts(instructions: Mapping[str, tuple[str, str]]) -> dict[str, str]:
    """ST prompts: ``query`` / ``document`` from the first task, plus ``<task>_query`` / ``<task>_key`` for
    every task when there are several. Empty instructions are left out (no prompt means the same)."""
    prompts: dict[str, str] = {}
    items = list(instructions.items())
    if items:
        query, key = items[0][1]
        prompts.update(query=query, document=key)
    if len(items) > 1:
        for task, (query, key) in items:
            prompts[f"{task}_query"] = query
            prompts[f"{task}_key"] = key
    return {name: text for name, text in prompts.items() if text}
