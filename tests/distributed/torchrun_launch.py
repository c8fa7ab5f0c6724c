"""Shared by the torchrun tests: import a worker script as a module, and run it under torchrun (gloo) so
that each rank writes ``rank{r}.json`` into an output folder."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path


def load_worker(path: Path):
    """The worker script as a module, so the test can call its functions in this (single) process."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_worker_ranks(worker: Path, out: Path, world_size: int, timeout: int) -> list[dict]:
    """``torchrun --standalone --nproc_per_node world_size worker --output out``; every rank's JSON record.

    ``--standalone`` lets torchrun pick a free port for the local rendezvous (no fixed port to collide on).
    """
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
           "--nproc_per_node", str(world_size), str(worker), "--output", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, f"torchrun failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(world_size)]
