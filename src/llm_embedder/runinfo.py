"""What every run records next to its outputs: library versions (one list for every tool).

``run_dense.py`` (``run_args.json``, ``metrics.json``), ``eval_retrieval`` (``*.eval.*.json``) and
``run_lm_score.py`` (``*.meta.json``) all call :func:`versions`, so their records name the same packages.
"""
from __future__ import annotations

import platform
from importlib import metadata

PACKAGES = ("torch", "transformers", "sentence-transformers", "peft", "accelerate", "numpy",
            "faiss-cpu", "pytrec-eval-terrier", "pyserini", "bm25s", "rank-bm25")


def versions() -> dict[str, str]:
    """``{"python": ..., package: version}`` for the installed packages of :data:`PACKAGES`."""
    from . import __version__

    out = {"python": platform.python_version(), "llm_embedder": __version__}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out
