"""benchmarks/plot_speed.py: one bar per committed benchmark run, labelled by what changed the work."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import plot_speed  # noqa: E402


def write(folder: Path, name: str, data: dict) -> None:
    (folder / name).write_text(json.dumps(data))


def test_bars_from_result_files(tmp_path):
    write(tmp_path, "bench_train.json", {"ratio_ours_over_sentence_transformers": 1.3, "ours_fast_attention_dropout": True,
                                         "machine": {"loadavg_at_end": [2.0, 1, 1]}})
    write(tmp_path, "bench_train_old.json", {"ratio_ours_over_sentence_transformers": 0.95})
    write(tmp_path, "bench_train_nodrop.json", {"ratio_ours_over_sentence_transformers": 0.97,
                                                "config_overrides_both_sides": "attention_probs_dropout_prob=0"})
    write(tmp_path, "bench_encode.json", {"ratio_over_sentence_transformers": {
        "llm_embedder.DenseEncoder.encode": 0.9, "llm_embedder.DenseEncoder.encode --encode_backend onednn": 1.1},
        "machine": {"loadavg_at_start": [6.4, 1, 1], "loadavg_at_end": [5.0, 1, 1]}})
    bars = plot_speed.collect(tmp_path)
    train = dict(bars["training"])
    assert train["train (load 2.0)\nour attn dropout"] == 1.3
    assert train["train_old\ntorch attn dropout"] == 0.95
    assert train["train_nodrop\nno attn dropout, both sides"] == 0.97
    assert bars["encoding"] == [("encode (load 6.4)\ntorch", 0.9), ("encode (load 6.4)\nonednn", 1.1)]
    png = plot_speed.draw(bars, tmp_path / "img" / "speed.png")
    assert png.stat().st_size > 1000


def test_no_result_files_is_one_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="no bench_train"):
        plot_speed.collect(tmp_path)
