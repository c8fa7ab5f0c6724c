"""benchmarks/bench_train.py: the per-round share of the GEMM peak, by hand."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_train  # noqa: E402


def test_each_round_is_divided_by_the_peaks_measured_around_it():
    # 2 rounds of 2 steps: round 0 does 4e9 FLOP in 2 s (2 GFLOP/s) between peaks 4 and 6 (mean 5) -> 0.4;
    # round 1 does 6e9 FLOP in 3 s (2 GFLOP/s) between peaks 6 and 2 (mean 4) -> 0.5
    times, flops, peaks = [1.0, 1.0, 1.0, 2.0], [2e9, 2e9, 3e9, 3e9], [4e9, 6e9, 2e9]
    assert bench_train.round_shares(times, flops, peaks, steps=2) == pytest.approx([0.4, 0.5])
    assert bench_train.round_shares(times, flops, [5e9, 5e9, 5e9], steps=4) == pytest.approx([10e9 / 5 / 5e9])
