"""An inference backend that runs every Linear layer of the transformer as one oneDNN call (``--encode_backend onednn``).

Where a profile of :meth:`DenseEncoder.encode` on a CPU shows the time (``benchmarks/results/bench_encode_profile.txt``):
about half in the matrix products of the Linear layers, and another sixth in copying each bias into the
output before its product (that is how ``addmm`` adds a bias), plus a separate pass for the GELU. This backend
keeps torch (and its flash attention) but replaces each ``nn.Linear`` of a copy of the tower with
:class:`FusedLinear`: the weight packed once into oneDNN's layout, the bias added inside the product and, for
BERT-style intermediate layers (a Linear followed by the exact, erf GELU), the GELU too; in BERT-style output
blocks (``LayerNorm(dense(h) + residual)``), the residual add too (oneDNN's binary post-op, which saves the
separate pass over the ``[N, L, H]`` output). The arithmetic stays
float32, so the vectors equal the torch ones within rounding (a probe batch is checked against torch, 1e-5).

It uses ``torch.ops.mkldnn._linear_pointwise``, the operator torch.compile's CPU backend emits for the same
fusion; where a torch build lacks it, the backend says so in one line. Inference only: the copy is made from
the weights at the time it is built; the encoder it wraps is not changed.
"""
from __future__ import annotations

import copy
import logging

from ..errors import UserError
from .backends import InferenceEncoder

logger = logging.getLogger(__name__)

PACK_ROWS = 8192  # the matrix-product height oneDNN packs the weights for (32 texts x 256 tokens)


def require_onednn():
    """``torch.ops.mkldnn``, or one line saying this torch build cannot run the backend."""
    import torch

    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
            and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")):
        raise UserError(f"--encode_backend onednn: this torch build ({torch.__version__}) has no oneDNN linear "
                        "operators; use --encode_backend torch")
    return torch.ops.mkldnn


def _fused_linear_class():
    import torch

    class FusedLinear(torch.nn.Module):
        """``nn.Linear`` (+ optional erf GELU) for inference as one oneDNN call on a packed copy of the weight."""

        def __init__(self, linear: torch.nn.Linear, gelu: bool = False):
            super().__init__()
            weight = linear.weight.detach()
            self.packed = torch.ops.mkldnn._reorder_linear_weight(weight, PACK_ROWS)
            self.bias = None if linear.bias is None else linear.bias.detach()
            self.attr, self.algorithm = ("gelu", "none") if gelu else ("none", "")

        def forward(self, x):
            return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, self.attr, [], self.algorithm)

        def plus(self, x, residual):
            """``self(x) + residual``, the add inside the same oneDNN call."""
            return torch.ops.mkldnn._linear_pointwise.binary(x, residual, self.packed, self.bias, "add")

    return FusedLinear


def _fused_output_class():
    import torch

    class FusedResidualOutput(torch.nn.Module):
        """A BERT-style output block (``LayerNorm(dropout(dense(h)) + residual)``) for inference: the dense layer
        and the residual add one oneDNN call, then the block's own LayerNorm (dropout is the identity in eval)."""

        def __init__(self, block, dense):
            super().__init__()
            self.dense, self.LayerNorm = dense, block.LayerNorm

        def forward(self, hidden_states, input_tensor):
            return self.LayerNorm(self.dense.plus(hidden_states, input_tensor))

    return FusedResidualOutput


def _is_residual_output(module) -> bool:
    """BERT / RoBERTa / MPNet ``*Output`` / ``*SelfOutput``: ``dense``, ``dropout``, ``LayerNorm`` and
    ``forward(hidden_states, input_tensor)`` computing ``LayerNorm(dropout(dense(h)) + input_tensor)``."""
    import inspect

    import torch

    if not (isinstance(getattr(module, "dense", None), torch.nn.Linear)
            and isinstance(getattr(module, "LayerNorm", None), torch.nn.LayerNorm)
            and isinstance(getattr(module, "dropout", None), torch.nn.Dropout)):
        return False
    try:
        params = list(inspect.signature(module.forward).parameters)
    except (TypeError, ValueError):
        return False
    return params == ["hidden_states", "input_tensor"]


def _is_erf_gelu(module) -> bool:
    import torch.nn.functional as F
    from transformers.activations import GELUActivation

    return (isinstance(module, GELUActivation) and getattr(module, "act", None) is F.gelu) or (
        type(module).__name__ == "GELU" and getattr(module, "approximate", "none") == "none")


def fuse_linears(model):
    """A copy of ``model`` (float32, CPU, eval mode) with every Linear a :class:`FusedLinear` (with its GELU, or its
    block's residual add, where the model has them); ``(copy, counts)``."""
    import torch

    FusedLinear, FusedResidualOutput = _fused_linear_class(), _fused_output_class()
    fused = copy.deepcopy(model).eval()
    counts = {"linear": 0, "linear_gelu": 0, "linear_residual": 0}
    for module in list(fused.modules()):
        # BERT / RoBERTa / MPNet intermediate layers: ``dense`` then ``intermediate_act_fn``
        dense, act = getattr(module, "dense", None), getattr(module, "intermediate_act_fn", None)
        if isinstance(dense, torch.nn.Linear) and act is not None and _is_erf_gelu(act):
            module.dense, module.intermediate_act_fn = FusedLinear(dense, gelu=True), torch.nn.Identity()
            counts["linear_gelu"] += 1
    for module in list(fused.modules()):
        for child_name, child in list(module.named_children()):
            if _is_residual_output(child):
                setattr(module, child_name, FusedResidualOutput(child, FusedLinear(child.dense)))
                counts["linear_residual"] += 1
    for name, module in list(fused.named_modules()):
        for child_name, child in list(module.named_children()):
            if type(child) is torch.nn.Linear:
                setattr(module, child_name, FusedLinear(child))
                counts["linear"] += 1
    return fused, counts


class OneDNNEncoder(InferenceEncoder):
    """A :class:`DenseEncoder`'s ``encode`` with oneDNN-fused copies of its transformer(s); see the module docstring."""

    def __init__(self, encoder):
        require_onednn()
        super().__init__(encoder)
        self._towers = {}  # id(torch tower) -> (its fused copy, counts)
        self.counts = {}  # side -> {"linear": n, "linear_gelu": n} (for logs and tests)

    def _prepare(self, side: str) -> None:
        self._tower(side)

    def _hidden(self, batch, side: str):
        return self._tower(side)(**batch, return_dict=True).last_hidden_state

    def _tower(self, side: str):
        import torch

        tower = self.encoder._tower(side)[0]
        if id(tower) not in self._towers:
            if tower.device.type != "cpu" or tower.dtype != torch.float32:
                raise UserError("--encode_backend onednn: runs float32 models on the CPU; use --encode_backend torch")
            fused, counts = fuse_linears(tower)
            diff = self.probe_difference(side, lambda batch: fused(**batch, return_dict=True).last_hidden_state)
            if diff > self.tolerance:
                raise UserError(f"--encode_backend onednn: the fused layers differ from torch by {diff:.1e} "
                                f"(> {self.tolerance:.0e}); use --encode_backend torch")
            logger.info("encode backend onednn: %d Linear layers fused (%d with their GELU, %d with their residual "
                        "add), probe |diff| %.1e", sum(counts.values()), counts["linear_gelu"],
                        counts["linear_residual"], diff)
            self._towers[id(tower)] = fused, counts
        fused, self.counts[side] = self._towers[id(tower)]
        return fused
