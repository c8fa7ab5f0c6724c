"""QLoRA: ``--load_in_4bit`` / ``--load_in_8bit`` load the frozen base weights through bitsandbytes.

bitsandbytes kernels run on CUDA GPUs only, so the options are checked before any work starts: on a
machine without a CUDA GPU or without the ``bitsandbytes`` package the run stops with one line saying
which is missing. Quantised weights cannot be trained themselves, so LoRA (``--lora`` / ``--lora_rank``)
is required. 4-bit uses NF4 with double quantisation and bf16 compute (the QLoRA paper's recipe).
"""
from __future__ import annotations

import importlib.util

from ..errors import UserError


def quantization_config(load_in_4bit: bool, load_in_8bit: bool, lora_rank: int):
    """A ``transformers.BitsAndBytesConfig`` for the options, or None when neither is set."""
    if not (load_in_4bit or load_in_8bit):
        return None
    flag = "--load_in_4bit" if load_in_4bit else "--load_in_8bit"
    if load_in_4bit and load_in_8bit:
        raise UserError("--load_in_4bit / --load_in_8bit: choose one")
    if not lora_rank:
        raise UserError(f"{flag}: quantised base weights cannot be trained; add --lora (or --lora_rank N) for QLoRA")
    import torch

    missing = [what for what, ok in (("a CUDA GPU", torch.cuda.is_available()),
                                     ("the bitsandbytes package", importlib.util.find_spec("bitsandbytes") is not None))
               if not ok]
    if missing:
        raise UserError(f"{flag}: QLoRA needs a CUDA GPU and bitsandbytes (pip install bitsandbytes); "
                        f"this machine has no {' and no '.join(m.removeprefix('a ').removeprefix('the ') for m in missing)}")
    from transformers import BitsAndBytesConfig

    if load_in_4bit:
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=torch.bfloat16)
    return BitsAndBytesConfig(load_in_8bit=True)
