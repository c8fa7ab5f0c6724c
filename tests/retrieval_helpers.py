"""Test helpers for retrieval: a deterministic bag-of-words encoder, SciFact records, one torch thread."""
from __future__ import annotations

import json
import re
import zlib
from pathlib import Path

import numpy as np
import pytest


class BagOfWordsEncoder:
    """Hashes lowercase words into ``dim`` buckets (+ the instruction's words), L2-normalised.

    Follows ``DenseEncoder.encode``'s signature, so retrieval code can be tested without a model; counts
    the texts it encodes so tests can see what a cache saved.
    """

    pooling_method = "bow"
    normalize = True

    def __init__(self, dim: int = 64, fail_after: int | None = None):
        self.dim = dim
        self.encoded = 0
        self.calls = 0
        self.fail_after = fail_after  # raise on this call number (simulates a killed run)

    def state_dict(self):
        import torch

        return {"dim": torch.tensor([self.dim])}

    def encode(self, texts, side="key", instruction="", batch_size=64, show_progress=True):
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise KeyboardInterrupt("simulated kill")
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            for word in re.findall(r"\w+", (instruction + text).lower()):
                out[i, zlib.crc32(word.encode()) % self.dim] += 1.0
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        self.encoded += len(texts)
        return out


def scifact_records(data_dir: Path, split: str, limit: int | None = None) -> list[dict]:
    """The shipped SciFact ``split`` records (query, query_id, pos_index into scifact/corpus.jsonl)."""
    from llm_embedder.schema import read_records

    records = read_records(data_dir / "scifact" / f"{split}.json", purpose="eval").records
    return records[:limit] if limit else records


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny models on the shared 2-core machine run faster on one intra-op thread (two spin against each
    other under load); imported by the retrieval test modules that run a tiny BERT."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def small_scifact(tmp_path, data_dir):
    """The first 48 SciFact docs and 6 records whose positives are among them (rows 0, 5, 10, ...)."""
    rows = (data_dir / "scifact" / "corpus.jsonl").read_text(encoding="utf-8").splitlines()[:48]
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("\n".join(rows) + "\n", encoding="utf-8")
    titles = [json.loads(r)["title"] for r in rows]
    records = [{"query": titles[i][: len(titles[i]) // 2], "query_id": f"q{i}", "pos_index": [i]} for i in range(0, 30, 5)]
    records[1]["pos_index"].append(47)
    eval_data = tmp_path / "eval.json"
    eval_data.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return eval_data, corpus
