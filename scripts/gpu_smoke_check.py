"""The checks of ``scripts/gpu-smoke.sh``, runnable on CPUs too (the test suite runs them under gloo).

    torchrun --nproc_per_node N scripts/gpu_smoke_check.py collectives
        every collective of llm_embedder.distributed (and the cross-device gather) with tensors on the
        group's device: under NCCL each rank must be on cuda:LOCAL_RANK, a CPU tensor would be rejected
    python scripts/gpu_smoke_check.py model DIR [REFERENCE_DIR]
        DIR loads in sentence-transformers, embeds like llm-embedder's own encoder, finite values; with
        REFERENCE_DIR, both models give the same embeddings (within bf16 training noise: cosine > 0.99)
    python scripts/gpu_smoke_check.py scored FILE WORLD
        an LM-scored file: every row has finite teacher scores and its .meta.json says WORLD ranks

Each check prints one ``ok: ...`` line or exits non-zero with one ``FAILED: ...`` line.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path


def fail(message: str) -> None:
    print(f"FAILED: {message}", file=sys.stderr)
    raise SystemExit(1)


def collectives() -> None:
    import torch

    from llm_embedder import distributed as helper
    from llm_embedder.modeling.distributed import gather_with_grad

    rank, world = helper.init_from_env()
    device = helper.local_device()
    backend = torch.distributed.get_backend() if helper.is_distributed() else "none"
    if torch.cuda.is_available() and world > 1 and backend != "nccl":
        fail(f"rank {rank}: backend {backend}, expected nccl on GPUs")
    expected_group = "cuda" if backend == "nccl" else "cpu"
    if helper.group_device().type != expected_group:
        fail(f"rank {rank}: group device {helper.group_device()} under {backend}")
    if backend == "nccl" and device != torch.device("cuda", helper.local_rank()):
        fail(f"rank {rank}: local device {device}, expected cuda:{helper.local_rank()}")
    total = helper.all_reduce_sum(torch.tensor([1.0, float(rank)], dtype=torch.float64))
    if total.tolist() != [float(world), float(sum(range(world)))]:
        fail(f"rank {rank}: all_reduce_sum gave {total.tolist()}")
    if helper.broadcast_json({"from": rank}) != {"from": 0}:
        fail(f"rank {rank}: broadcast_json")
    if helper.all_gather_json(rank) != list(range(world)):
        fail(f"rank {rank}: all_gather_json")
    local = torch.full((rank + 1, 3), float(rank), device=device, requires_grad=True)  # uneven sizes
    gathered = gather_with_grad(local)
    if gathered.device != local.device or gathered.shape[0] != sum(r + 1 for r in range(world)):
        fail(f"rank {rank}: gather_with_grad gave {tuple(gathered.shape)} on {gathered.device}")
    gathered.sum().backward()
    if not torch.equal(local.grad, torch.ones_like(local)):
        fail(f"rank {rank}: gather_with_grad did not route the gradient to the local slice")
    helper.barrier()
    if rank == 0:
        print(f"ok: collectives on {world} rank(s), backend {backend}, group device {helper.group_device()}")
    helper.destroy()


def model(directory: str, reference: str | None = None) -> None:
    import numpy as np
    from sentence_transformers import SentenceTransformer

    from llm_embedder.modeling.encoder import DenseEncoder

    texts = ["what does a dense retriever learn?", "BM25 ranks documents by term statistics.", "GPU smoke test"]
    st = SentenceTransformer(directory, device="cpu").encode(texts, normalize_embeddings=False)
    ours = DenseEncoder.from_pretrained(directory).encode(texts, side="key", show_progress=False)
    if not np.isfinite(st).all():
        fail(f"{directory}: non-finite embeddings")
    if np.abs(st - ours).max() > 1e-4:
        fail(f"{directory}: sentence-transformers and llm-embedder embed differently (max diff {np.abs(st - ours).max():.2e})")
    if reference is not None:
        ref = SentenceTransformer(reference, device="cpu").encode(texts, normalize_embeddings=True)
        got = st / np.linalg.norm(st, axis=1, keepdims=True)
        cosine = (ref * got).sum(axis=1).min()
        if cosine < 0.99:
            fail(f"{directory} vs {reference}: embeddings differ (min cosine {cosine:.4f})")
    print(f"ok: {directory} loads in sentence-transformers ({st.shape[1]} dims)"
          + (f", matches {reference}" if reference else ""))


def scored(path: str, world: str) -> None:
    file = Path(path)
    rows = [json.loads(line) for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not rows:
        fail(f"{file}: no rows")
    for i, row in enumerate(rows, 1):
        scores = row.get("teacher_scores")
        if not scores or not all(isinstance(s, (int, float)) and math.isfinite(s) for s in scores):
            fail(f"{file}:{i}: teacher_scores missing or not finite")
    meta = json.loads(file.with_name(file.name[:-len(".json")] + ".meta.json").read_text())
    if meta.get("world_size") != int(world):
        fail(f"{file}: scored by {meta.get('world_size')} rank(s), expected {world}")
    print(f"ok: {file} ({len(rows)} rows scored by {world} rank(s))")


def main(argv: list[str]) -> None:
    commands = {"collectives": collectives, "model": model, "scored": scored}
    if not argv or argv[0] not in commands:
        fail(f"usage: gpu_smoke_check.py {{{'|'.join(commands)}}} ...")
    commands[argv[0]](*argv[1:])


if __name__ == "__main__":
    main(sys.argv[1:])
