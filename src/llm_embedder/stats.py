"""Small statistics shared by the studies and benchmarks: the percentile bootstrap of a mean.

One implementation so that every interval on the results pages is computed the same way (2,000 resamples,
95 % percentile interval, a fixed seed so a rerun prints the same figures).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

BOOTSTRAP = 2000


def bootstrap_ci(values: Sequence[float], seed: int = 0, n: int = BOOTSTRAP) -> tuple[float, float]:
    """95% percentile interval of the mean (values resampled with replacement)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        raise ValueError("bootstrap_ci: no values")
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, len(v), size=(n, len(v)))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(lo), float(hi)
