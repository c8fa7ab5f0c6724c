"""Pooling: turn a transformer's token states into one vector per text.

Methods are looked up by name in a small registry (``--pooling_method``), so a new one is one
:func:`register_pooling` call. Every built-in method reads the attention mask per row, so it gives the
same vector for a text whatever side the batch was padded on and however long its neighbours are:

- ``cls``: the first real token of each row (index 0 with right padding; after the pads with left padding).
- ``mean``: the average of the real tokens (pads excluded).
- ``last`` (alias ``eos``): the last real token of each row (decoder models put the summary there).

Each method records the matching sentence-transformers ``Pooling`` mode, so a saved encoder loads in
``SentenceTransformer`` with the same pooling.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..errors import UserError

PoolFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class PoolingMethod:
    """A named pooling function ``(last_hidden_state [N, L, H], attention_mask [N, L]) -> [N, H]``."""

    name: str
    fn: PoolFn
    sentence_transformers_mode: str | None  # the ``Pooling(pooling_mode=...)`` that reproduces it, if any


def _position_weights(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions 1..L where the mask is set and 0 elsewhere, so argmax finds the last real token per row."""
    positions = torch.arange(1, attention_mask.shape[1] + 1, device=attention_mask.device)
    return (attention_mask > 0).long() * positions


def cls_pool(last_hidden_state: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The first real token of each row (argmax of a 0/1 mask is its first 1)."""
    first = (attention_mask > 0).long().argmax(dim=1)
    return last_hidden_state[torch.arange(last_hidden_state.shape[0], device=first.device), first]


def mean_pool(last_hidden_state: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The mean of the real tokens of each row; pads contribute nothing."""
    mask = attention_mask.unsqueeze(-1).to(last_hidden_state.dtype)
    summed = (last_hidden_state * mask).sum(dim=1)
    count = mask.sum(dim=1).clamp(min=1e-9)
    return summed / count


def last_pool(last_hidden_state: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The last real token of each row, found per row (so left- and right-padded rows both work)."""
    last = _position_weights(attention_mask).argmax(dim=1)
    return last_hidden_state[torch.arange(last_hidden_state.shape[0], device=last.device), last]


_REGISTRY: dict[str, PoolingMethod] = {}


def register_pooling(name: str, fn: PoolFn, sentence_transformers_mode: str | None = None,
                     overwrite: bool = False) -> PoolingMethod:
    """Add a pooling method under ``name`` (``overwrite`` to replace one)."""
    if name in _REGISTRY and not overwrite:
        raise UserError(f"--pooling_method: '{name}' is already registered")
    method = PoolingMethod(name, fn, sentence_transformers_mode)
    _REGISTRY[name] = method
    return method


register_pooling("cls", cls_pool, "cls")
register_pooling("mean", mean_pool, "mean")
register_pooling("last", last_pool, "lasttoken")
register_pooling("eos", last_pool, "lasttoken")


def available_poolings() -> list[str]:
    """Names accepted by ``--pooling_method``."""
    return sorted(_REGISTRY)


def get_pooling(name: str) -> PoolingMethod:
    """The registered method called ``name``, or a UserError naming ``--pooling_method``."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UserError(f"--pooling_method: unknown pooling '{name}' "
                        f"(choose from {', '.join(available_poolings())})") from None


def pool(last_hidden_state: torch.Tensor, attention_mask: torch.Tensor, method: str) -> torch.Tensor:
    """Pool ``last_hidden_state [N, L, H]`` with ``attention_mask [N, L]`` by ``method`` -> ``[N, H]``."""
    pooling = get_pooling(method)
    if last_hidden_state.dim() != 3 or attention_mask.shape != last_hidden_state.shape[:2]:
        raise ValueError(f"pool: expected hidden states [N, L, H] and a mask [N, L], got "
                         f"{tuple(last_hidden_state.shape)} and {tuple(attention_mask.shape)}")
    return pooling.fn(last_hidden_state, attention_mask)
