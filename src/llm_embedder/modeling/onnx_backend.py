"""An inference backend that runs the transformer of a :class:`DenseEncoder` in ONNX Runtime (``--encode_backend``).

Only the transformer moves: tokenising, length-sorted batching, pooling, projection and normalisation stay
:class:`DenseEncoder`'s own code (:meth:`~DenseEncoder.encode_with` and :meth:`~DenseEncoder.head`), so the
vectors equal the torch ones within float rounding (checked at export, tested to 1e-5).

- Each tower (query, and the key tower when untied) is exported once with ``torch.onnx.export`` (dynamic batch
  and sequence axes) into ``<cache_dir>/onnx/<key>/model.onnx``. The key hashes the tower's weights as held
  in memory (plus its config, the versions and the export options), so a retrained or merged model never
  reuses a stale export, and an unchanged one loads the file again instead of exporting.
- BERT-type graphs get ONNX Runtime's transformer fusions (one ``Attention`` per layer, ``SkipLayerNorm``,
  ``BiasGelu``, ``EmbedLayerNorm``); the fused graph is kept only if a probe batch gives the torch vectors
  within ``tolerance``, else the plain graph is used (also checked).
- The session uses as many intra-op threads as torch (``torch.get_num_threads()``), on the CPU.

It is an inference path only: nothing trains through it, and it reads the weights at the time it was built.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import UserError
from .backends import InferenceEncoder

if TYPE_CHECKING:  # torch and numpy load when an encoder is built, not when a CLI parses its arguments
    import numpy as np
    import torch
    from torch import nn

logger = logging.getLogger(__name__)

EXPORT_VERSION = 1
OPSET = 17
FUSED_MODEL_TYPES = ("bert",)  # what onnxruntime.transformers.optimizer's "bert" fusions are tested on here


def require_onnxruntime():
    """``onnxruntime`` (and ``onnx``, which the exporter needs), or one line saying how to install them."""
    try:
        import onnx  # noqa: F401
        import onnxruntime
    except ImportError as err:
        raise UserError(f"--encode_backend onnxruntime: needs the onnxruntime and onnx packages ({err.name} is "
                        "missing); pip install 'llm-embedder[onnx]' or use --encode_backend torch") from None
    return onnxruntime


def export_key(model: nn.Module, input_names: list[str], fused: bool) -> str:
    """Hash of what the exported graph depends on: the weights (values), the config, versions and options."""
    import onnxruntime
    import torch

    from ..retrieval.encode import parameters_digest

    fields = {"version": EXPORT_VERSION, "weights": parameters_digest(model), "class": type(model).__name__,
              "config": model.config.to_json_string(use_diff=False), "inputs": input_names, "fused": fused,
              "opset": OPSET, "torch": torch.__version__, "onnxruntime": onnxruntime.__version__}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:24]


def _export(model: nn.Module, batch: dict, path: Path) -> None:
    """``model``'s graph with one output, ``last_hidden_state`` (no pooler head), traced in eval mode (its
    train/eval mode is restored afterwards)."""
    import torch

    class LastHiddenState(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, *inputs):
            return self.model(**dict(zip(names, inputs)), return_dict=True).last_hidden_state

    names = list(batch)
    wrapper = LastHiddenState()
    axes = {name: {0: "batch", 1: "sequence"} for name in [*names, "last_hidden_state"]}
    was_training = model.training
    model.eval()
    try:
        with warnings.catch_warnings():  # tracer and deprecation notes about the exporter, not for users
            warnings.simplefilter("ignore")
            torch.onnx.export(wrapper, tuple(batch[n] for n in names), str(path), input_names=names,
                              output_names=["last_hidden_state"], dynamic_axes=axes, opset_version=OPSET,
                              dynamo=False, do_constant_folding=True, external_data=False)
    except Exception as err:  # noqa: BLE001 - exporter errors come in many types; say which model failed
        raise UserError(f"--encode_backend onnxruntime: could not export {type(model).__name__} to ONNX "
                        f"({type(err).__name__}: {err}); use --encode_backend torch".replace("\n", " ")) from None
    finally:
        model.train(was_training)


def _fuse(plain: Path, fused: Path, config) -> None:
    from onnxruntime.transformers.optimizer import optimize_model

    heads, hidden = config.num_attention_heads, config.hidden_size
    logging.disable(logging.INFO)  # the optimizer logs every fusion at INFO
    try:
        optimized = optimize_model(str(plain), model_type="bert", num_heads=heads, hidden_size=hidden, opt_level=0)
        optimized.save_model_to_file(str(fused))
    finally:
        logging.disable(logging.NOTSET)


class OnnxRuntimeEncoder(InferenceEncoder):
    """A :class:`DenseEncoder`'s ``encode`` with its transformer(s) run by ONNX Runtime; see the module docstring."""

    def __init__(self, encoder, cache_dir: str | os.PathLike | None = None, fuse: bool = True,
                 threads: int | None = None):
        self.ort = require_onnxruntime()
        super().__init__(encoder)
        import torch

        from ..resources import cache_dir as default_cache_dir

        self.root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.fuse = fuse
        self.threads = threads or torch.get_num_threads()
        self._sessions = {}  # id(tower) -> (session, {input name: dtype}, .onnx path)
        self.exports = {}  # side -> the .onnx file in use (for logs and tests)

    def _prepare(self, side: str) -> None:
        self._session(side)

    def _hidden(self, batch, side: str) -> "torch.Tensor":
        return self._run(*self._session(side), batch)

    @staticmethod
    def _run(session, inputs: dict, batch) -> "torch.Tensor":
        """ONNX Runtime's token states ``[N, L, H]`` of a padded ``pt`` batch."""
        import torch

        feed = {name: batch[name].numpy().astype(dtype, copy=False) for name, dtype in inputs.items()}
        return torch.from_numpy(session.run(["last_hidden_state"], feed)[0])

    def _session(self, side: str):
        """``(session, {input name: dtype})`` of the side's tower (tied sides share one)."""
        tower = self.encoder._tower(side)[0]
        if id(tower) not in self._sessions:
            self._sessions[id(tower)] = self._load(tower, side)
        session, inputs, self.exports[side] = self._sessions[id(tower)]
        return session, inputs

    def _new_session(self, path: Path):
        options = self.ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = self.ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only: the fused graph's shape-inference notes are not for users
        return self.ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    @staticmethod
    def _inputs(session) -> dict:
        """``{graph input name: numpy dtype}`` (the exporter may drop an input the model ignores)."""
        import numpy as np

        types = {"tensor(int64)": np.int64, "tensor(int32)": np.int32}
        return {i.name: types.get(i.type, np.int64) for i in session.get_inputs()}

    def _load(self, tower: nn.Module, side: str):
        """Export (or find in the cache) this tower's graph, checked against torch on a probe batch."""
        import torch

        if getattr(tower, "device", torch.device("cpu")).type != "cpu" or tower.dtype != torch.float32:
            raise UserError("--encode_backend onnxruntime: runs float32 models on the CPU; use --encode_backend torch")
        probe = self.probe(side)
        names = list(probe)
        want_fused = self.fuse and tower.config.model_type in FUSED_MODEL_TYPES
        for fused in ([True, False] if want_fused else [False]):
            folder = self.root / "onnx" / export_key(tower, names, fused)
            path = folder / "model.onnx"
            if not path.is_file():
                self._write_export(tower, probe, folder, fused)
            session = self._new_session(path)
            diff = self.probe_difference(side, lambda batch: self._run(session, self._inputs(session), batch))
            if diff <= self.tolerance:
                logger.info("encode backend onnxruntime: %s (%s graph, %d threads, probe |diff| %.1e)", path,
                            "fused" if fused else "plain", self.threads, diff)
                return session, self._inputs(session), path
            logger.warning("encode backend onnxruntime: the %s graph differs from torch by %.1e (> %.0e)%s", "fused"
                           if fused else "plain", diff, self.tolerance, "; trying the plain graph" if fused else "")
        raise UserError(f"--encode_backend onnxruntime: the exported graph differs from torch by {diff:.1e} "
                        f"(> {self.tolerance:.0e}); use --encode_backend torch")

    def _write_export(self, tower: nn.Module, probe: dict, folder: Path, fused: bool) -> None:
        """Export into a temporary sibling folder and rename it into place (concurrent ranks: first one wins)."""
        import time

        folder.parent.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
        try:
            _export(tower, probe, staging / ("plain.onnx" if fused else "model.onnx"))
            if fused:
                _fuse(staging / "plain.onnx", staging / "model.onnx", tower.config)
                (staging / "plain.onnx").unlink()
            meta = {"model_class": type(tower).__name__, "model_type": tower.config.model_type, "fused": fused,
                    "inputs": list(probe), "opset": OPSET, "export_seconds": round(time.perf_counter() - started, 2)}
            (staging / "meta.json").write_text(json.dumps(meta, indent=1))
            try:
                staging.rename(folder)
            except OSError:
                if not (folder / "model.onnx").is_file():
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        logger.info("exported %s to %s in %.1f s", type(tower).__name__, folder, time.perf_counter() - started)
