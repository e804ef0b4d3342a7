"""Per-voxel z-scoring of betas, and averaging of repeated presentations of an image.

Real-time MindEye z-scores each new beta with the mean and standard deviation (ddof=0, plus 1e-6)
of all betas of the session so far, the new one included; :class:`RunningZScore` does that with
running sums, so it costs O(voxels) per trial. :class:`FixedZScore` uses statistics saved at
calibration instead, so the first trial of a session is scaled like the last.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rtdecode.base.errors import VoxelSpaceError

EPS = 1e-6


class RunningZScore:
    """z = (beta - mean) / (std + 1e-6) over every beta seen so far, this one included."""

    def __init__(self, n_voxels: int) -> None:
        self.n = 0
        self._sum = np.zeros(n_voxels)
        self._sumsq = np.zeros(n_voxels)

    @property
    def n_voxels(self) -> int:
        return self._sum.size

    def update(self, beta: np.ndarray) -> None:
        b = np.asarray(beta, float)
        if b.shape != self._sum.shape:  # never a broadcast error, never voxels of two masks in one sum
            raise VoxelSpaceError(f"beta has {b.size} voxels but the session's running z-score has "
                                  f"{self._sum.size}")
        self.n += 1
        self._sum += b
        self._sumsq += b * b

    def __call__(self, beta: np.ndarray) -> np.ndarray:
        """Add ``beta`` to the statistics, then return it z-scored."""
        self.update(beta)
        mean = self._sum / self.n
        std = np.sqrt(np.maximum(self._sumsq / self.n - mean ** 2, 0.0))
        return ((np.asarray(beta, float) - mean) / (std + EPS)).astype(np.float32)


class FixedZScore:
    """z-scoring with saved statistics (``zscore_mean.npy`` and ``zscore_std.npy`` in a folder)."""

    def __init__(self, mean: np.ndarray, std: np.ndarray) -> None:
        if mean.shape != std.shape:
            raise ValueError(f"z-score statistics disagree: mean has shape {mean.shape}, std {std.shape}")
        self.mean, self.std = np.asarray(mean, float), np.asarray(std, float)

    @classmethod
    def load(cls, folder: str | Path) -> FixedZScore:
        folder = Path(folder)
        try:
            return cls(np.load(folder / "zscore_mean.npy", allow_pickle=False),
                       np.load(folder / "zscore_std.npy", allow_pickle=False))
        except OSError as exc:
            raise ValueError(f"{folder}: cannot read zscore_mean.npy / zscore_std.npy ({exc})") from None

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / "zscore_mean.npy", self.mean.astype(np.float32))
        np.save(folder / "zscore_std.npy", self.std.astype(np.float32))

    @property
    def n_voxels(self) -> int:
        return self.mean.size

    def __call__(self, beta: np.ndarray) -> np.ndarray:
        if np.shape(beta) != self.mean.shape:
            raise VoxelSpaceError(f"beta has {np.size(beta)} voxels but the saved z-score statistics have "
                                  f"{self.mean.size}")
        return ((np.asarray(beta, float) - self.mean) / (self.std + EPS)).astype(np.float32)


class NoZScore:
    def __call__(self, beta: np.ndarray) -> np.ndarray:
        return np.asarray(beta, np.float32)


class RepeatAverager:
    """The mean of every (z-scored) presentation of each image so far."""

    def __init__(self) -> None:
        self._sums: dict[str, np.ndarray] = {}
        self._counts: dict[str, int] = {}

    def __call__(self, image: str, beta: np.ndarray) -> tuple[np.ndarray, int]:
        self._sums[image] = self._sums.get(image, 0.0) + np.asarray(beta, float)
        self._counts[image] = self._counts.get(image, 0) + 1
        return (self._sums[image] / self._counts[image]).astype(np.float32), self._counts[image]
