"""Summaries of timings for the benchmarks (``rtdecode bench``)."""

from __future__ import annotations

import numpy as np


def summarize(ms: list[float] | np.ndarray) -> dict[str, float]:
    """Median, 99th percentile and maximum of timings in milliseconds, and how many there were."""
    arr = np.asarray(ms, dtype=float)
    return {"median_ms": float(np.median(arr)), "p99_ms": float(np.percentile(arr, 99)),
            "max_ms": float(arr.max()), "n": int(arr.size)}
