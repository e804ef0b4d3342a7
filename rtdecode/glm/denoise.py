"""Noise regressors from a pool of voxels without task response (GLMdenoise's idea, our own code).

Pure functions: a run's noise components are the leading temporal principal components of the pool
voxels' time series once the drift and the constant are removed; :func:`choose_count` picks how many
by how well betas of the same image agree across its presentations in different calibration runs.
:class:`NoisePool` is the real-time shell: it keeps the current run's pool voxels and gives the
components of the frames received so far, the same computation on fewer rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rtdecode.glm.design import cosine_drift, frame_times
from rtdecode.glm.hrf_library import residualize

MAX_COMPONENTS = 10


def noise_components(pool: np.ndarray, baseline: np.ndarray, k: int) -> np.ndarray:
    """(frames, k) leading temporal components of ``pool`` (frames, voxels) after removing ``baseline``
    columns (drift, constant); unit variance, sign fixed so each component's first loading is positive."""
    n = pool.shape[0]
    if k <= 0 or n < 2 or pool.shape[1] == 0:
        return np.zeros((n, 0))
    r = residualize(baseline, pool.astype(float))
    r /= np.maximum(r.std(0), 1e-9)  # each voxel counts once, whatever its noise level (GLMdenoise normalises too)
    # Left singular vectors from the frames x frames Gram matrix: frames are fewer than pool voxels.
    w, u = np.linalg.eigh(r @ r.T)
    w, u = w[::-1], u[:, ::-1]
    k = min(k, int(np.sum(w > w[0] * 1e-12)))
    loading = u[:, :k].T @ r[:, 0]  # sign fixed so each component's first loading is positive
    comps = u[:, :k] * np.where(loading < 0, -1.0, 1.0)[None, :]
    return comps * np.sqrt(n)


def baseline_columns(n_frames: int, tr_s: float, high_pass_hz: float, rows: np.ndarray | None = None) -> np.ndarray:
    """The cosine drift and the constant over the frames used."""
    cols = np.c_[cosine_drift(high_pass_hz, frame_times(n_frames, tr_s)), np.ones(n_frames)]
    return cols if rows is None else cols[rows]


def repeat_pairs(images: list[str]) -> np.ndarray:
    """(pairs, 2) trial indices of every two presentations of the same image."""
    where: dict[str, list[int]] = {}
    for i, img in enumerate(images):
        where.setdefault(img, []).append(i)
    pairs = [(a, b) for idx in where.values() for k, a in enumerate(idx) for b in idx[k + 1:]]
    return np.asarray(pairs, int).reshape(-1, 2)


def repeat_reliability(betas: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Per voxel: the correlation, over pairs of presentations of the same image, of their betas."""
    if len(pairs) < 3:
        return np.zeros(betas.shape[1])
    a, b = betas[pairs[:, 0]], betas[pairs[:, 1]]
    a, b = a - a.mean(0), b - b.mean(0)
    return np.sum(a * b, 0) / np.maximum(np.sqrt(np.sum(a * a, 0) * np.sum(b * b, 0)), 1e-12)


def choose_count(reliability: np.ndarray, weights: np.ndarray | None = None) -> tuple[int, np.ndarray]:
    """From (counts, voxels) beta reliability with 0..K components: the first count reaching 95 % of the
    best gain in the (weighted) mean over voxels (later components add little and cost rows), and that
    mean for every count. ``weights``: how much each voxel responds (voxels without a response have
    reliabilities that move with the noise model and should not decide)."""
    w = np.ones(reliability.shape[1]) if weights is None else np.asarray(weights, float) + 1e-12
    score = reliability @ w / w.sum()
    gain = score - score[0]
    if gain.max() <= 0:
        return 0, score
    return int(np.flatnonzero(gain >= 0.95 * gain.max())[0]), score


class NoisePool:
    """The current run's pool voxels, fed volume by volume; :meth:`components` for the first n frames."""

    def __init__(self, pool: np.ndarray, k: int, tr_s: float, high_pass_hz: float, min_frames: int,
                 capacity: int = 192) -> None:
        self.pool = np.asarray(pool, int)
        self.k, self.tr_s, self.high_pass_hz, self.min_frames = k, tr_s, high_pass_hz, min_frames
        self._data = np.zeros((capacity, len(self.pool)), np.float32)
        self._present = np.zeros(capacity, bool)
        self._cache: tuple[tuple, np.ndarray] | None = None

    def _grow(self, frames: int) -> None:
        if frames > len(self._data):
            cap = max(frames, int(len(self._data) * 1.5))
            data = np.zeros((cap, len(self.pool)), np.float32)
            data[: len(self._data)] = self._data
            present = np.zeros(cap, bool)
            present[: len(self._present)] = self._present
            self._data, self._present = data, present

    def add(self, index: int, vector: np.ndarray) -> None:
        self._grow(index + 1)
        self._data[index] = vector[self.pool]
        self._present[index] = True
        self._cache = None

    def add_missing(self, index: int) -> None:
        self._grow(index + 1)
        self._present[index] = False
        self._cache = None

    def components(self, n_frames: int) -> np.ndarray | None:
        """(n_frames, k) components from the frames received among the first ``n_frames`` (zero rows
        where a volume is missing), or None while fewer than ``min_frames`` are in."""
        rows = self._present[:n_frames]
        if self.k <= 0 or int(rows.sum()) < max(self.min_frames, self.k + 2):
            return None
        key = (n_frames, int(rows.sum()))
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        base = baseline_columns(n_frames, self.tr_s, self.high_pass_hz, rows)
        out = np.zeros((n_frames, self.k))
        comps = noise_components(self._data[:n_frames][rows], base, self.k)
        out[rows, : comps.shape[1]] = comps
        self._cache = (key, out)
        return out


@dataclass
class NoiseSubtraction:
    """Noise learned on the calibration hour and subtracted from every volume (issue 32).

    ``patterns`` (pool voxels, K) are the pool's leading spatial principal components over the whole hour,
    ``loadings`` (K, voxels) how much of each component every voxel carries. A volume's component values
    come from its pool voxels alone (z-scored with the hour's ``center`` and ``scale``), so a short fit
    spends no rows on noise regressors and nothing is re-fitted from a few frames. What the hour's
    constant and drift would have removed (an offset, a slow trend) is left to the GLM's own.
    """

    pool: np.ndarray
    center: np.ndarray
    scale: np.ndarray
    patterns: np.ndarray
    loadings: np.ndarray

    @property
    def max_components(self) -> int:
        return self.patterns.shape[1]

    def values(self, vectors: np.ndarray) -> np.ndarray:
        """(..., K) component values of volumes (..., voxels)."""
        return ((np.asarray(vectors, float)[..., self.pool] - self.center) / self.scale) @ self.patterns

    def clean(self, vectors: np.ndarray, k: int) -> np.ndarray:
        """``vectors`` with the first ``k`` components' share removed from every voxel (float32)."""
        if k <= 0:
            return np.asarray(vectors, np.float32)
        out = np.asarray(vectors, float) - self.values(vectors)[..., :k] @ self.loadings[:k]
        return out.astype(np.float32)


def learn_subtraction(runs: list[tuple[np.ndarray, np.ndarray, np.ndarray]], pool: np.ndarray,
                      k: int = MAX_COMPONENTS) -> NoiseSubtraction:
    """Patterns and loadings from calibration runs, each (data (frames, voxels), baseline columns, task
    columns): the pool's series with each run's baseline removed give the patterns; every voxel's series
    and the component values, both with baseline and task removed, give its loadings (least squares
    over the hour, so tens of minutes of data decide each loading, not a few frames)."""
    pool = np.asarray(pool, int)
    resid = [residualize(base, data[:, pool].astype(float)) for data, base, _ in runs]
    raw = np.concatenate([data[:, pool] for data, _, _ in runs]).astype(float)
    center, scale = raw.mean(0), np.maximum(np.concatenate(resid).std(0), 1e-9)
    z = np.concatenate(resid) / scale
    k = max(0, min(k, len(pool) - 1, len(z) - 1))
    _, _, vt = np.linalg.svd(z, full_matrices=False)
    patterns = vt[:k].T
    comps, ys = [], []
    for (data, base, task), r in zip(runs, resid, strict=True):
        nuisance = np.c_[base, task]
        comps.append(residualize(nuisance, (r / scale) @ patterns))
        ys.append(residualize(nuisance, data.astype(float)))
    c, y = np.concatenate(comps), np.concatenate(ys)
    loadings = np.linalg.lstsq(c, y, rcond=None)[0] if k else np.zeros((0, y.shape[1]))
    return NoiseSubtraction(pool, center, scale, patterns, loadings)


def subtraction_scores(runs: list, sub: NoiseSubtraction, voxels: np.ndarray, score, settings,
                       delay_s: float) -> tuple[np.ndarray, np.ndarray]:
    """The tuning's criterion on ``voxels``' betas with 0..K components subtracted, (K + 1, voxels) at each
    trial's fast tier (``delay_s`` after onset: the rows the live GLM has then) and at the end of its run.
    ``runs``: :class:`rtdecode.glm.tuning.TuningRun`; ``score``: betas (trials, voxels) -> (voxels,)
    (:mod:`rtdecode.glm.criteria`); ``settings``: the GLM's (Glover's design for every voxel)."""
    from rtdecode.base.events import Events
    from rtdecode.glm.incremental import IncrementalGLM

    fast, end = [], []
    for k in range(sub.max_components + 1):
        tiers: tuple[list, list] = ([], [])
        for run in runs:
            data = sub.clean(run.data, k)[:, voxels]
            events = Events(run.onsets, run.durations, tuple(run.images) or ("",) * len(run.onsets))
            glm = IncrementalGLM(events, len(voxels), settings, len(run.rows))
            for t, frame in enumerate(np.flatnonzero(run.rows)):
                glm.add(int(frame), data[t], run.motion[t])
            for frame in np.flatnonzero(~run.rows):
                glm.add_missing(int(frame))
            for j in range(len(events)):
                n = min(glm.frames_at(j, delay_s), len(run.rows))
                tiers[0].append(glm.estimate(j, n, version="endofrun").beta)
                tiers[1].append(glm.estimate(j, version="endofrun").beta)
        fast.append(score(np.stack(tiers[0])))
        end.append(score(np.stack(tiers[1])))
    return np.stack(fast), np.stack(end)
