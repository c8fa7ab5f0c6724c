"""Shared fixtures: the real MiniLM, a tiny random BERT with MiniLM's tokenizer, the shipped data."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

STALE_LOCK_S = 900  # a JIT build of DeepSpeed's CPU op takes about a minute; a lock this old is a killed build's


def remove_stale_extension_locks(root: Path | None = None, older_than_s: float = STALE_LOCK_S) -> list[Path]:
    """Delete ``<torch_extensions>/*/lock`` files older than ``older_than_s``.

    A test run killed while DeepSpeed JIT-builds ``deepspeed_shm_comm`` leaves torch's FileBaton lock behind,
    and every later DeepSpeed test then waits on it forever (a local rerun hung 8 minutes on one).
    """
    import time

    root = root or Path(os.environ.get("TORCH_EXTENSIONS_DIR") or Path.home() / ".cache" / "torch_extensions")
    removed = []
    for pattern in ("*/*/lock", "*/lock"):  # <root>/py311_cpu/<op>/lock, or <root>/<op>/lock
        for lock in root.glob(pattern) if root.is_dir() else []:
            if time.time() - lock.stat().st_mtime > older_than_s:
                lock.unlink(missing_ok=True)
                removed.append(lock)
    return removed


def pytest_sessionstart(session):
    for lock in remove_stale_extension_locks():
        print(f"removed a stale torch extension build lock: {lock}")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA


@pytest.fixture(scope="session")
def toy_dir() -> Path:
    return DATA / "llm_embedder_toy"


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    from llm_embedder.resources import resolve_encoder

    return resolve_encoder("minilm")


def save_tiny_bert(out: Path, tokenizer_dir: Path, dropout: float = 0.1) -> Path:
    """A 2-layer, 32-dim randomly initialised BERT (seeded) with the tokenizer of ``tokenizer_dir``."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=512, hidden_dropout_prob=dropout,
                        attention_probs_dropout_prob=dropout)
    BertModel(config).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory, minilm_dir) -> Path:
    """A tiny random BERT with MiniLM's tokenizer (fast unit tests)."""
    return save_tiny_bert(tmp_path_factory.mktemp("tiny_bert"), minilm_dir)


@pytest.fixture(scope="session")
def tiny_bert_nodrop_dir(tmp_path_factory, minilm_dir) -> Path:
    """Like ``tiny_bert_dir`` but without dropout: two runs over the same batches give the same weights."""
    return save_tiny_bert(tmp_path_factory.mktemp("tiny_bert_nodrop"), minilm_dir, dropout=0.0)


@pytest.fixture
def tmp_data(tmp_path) -> Path:
    """A writable copy of the toy files (tests may write derived files next to them)."""
    dst = tmp_path / "toy"
    shutil.copytree(DATA / "llm_embedder_toy", dst)
    return dst
