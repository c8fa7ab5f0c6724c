"""Corpus encoding that is cached, resumable and shardable (``.npy`` float32 + ``ids.json``, no pickle).

Embeddings live under ``<cache_dir>/embeddings/<fingerprint>/``. The fingerprint hashes everything that
changes a vector: the encoder (its weight files' names, sizes and mtimes, or a hash of its parameters for
a model held in memory), pooling, normalisation, max length, side, instruction, and the exact key texts
(which covers the corpus file and ``--key_template``). An unchanged setup reuses the cached matrix.

Rows are encoded in fixed chunks of ``chunk_size`` on one global grid, each written atomically as
``chunks/<start>-<end>.npy``: a killed run continues after the last finished chunk, and shards (``--num_shards
--shard_index``, or the ranks of torchrun) are contiguous runs of chunks, so any shard layout reuses the
same chunk files. When every chunk is present they are concatenated into ``emb.npy`` (rank 0 under torchrun).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from ..schema import write_json

logger = logging.getLogger(__name__)

FINGERPRINT_VERSION = 1
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".msgpack", ".h5")
SETTING_NAMES = ("pooling_method", "normalize", "query_max_length", "key_max_length", "tie_encoders",
                 "projection_out_dim")


def save_npy(path: str | os.PathLike, array: np.ndarray) -> Path:
    """``np.save`` to a temp file in the same folder, then rename (readers never see half a file)."""
    from ..io import atomic_write

    return atomic_write(path, lambda out: np.save(out, np.ascontiguousarray(array), allow_pickle=False), binary=True)


def load_npy(path: str | os.PathLike) -> np.ndarray:
    return np.load(path, allow_pickle=False)


def texts_digest(texts: Sequence[str]) -> str:
    """sha256 of the texts (length-prefixed, so ``["ab", "c"]`` and ``["a", "bc"]`` differ)."""
    h = hashlib.sha256()
    for text in texts:
        data = text.encode("utf-8")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


def model_dir_digest(model_dir: str | os.PathLike) -> dict:
    """Names, sizes and mtimes of the weight and config files of a saved model folder."""
    folder = Path(model_dir)
    files = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and (path.suffix in WEIGHT_SUFFIXES or path.suffix == ".json"):
            stat = path.stat()
            files[str(path.relative_to(folder))] = [stat.st_size, stat.st_mtime_ns]
    return {"model_dir": str(folder.resolve()), "files": files}


def parameters_digest(module) -> str:
    """sha256 over a torch module's state dict (names, shapes, dtypes and values)."""
    import torch

    h = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def encoder_settings(encoder) -> dict:
    """The settings that change the vectors: ``DenseEncoder.settings()``, else the attributes it has."""
    if callable(getattr(encoder, "settings", None)):
        return dict(encoder.settings())
    return {name: getattr(encoder, name) for name in SETTING_NAMES if isinstance(getattr(encoder, name, None), (str, int, float, bool))}


def encoder_identity(encoder, model_dir: str | os.PathLike | None = None) -> dict:
    """What identifies the weights: the saved folder's file stats, else a hash of the live parameters."""
    if model_dir is not None:
        return model_dir_digest(model_dir)
    if hasattr(encoder, "state_dict"):
        return {"parameters_sha256": parameters_digest(encoder)}
    raise ValueError("cannot fingerprint an encoder that has neither a model_dir nor a state_dict")


def fingerprint(fields: dict) -> str:
    """A short stable hash of a JSON-able dict."""
    blob = json.dumps({"version": FINGERPRINT_VERSION, **fields}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def chunk_bounds(n_rows: int, chunk_size: int) -> list[tuple[int, int]]:
    return [(start, min(start + chunk_size, n_rows)) for start in range(0, n_rows, chunk_size)]


def shard_chunks(n_rows: int, chunk_size: int, num_shards: int = 1, shard_index: int = 0) -> list[tuple[int, int]]:
    """The chunks shard ``shard_index`` of ``num_shards`` owns (contiguous, balanced by chunk count)."""
    chunks = chunk_bounds(n_rows, chunk_size)
    lo = len(chunks) * shard_index // num_shards
    hi = len(chunks) * (shard_index + 1) // num_shards
    return chunks[lo:hi]


def shard_rows(n_rows: int, chunk_size: int, num_shards: int = 1, shard_index: int = 0) -> tuple[int, int]:
    """``(first row, end row)`` of a shard."""
    chunks = shard_chunks(n_rows, chunk_size, num_shards, shard_index)
    return (chunks[0][0], chunks[-1][1]) if chunks else (0, 0)


class EmbeddingCache:
    """One fingerprinted folder: chunk files, the merged ``emb.npy``, ``ids.json`` and ``meta.json``."""

    def __init__(self, root: str | os.PathLike, key: str, n_rows: int, chunk_size: int, meta: dict | None = None):
        self.dir = Path(root) / "embeddings" / key
        self.n_rows = n_rows
        self.chunk_size = chunk_size
        self.meta = meta or {}

    @property
    def merged_path(self) -> Path:
        return self.dir / "emb.npy"

    def chunk_path(self, start: int, end: int) -> Path:
        return self.dir / "chunks" / f"{start:010d}-{end:010d}.npy"

    def has_chunk(self, start: int, end: int) -> bool:
        return self.chunk_path(start, end).is_file()

    def complete(self) -> bool:
        return self.merged_path.is_file()

    def load(self) -> np.ndarray:
        emb = load_npy(self.merged_path)
        if emb.shape[0] != self.n_rows:
            raise RuntimeError(f"{self.merged_path}: {emb.shape[0]} rows, expected {self.n_rows}")
        return emb

    def merge(self, ids: Sequence[str] | None = None, remove_chunks: bool = True) -> np.ndarray:
        """Concatenate every chunk into ``emb.npy`` (each chunk must exist)."""
        parts = [load_npy(self.chunk_path(s, e)) for s, e in chunk_bounds(self.n_rows, self.chunk_size)]
        emb = np.concatenate(parts, axis=0) if parts else np.zeros((0, 0), dtype=np.float32)
        if ids is not None:
            write_json(self.dir / "ids.json", list(ids))
        write_json(self.dir / "meta.json", {**self.meta, "rows": int(emb.shape[0]),
                                             "dim": int(emb.shape[1]) if emb.ndim == 2 else 0})
        save_npy(self.merged_path, emb)
        if remove_chunks:
            for s, e in chunk_bounds(self.n_rows, self.chunk_size):
                self.chunk_path(s, e).unlink(missing_ok=True)
        return emb


def _dist():
    """``(rank, world_size)`` of an initialised torch.distributed group, else ``(0, 1)``."""
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover - torch is a dependency
        return 0, 1
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _barrier():
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def encode_chunks(encoder, texts: Sequence[str], chunks: list[tuple[int, int]], cache: EmbeddingCache | None, *,
                  side: str, instruction: str, batch_size: int, show_progress: bool) -> list[np.ndarray]:
    """Encode the given row ranges, skipping (and loading) chunks already in ``cache``."""
    from tqdm.auto import tqdm

    out = []
    todo = [c for c in chunks if cache is None or not cache.has_chunk(*c)]
    if cache is not None and len(todo) < len(chunks):
        logger.info("resuming: %d of %d chunks already encoded in %s", len(chunks) - len(todo), len(chunks), cache.dir)
    bar = tqdm(total=sum(e - s for s, e in todo), desc=f"encoding {'queries' if side == 'query' else side + 's'}", unit="text", disable=not show_progress)
    for start, end in chunks:
        if cache is not None and cache.has_chunk(start, end):
            out.append(load_npy(cache.chunk_path(start, end)))
            continue
        emb = np.asarray(encoder.encode(list(texts[start:end]), side=side, instruction=instruction,
                                        batch_size=batch_size, show_progress=False), dtype=np.float32)
        if emb.shape[0] != end - start:
            raise RuntimeError(f"encoder returned {emb.shape[0]} vectors for {end - start} texts")
        if cache is not None:
            save_npy(cache.chunk_path(start, end), emb)
        out.append(emb)
        bar.update(end - start)
    bar.close()
    return out


def encode_texts(encoder, texts: Sequence[str], *, side: str = "key", instruction: str = "", batch_size: int = 64,
                 cache_dir: str | os.PathLike | None = None, model_dir: str | os.PathLike | None = None,
                 ids: Sequence[str] | None = None, chunk_size: int = 256, num_shards: int | None = None,
                 shard_index: int | None = None, show_progress: bool = True, describe: dict | None = None) -> np.ndarray:
    """Embeddings ``[N, D]`` float32 of ``texts`` in input order, cached under ``cache_dir`` when given.

    ``num_shards``/``shard_index`` encode (and return) only that shard's rows; left ``None`` under an
    initialised torch.distributed group and with a ``cache_dir`` (shared by the ranks), each rank encodes its
    shard and every rank returns the merged matrix (rank 0 merges). Without ``cache_dir`` nothing is written,
    nothing can resume, and every process encodes all the rows it is given.

    ``model_dir`` fingerprints the weights by their files (use it when the encoder was loaded from that
    folder unchanged); otherwise the live parameters are hashed. ``describe`` (e.g. the corpus path and
    ``--key_template``) is recorded in ``meta.json`` but is not fingerprinted: the texts themselves are.
    """
    rank, world = _dist()
    distributed = num_shards is None and world > 1 and cache_dir is not None
    if num_shards is None:
        num_shards, shard_index = (world, rank) if distributed else (1, 0)
    shard_index = shard_index or 0
    if not 0 <= shard_index < num_shards:
        raise ValueError(f"shard_index {shard_index} outside 0..{num_shards - 1}")
    n = len(texts)
    chunks = shard_chunks(n, chunk_size, num_shards, shard_index)
    if num_shards > 1:
        lo, hi = shard_rows(n, chunk_size, num_shards, shard_index)
        logger.info("shard %d of %d: %s rows %d..%d of %d", shard_index, num_shards, side, lo, hi - 1, n)
    if cache_dir is None:  # nothing to share between ranks: each process encodes what it was asked for
        parts = encode_chunks(encoder, texts, chunks, None, side=side, instruction=instruction,
                              batch_size=batch_size, show_progress=show_progress)
        return np.concatenate(parts, axis=0) if parts else np.zeros((0, 0), dtype=np.float32)

    fields = {"encoder": encoder_identity(encoder, model_dir), "settings": encoder_settings(encoder),
              "side": side, "instruction": instruction, "texts_sha256": texts_digest(texts), "rows": n}
    cache = EmbeddingCache(cache_dir, fingerprint(fields), n, chunk_size, meta={**fields, **(describe or {})})
    if cache.complete():
        logger.info("reusing cached embeddings %s", cache.merged_path)
        emb = cache.load()
        lo, hi = shard_rows(n, chunk_size, num_shards, shard_index)
        return emb if (num_shards == 1 or distributed) else emb[lo:hi]
    parts = encode_chunks(encoder, texts, chunks, cache, side=side, instruction=instruction,
                          batch_size=batch_size, show_progress=show_progress)
    if num_shards > 1 and not distributed:
        if all(cache.has_chunk(s, e) for s, e in chunk_bounds(n, chunk_size)):
            cache.merge(ids)  # the last shard to finish leaves the whole matrix for the next run
        return np.concatenate(parts, axis=0) if parts else np.zeros((0, 0), dtype=np.float32)
    _barrier()
    if rank == 0 or not distributed:
        emb = cache.merge(ids)
    _barrier()
    if distributed and rank != 0:
        while not cache.complete():  # the barrier above makes this immediate on a shared filesystem
            time.sleep(0.1)
        emb = cache.load()
    return emb
