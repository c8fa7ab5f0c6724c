"""One place for torch.distributed: ranks, the process group's device, collectives on tensors and JSON.

Training (loss logging, metric broadcast), evaluation, LM scoring and the cross-device losses all use
this module instead of calling ``torch.distributed`` themselves. The rule it enforces: a tensor handed
to a collective lives on the process group's device, ``cuda:LOCAL_RANK`` for NCCL (which rejects CPU
tensors) and the CPU for gloo; results come back on the caller's device. One GPU per rank, chosen by
``LOCAL_RANK`` (set by torchrun and the DeepSpeed launcher).

Without an initialised process group every function is the identity (or a no-op), so one plain
process needs nothing.
"""
from __future__ import annotations

import contextlib
import json
import os

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """True when a torch.distributed process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """Number of ranks, 1 without a process group."""
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    """This process's global rank, 0 without a process group."""
    return dist.get_rank() if is_distributed() else 0


def local_rank() -> int:
    """This process's rank on its node (``LOCAL_RANK``), 0 when not launched by torchrun/deepspeed."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def local_device() -> torch.device:
    """The device this rank computes on: ``cuda:LOCAL_RANK`` when GPUs are visible, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank())
    return torch.device("cpu")


def group_device() -> torch.device:
    """Where tensors for a collective must live: the rank's GPU under NCCL, the CPU otherwise (gloo)."""
    if is_distributed() and dist.get_backend() == "nccl":
        return torch.device("cuda", local_rank())
    return torch.device("cpu")


def init_from_env(backend: str | None = None) -> tuple[int, int]:
    """Join the process group torchrun describes in the environment; ``(rank, world_size)``.

    ``WORLD_SIZE`` unset or 1: nothing to join, ``(0, 1)``. The backend defaults to NCCL when GPUs are
    visible (after pinning this process to ``cuda:LOCAL_RANK``, so no two ranks share a GPU) and gloo
    otherwise. An already initialised group is reused.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    if not is_distributed():
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        if backend == "nccl":
            torch.cuda.set_device(local_rank())
        dist.init_process_group(backend)
    return rank(), world_size()


def init_deepspeed_comm() -> None:
    """Let DeepSpeed's communication layer adopt the process group before a ZeRO-3 model is built.

    Under ZeRO-3, ``from_pretrained`` partitions weights while loading (``deepspeed.zero.Init``), which
    reads the world size from ``deepspeed.comm``; uninitialised, it sees one rank and rejects the batch
    sizes. A no-op without torchrun.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return
    import deepspeed

    deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")


def destroy() -> None:
    """Leave the process group (after a barrier) if one is initialised."""
    if is_distributed():
        barrier()
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed() and world_size() > 1:
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[local_rank()])
        else:
            dist.barrier()


@contextlib.contextmanager
def rank_zero_first():
    """Rank 0 runs the block first (e.g. a one-time conversion into a cache); the other ranks then run it."""
    if rank() != 0:
        barrier()
    yield
    if rank() == 0:
        barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The element-wise sum of ``tensor`` over all ranks, on ``tensor``'s device (a new tensor)."""
    if not is_distributed() or world_size() == 1:
        return tensor.clone()
    buffer = tensor.detach().to(group_device(), copy=True)
    dist.all_reduce(buffer)
    return buffer.to(tensor.device)


def _bytes_to_tensor(payload: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(payload), dtype=torch.uint8).to(group_device()) if payload else \
        torch.zeros(0, dtype=torch.uint8, device=group_device())


def broadcast_json(obj, src: int = 0):
    """Rank ``src``'s JSON-able object on every rank (sent as UTF-8 bytes: no pickle)."""
    if not is_distributed() or world_size() == 1:
        return obj
    payload = json.dumps(obj).encode() if rank() == src else b""
    size = torch.tensor([len(payload)], dtype=torch.long, device=group_device())
    dist.broadcast(size, src)
    data = _bytes_to_tensor(payload) if rank() == src else torch.zeros(int(size.item()), dtype=torch.uint8,
                                                                          device=group_device())
    dist.broadcast(data, src)
    return json.loads(bytes(data.cpu().tolist()).decode())


def all_gather_json(obj) -> list:
    """Every rank's JSON-able object, in rank order (sent as UTF-8 bytes: no pickle)."""
    if not is_distributed() or world_size() == 1:
        return [obj]
    payload = json.dumps(obj).encode()
    size = torch.tensor([len(payload)], dtype=torch.long, device=group_device())
    sizes = [torch.zeros_like(size) for _ in range(world_size())]
    dist.all_gather(sizes, size)
    longest = max(int(s.item()) for s in sizes)
    data = torch.zeros(longest, dtype=torch.uint8, device=group_device())
    data[:len(payload)] = _bytes_to_tensor(payload)
    parts = [torch.empty_like(data) for _ in sizes]
    dist.all_gather(parts, data)
    return [json.loads(bytes(part[:int(n.item())].cpu().tolist()).decode()) for part, n in zip(parts, sizes)]
