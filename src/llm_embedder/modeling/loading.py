"""What :meth:`DenseEncoder.from_pretrained` needs around the HF loading: config overrides, dtype names, LoRA.

Kept apart from :mod:`.encoder` so that module holds the embedder itself (text -> vector, saving).
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..errors import UserError

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def apply_config_overrides(config, overrides: str | None) -> None:
    """Set ``key=value,key=value`` fields of a HF config in place (``--config_overrides``); only existing fields."""
    if not overrides:
        return
    try:
        config.update_from_string(overrides)
    except ValueError as err:
        raise UserError(f"--config_overrides: {err} (fields of {type(config).__name__})") from None


def _torch_dtype(value):
    if value is None or isinstance(value, torch.dtype) or value == "auto":
        return value
    if value in _DTYPES:
        return _DTYPES[value]
    raise UserError(f"--torch_dtype: unknown dtype {value!r} (choose from auto, {', '.join(_DTYPES)})")


def _add_lora(model, rank: int, alpha: float, dropout: float, target_modules):
    """Wrap ``model`` with fresh LoRA adapters; the base weights are frozen by peft."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules, bias="none")
    try:
        return get_peft_model(model, config)
    except ValueError as err:
        raise UserError(f"--lora_target_modules: {err}".replace("\n", " ")) from None


def _resume_lora(model, key_model, adapter_dir: Path, saved: dict):
    """``model`` with the trainable adapters of ``adapter_dir`` and their settings (``lora`` record)."""
    from peft import PeftModel

    if not (adapter_dir / "adapter_config.json").is_file():
        raise UserError(f"--lora_adapter: {adapter_dir} has no adapter_config.json (give the lora_adapter/ folder of a saved model)")
    if (saved.get("lora") or {}).get("merged"):
        raise UserError("--lora_adapter: --model_name_or_path already has LoRA weights merged in; give the base model")
    if key_model is not None:
        raise UserError("--lora_adapter: resuming adapters of untied encoders is not supported")
    model = PeftModel.from_pretrained(model, adapter_dir, is_trainable=True)
    config = model.peft_config["default"]
    targets = config.target_modules
    return model, {"rank": config.r, "alpha": float(config.lora_alpha), "dropout": float(config.lora_dropout),
                   "target_modules": targets if isinstance(targets, str) else sorted(targets)}
