"""The simulator's own haemodynamics: responses to boxcars, per-voxel HRF shapes, a slow cosine basis.

Written independently of the GLM (``rtdecode.glm.design``) so that a bug there cannot hide in data
made with it. The canonical shape is the Glover (1999) double gamma (delay 6 s, undershoot 12 s,
dispersion 0.9, undershoot ratio 0.48). The GLM samples a convolution on a fine grid; here a boxcar's
response is computed exactly from the gamma distribution functions, because the integral of a gamma
density is its CDF.

:class:`HrfShape` holds one double gamma per voxel, so that people and voxels can differ in timing
(``physiology = "varied"``, docs/simulated-brain.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

PEAK_S, UNDERSHOOT_S, DISPERSION, RATIO = 6.0, 12.0, 0.9, 0.48


@dataclass(frozen=True)
class HrfShape:
    """Double-gamma parameters per voxel (arrays of one length, or scalars for one shared shape).

    ``peak_s`` and ``undershoot_s`` are the two gammas' means (nilearn's ``delay`` and ``undershoot``);
    the response's maximum comes about one ``dispersion`` earlier.
    """

    peak_s: np.ndarray | float = PEAK_S
    undershoot_s: np.ndarray | float = UNDERSHOOT_S
    dispersion: np.ndarray | float = DISPERSION
    ratio: np.ndarray | float = RATIO

    def step(self, t: np.ndarray) -> np.ndarray:
        """Response at ``t`` (shape (..., 1) against per-voxel parameters) to a unit step at 0, unit area."""
        t = np.asarray(t, float)
        d = np.asarray(self.dispersion, float)
        peak = stats.gamma.cdf(t, np.asarray(self.peak_s, float) / d, scale=d)
        under = stats.gamma.cdf(t, np.asarray(self.undershoot_s, float) / d, scale=d)
        r = np.asarray(self.ratio, float)
        return (peak - r * under) / (1.0 - r)

    @property
    def canonical(self) -> bool:
        return all(np.ndim(v) == 0 for v in (self.peak_s, self.undershoot_s, self.dispersion, self.ratio)) and \
            (self.peak_s, self.undershoot_s, self.dispersion, self.ratio) == (PEAK_S, UNDERSHOOT_S, DISPERSION, RATIO)


GLOVER = HrfShape()


def step_response(t: np.ndarray) -> np.ndarray:
    """Response at ``t`` seconds to a unit step at 0, scaled to reach 1 (the Glover HRF has unit area)."""
    return GLOVER.step(t)


def boxcar_responses(onsets: np.ndarray, durations: np.ndarray, times: np.ndarray) -> np.ndarray:
    """(len(times), len(onsets)): each event's boxcar convolved with the Glover HRF, at ``times``."""
    onsets = np.asarray(onsets, float)[None, :]
    ends = onsets + np.asarray(durations, float)[None, :]
    times = np.asarray(times, float)[:, None]
    return step_response(times - onsets) - step_response(times - ends)


def voxel_signal(shape: HrfShape, amplitudes: np.ndarray, onsets: np.ndarray, durations: np.ndarray,
                 times: np.ndarray, chunk: int = 512) -> np.ndarray:
    """(len(times), n_voxels): sum over events of amplitude x boxcar response, each voxel its own HRF.

    ``amplitudes`` is (n_voxels, n_events). The step response is evaluated once per distinct lag
    (times minus onsets or ends, to the millisecond), which for a TR-locked paradigm is a few hundred
    values, not one per (frame, event, voxel).
    """
    amplitudes = np.asarray(amplitudes, float)
    onsets, durations = np.asarray(onsets, float), np.asarray(durations, float)
    times = np.asarray(times, float)
    n_vox = amplitudes.shape[0]
    start = np.round(np.subtract.outer(times, onsets), 3)
    stop = np.round(start - durations[None, :], 3)
    lags, inverse = np.unique(np.r_[start.ravel(), stop.ravel()], return_inverse=True)
    i_start, i_stop = inverse[: start.size].reshape(start.shape), inverse[start.size:].reshape(start.shape)
    out = np.zeros((len(times), n_vox))
    params = [np.broadcast_to(np.asarray(p, float), (n_vox,)) for p in
              (shape.peak_s, shape.undershoot_s, shape.dispersion, shape.ratio)]
    live = lags > 0
    for lo in range(0, n_vox, chunk):
        sl = slice(lo, lo + chunk)
        sub = HrfShape(*(p[sl] for p in params))
        table = np.zeros((len(lags), len(params[0][sl])))
        table[live] = sub.step(lags[live, None])
        for t in range(len(times)):
            resp = table[i_start[t]] - table[i_stop[t]]  # (n_events, chunk)
            out[t, sl] = np.einsum("jv,vj->v", resp, amplitudes[sl])
    return out


def slow_cosines(n_frames: int, tr_s: float, cutoff_hz: float) -> np.ndarray:
    """(n_frames, k): the cosines of the run slower than ``cutoff_hz`` (a high-pass filter's span)."""
    k = np.arange(1, n_frames)
    k = k[k / (2.0 * n_frames * tr_s) <= cutoff_hz]  # cosine k has frequency k / (2 T)
    phase = (np.arange(n_frames)[:, None] + 0.5) / n_frames
    return np.cos(np.pi * phase * k[None, :])
