"""InfoNCE (contrastive) loss with in-batch and optional cross-device negatives.

Inputs: ``q [B, D]``, ``k [B*G, D]`` (positive first in each group), ``group_size`` G.

    s(q, k) = <q, k> / cos_temperature
    L = -1/B * sum_b log( exp s(q_b, k_{b,0}) / sum_{k in K_b} exp s(q_b, k) )

with K_b = all B*G keys of the batch (``inbatch_negatives=True``, target column b*G) or only query b's
own G keys (``inbatch_negatives=False``, target 0). With ``cross_device=True`` (requires in-batch
negatives) q and k are all-gathered first (``gather_with_grad``), so B is the global batch and rank r's
queries are rows offset by the sizes of ranks < r, their targets at (offset + j) * G; the value equals
the single-process loss on the global batch and the caller scales it by the world size before backward.

Reference: van den Oord et al. 2018 (CPC); Karpukhin et al. 2020 (DPR in-batch negatives);
Tevatron ``EncoderModel``; LLM-Embedder ``_compute_loss`` (contrastive branch).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..distributed import gather_with_grad
from .scoring import batch_scores, check_layout, group_scores, own_key_columns


def infonce_loss(q: torch.Tensor, k: torch.Tensor, group_size: int, *, cos_temperature: float = 0.01,
                 inbatch_negatives: bool = True, cross_device: bool = False) -> torch.Tensor:
    """Mean -log softmax of each query's positive among its candidate keys (see module docstring)."""
    check_layout(q, k, group_size)
    if not inbatch_negatives:
        if cross_device:
            raise ValueError("cross_device needs inbatch_negatives: other ranks' keys are in-batch negatives")
        scores = group_scores(q, k, group_size, cos_temperature)
        return F.cross_entropy(scores, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))
    if cross_device:
        q, k = gather_with_grad(q), gather_with_grad(k)
    scores = batch_scores(q, k, cos_temperature)
    return F.cross_entropy(scores, own_key_columns(q.shape[0], group_size, q.device))
