"""Per-volume quality measures: framewise displacement, DVARS and running temporal SNR."""

from __future__ import annotations

import numpy as np

HEAD_RADIUS_MM = 50.0  # Power et al. (2012): rotations count as arc length on a 50 mm sphere


def framewise_displacement(params: np.ndarray, previous: np.ndarray | None) -> float:
    """Power's FD between two parameter sets (mm, radians); 0 for the first volume."""
    if previous is None:
        return 0.0
    d = np.abs(np.asarray(params) - np.asarray(previous))
    return float(d[:3].sum() + HEAD_RADIUS_MM * d[3:].sum())


class RunningQA:
    """Welford running mean/variance per voxel, for DVARS and temporal SNR as volumes arrive."""

    def __init__(self, n_voxels: int) -> None:
        self.n = 0
        self.mean = np.zeros(n_voxels)
        self._m2 = np.zeros(n_voxels)
        self._last: np.ndarray | None = None

    def update(self, vector: np.ndarray) -> tuple[float, float]:
        """Add one masked volume; return (DVARS, median temporal SNR so far)."""
        x = np.asarray(vector, dtype=np.float64)
        dvars = 0.0 if self._last is None else float(np.sqrt(np.mean((x - self._last) ** 2)))
        self._last = x
        self.n += 1
        delta = x - self.mean
        self.mean += delta / self.n
        self._m2 += delta * (x - self.mean)
        return dvars, self.tsnr()

    def tsnr_map(self) -> np.ndarray:
        """Temporal SNR per voxel so far (0 where undefined)."""
        if self.n < 3:
            return np.zeros_like(self.mean)
        std = np.sqrt(self._m2 / (self.n - 1))
        return np.divide(self.mean, std, out=np.zeros_like(self.mean), where=std > 0)

    def tsnr(self) -> float:
        if self.n < 3:
            return 0.0
        std = np.sqrt(self._m2 / (self.n - 1))
        ok = std > 0
        return float(np.median(self.mean[ok] / std[ok])) if ok.any() else 0.0
