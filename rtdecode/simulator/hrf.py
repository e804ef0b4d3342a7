"""The simulator's own haemodynamics: canonical responses to boxcars, and a slow cosine basis.

Written independently of the GLM (``rtdecode.glm.design``) so that a bug there cannot hide in data
made with it. The shape is the Glover (1999) double gamma (peak 6 s, undershoot 12 s, dispersion
0.9, undershoot ratio 0.48). The GLM samples a convolution on a fine grid; here a boxcar's
response is computed exactly from the gamma distribution functions, because the integral of a gamma
density is its CDF.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

PEAK_S, UNDERSHOOT_S, DISPERSION, RATIO = 6.0, 12.0, 0.9, 0.48


def step_response(t: np.ndarray) -> np.ndarray:
    """Response at ``t`` seconds to a unit step at 0, scaled to reach 1 (the HRF has unit area)."""
    t = np.asarray(t, float)
    peak = stats.gamma.cdf(t, PEAK_S / DISPERSION, scale=DISPERSION)
    under = stats.gamma.cdf(t, UNDERSHOOT_S / DISPERSION, scale=DISPERSION)
    return (peak - RATIO * under) / (1.0 - RATIO)


def boxcar_responses(onsets: np.ndarray, durations: np.ndarray, times: np.ndarray) -> np.ndarray:
    """(len(times), len(onsets)): each event's boxcar convolved with the HRF, at ``times``."""
    onsets = np.asarray(onsets, float)[None, :]
    ends = onsets + np.asarray(durations, float)[None, :]
    times = np.asarray(times, float)[:, None]
    return step_response(times - onsets) - step_response(times - ends)


def slow_cosines(n_frames: int, tr_s: float, cutoff_hz: float) -> np.ndarray:
    """(n_frames, k): the cosines of the run slower than ``cutoff_hz`` (a high-pass filter's span)."""
    k = np.arange(1, n_frames)
    k = k[k / (2.0 * n_frames * tr_s) <= cutoff_hz]  # cosine k has frequency k / (2 T)
    phase = (np.arange(n_frames)[:, None] + 0.5) / n_frames
    return np.cos(np.pi * phase * k[None, :])
