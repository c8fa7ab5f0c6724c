"""Inference backends for ``encode`` (``--encode_backend``): which exist, the shared argument, and their base class.

``torch`` is :meth:`DenseEncoder.encode` itself. The others run only the transformer differently; tokenising,
length-sorted batching, pooling, projection and normalisation stay :class:`DenseEncoder`'s own code
(:meth:`~DenseEncoder.encode_with`, :meth:`~DenseEncoder.head`), so they give the same vectors. Each checks
that on a probe batch against torch before it is used (tolerance 1e-5), and each is inference only: it reads
the weights when it is built.

- ``onnxruntime`` (:mod:`.onnx_backend`): the transformer exported once to ONNX and run by ONNX Runtime.
- ``onednn`` (:mod:`.onednn_backend`): torch, with every Linear one oneDNN call (packed weights, bias and
  BERT's GELU fused into the matrix product).
"""
from __future__ import annotations

import os
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

from ..errors import UserError

if TYPE_CHECKING:  # torch loads when an encoder is built, not when a CLI parses its arguments
    import torch

BACKENDS = ("torch", "onnxruntime", "onednn")
PROBE_TEXTS = ("a short probe", "a longer probe text, with punctuation and several more words, so that the "
               "batch is padded", "x")


def check_backend(name: str) -> str:
    """``name`` if it exists and can run here, else one line saying what to do (before any model loads)."""
    if name not in BACKENDS:
        raise UserError(f"--encode_backend: expected one of {', '.join(BACKENDS)}, got {name!r}")
    if name == "onnxruntime":
        from .onnx_backend import require_onnxruntime

        require_onnxruntime()
    if name == "onednn":
        from .onednn_backend import require_onednn

        require_onednn()
    return name


def add_backend_argument(parser) -> None:
    """``--encode_backend`` for every command that encodes (one definition, one help text)."""
    parser.add_argument("--encode_backend", choices=BACKENDS, default="torch",
                        help="run the transformer in torch, in ONNX Runtime (exported once into the cache) or in "
                             "torch with oneDNN-fused Linear layers; the same vectors within 1e-5 (docs/encoder.md)")


def with_backend(encoder, backend: str, cache_dir: str | os.PathLike | None = None):
    """``encoder`` itself for ``torch``, else the backend's wrapper around it."""
    if check_backend(backend) == "torch":
        return encoder
    if backend == "onnxruntime":
        from .onnx_backend import OnnxRuntimeEncoder

        return OnnxRuntimeEncoder(encoder, cache_dir=cache_dir)
    from .onednn_backend import OneDNNEncoder

    return OneDNNEncoder(encoder)


class InferenceEncoder(ABC):
    """A :class:`DenseEncoder` whose ``encode`` runs its transformer(s) another way (subclasses say how).

    ``settings()``, ``instructions``, ``embedding_dim``, ``tokenizer`` and ``state_dict()`` are the wrapped
    encoder's, so every caller of ``encode`` (corpus encoding and its cache, retrieval, evaluation) takes either.
    Subclasses implement ``_hidden(batch, side) -> [N, L, H]`` and may prepare per tower in ``_prepare(side)``.
    """

    tolerance = 1e-5

    def __init__(self, encoder):
        if getattr(encoder, "lora", None):
            raise UserError("--encode_backend: LoRA adapters are attached; save the model (which merges them) "
                            "and encode the saved folder")
        self.encoder = encoder

    @property
    def instructions(self):
        return self.encoder.instructions

    @property
    def embedding_dim(self) -> int:
        return self.encoder.embedding_dim

    @property
    def tokenizer(self):
        return self.encoder.tokenizer

    def settings(self) -> dict:
        return self.encoder.settings()

    def state_dict(self):
        return self.encoder.state_dict()

    def encode(self, texts, side: str = "key", instruction: str = "", batch_size: int = 64,
               show_progress: bool = True):
        """Same contract and vectors as :meth:`DenseEncoder.encode` (float32 ``[N, D]``, input order)."""
        self._prepare(side)  # export / build before the progress bar starts
        return self.encoder.encode_with(self._embed_batch, texts, side, instruction, batch_size, show_progress)

    def _prepare(self, side: str) -> None:
        pass

    @abstractmethod
    def _hidden(self, batch, side: str) -> "torch.Tensor":
        """``[N, L, H]`` last hidden states of a padded batch, computed by the backend."""

    def _embed_batch(self, batch, side: str) -> "torch.Tensor":
        return self.encoder.head(self._hidden(batch, side), batch["attention_mask"], side)

    def probe(self, side: str) -> dict:
        return dict(self.encoder.tokenize(list(PROBE_TEXTS), side=side))

    def probe_difference(self, side: str, hidden) -> float:
        """Largest |difference| of the probe's vectors, ``hidden(probe) -> [N, L, H]`` against the torch tower."""
        import torch

        probe = self.probe(side)
        was_training = self.encoder.training
        self.encoder.eval()
        try:
            with torch.inference_mode():
                expected = self.encoder.embed(probe, side).float()
                got = self.encoder.head(hidden(probe), probe["attention_mask"], side)
        finally:
            self.encoder.train(was_training)
        return float((got - expected).abs().max())
