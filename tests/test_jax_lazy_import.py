"""The torch path never imports jax (the JAX trainer is an optional extra)."""
from __future__ import annotations

import subprocess
import sys


def test_torch_path_does_not_import_jax():
    code = ("import sys, llm_embedder, llm_embedder.training.run, llm_embedder.cli, llm_embedder.modeling.losses; "
            "print('jax' in sys.modules, 'flax' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]


def test_guard_sees_a_jax_import():
    code = "import sys, llm_embedder.jax.losses; print('jax' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "True"
