"""Dense top-k search with faiss inner product: exact fp32 flat by default, IVF / HNSW on request.

Queries are searched in chunks of ``query_chunk`` rows, so the score matrix held at any time is
``query_chunk x k`` (faiss computes the flat scores block-wise itself), whatever the number of queries.
With normalised embeddings inner product is cosine similarity. Results are ``(scores [Q, k] float32,
rows [Q, k] int64)`` sorted by score; where an approximate index finds fewer than ``k`` keys, the row is
``-1`` and the score ``-inf``. Several corpus shards are searched one by one and merged with
:func:`merge_topk`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import UserError

INDEX_TYPES = ("flat", "ivf", "hnsw")


@dataclass
class IndexParams:
    """Settings of the approximate indexes (ignored by ``flat``)."""

    nlist: int | None = None  # IVF cells; default 4 * sqrt(N), at most N // 39 (faiss wants 39 points per cell)
    nprobe: int = 16  # IVF cells visited per query
    hnsw_m: int = 32  # HNSW graph degree
    ef_search: int = 128  # HNSW search beam (raised to k when smaller)
    ef_construction: int = 200


def _as_float32(x, name: str) -> np.ndarray:
    arr = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-d array, got shape {arr.shape}")
    return arr


def build_index(key_emb, index: str = "flat", params: IndexParams | None = None):
    """A faiss inner-product index holding ``key_emb`` (trained first for IVF)."""
    import faiss

    if index not in INDEX_TYPES:
        raise UserError(f"--faiss_index: unknown index '{index}' (known: {', '.join(INDEX_TYPES)})")
    params = params or IndexParams()
    keys = _as_float32(key_emb, "key_emb")
    n, dim = keys.shape
    if index == "flat":
        idx = faiss.IndexFlatIP(dim)
    elif index == "hnsw":
        idx = faiss.IndexHNSWFlat(dim, params.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        idx.hnsw.efConstruction = params.ef_construction
    else:
        nlist = params.nlist or max(1, min(int(4 * np.sqrt(n)), n // 39))
        if nlist > n:
            raise UserError(f"--nlist: {nlist} IVF cells for only {n} keys; use fewer cells or --faiss_index flat")
        idx = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        idx.train(keys)
        idx.nprobe = min(params.nprobe, nlist)
    idx.add(keys)
    return idx


def search_index(idx, query_emb, k: int, query_chunk: int = 4096, ef_search: int | None = None):
    """``(scores, rows)`` of the top ``k`` keys of a built index for every query, chunk by chunk."""
    queries = _as_float32(query_emb, "query_emb")
    if queries.shape[1] != idx.d:
        raise UserError(f"query embeddings have dimension {queries.shape[1]} but the keys have {idx.d}")
    if k < 1:
        raise UserError(f"--hits: must be at least 1, got {k}")
    k_eff = min(k, idx.ntotal) if idx.ntotal else 0
    if hasattr(idx, "hnsw"):
        idx.hnsw.efSearch = max(ef_search or idx.hnsw.efSearch, k_eff)
    scores = np.full((len(queries), k_eff), -np.inf, dtype=np.float32)
    rows = np.full((len(queries), k_eff), -1, dtype=np.int64)
    if k_eff == 0:
        return scores, rows
    for start in range(0, len(queries), query_chunk):
        s, r = idx.search(queries[start:start + query_chunk], k_eff)
        s = np.where(r < 0, -np.inf, s).astype(np.float32)
        scores[start:start + len(s)], rows[start:start + len(r)] = s, r
    return scores, rows


def search(query_emb, key_emb, k: int, index: str = "flat", query_chunk: int = 4096,
           params: IndexParams | None = None):
    """Top-``k`` keys by inner product for every query: ``(scores [Q, min(k, N)], rows [Q, min(k, N)])``."""
    params = params or IndexParams()
    idx = build_index(key_emb, index, params)
    return search_index(idx, query_emb, k, query_chunk=query_chunk, ef_search=params.ef_search)


def merge_topk(parts, k: int):
    """Merge per-shard results ``[(scores, rows, row_offset), ...]`` into one global top-``k``.

    ``rows`` of each part are local to its shard; ``row_offset`` turns them into global rows. Ties keep
    the shard order (a stable sort), so merging shards of one corpus equals searching it whole.
    """
    scores = np.concatenate([np.asarray(s, dtype=np.float32) for s, _, _ in parts], axis=1)
    rows = np.concatenate([np.where(np.asarray(r) < 0, -1, np.asarray(r, dtype=np.int64) + off) for _, r, off in parts], axis=1)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, axis=1), np.take_along_axis(rows, order, axis=1)
