"""Design matrices for single-trial betas, built as nilearn's FirstLevelModel builds them.

Pure functions of arrays: the Glover HRF, event regressors sampled on an oversampled grid and
convolved, the cosine drift basis, and the LSS design (the trial's own regressor, one regressor for
all other trials, confounds, drift, constant). Matching nilearn's numerics (its time grid, its
regressor orthogonalisation, its cosine basis) is what lets betas correlate with nilearn's at
r >= 0.999.
"""

from __future__ import annotations

import numpy as np
from scipy.special import gammaln

OVERSAMPLING = 50
MIN_ONSET_S = -24.0


def glover_hrf(tr_s: float, oversampling: int = OVERSAMPLING, time_length_s: float = 32.0) -> np.ndarray:
    """The Glover (1999) HRF on nilearn's oversampled grid, normalised to unit sum."""
    return double_gamma_hrf(tr_s, oversampling=oversampling, time_length_s=time_length_s)


def double_gamma_hrf(tr_s: float, delay_s: float = 6.0, undershoot_s: float = 12.0, dispersion: float = 0.9,
                     ratio: float = 0.48, oversampling: int = OVERSAMPLING, time_length_s: float = 32.0) -> np.ndarray:
    """A double gamma on nilearn's oversampled grid, unit sum; the defaults are Glover's."""
    dt = tr_s / oversampling
    # nilearn's grid: linspace with endpoint, so the step is not exactly dt; copied for parity.
    t = np.linspace(0, time_length_s, int(np.rint(time_length_s / dt)))
    hrf = _gamma_pdf(t - dt, delay_s / dispersion, dispersion) - ratio * _gamma_pdf(t - dt, undershoot_s / dispersion, dispersion)
    return hrf / hrf.sum()


def _gamma_pdf(x: np.ndarray, shape: float, scale: float) -> np.ndarray:
    """Gamma density (scipy.stats.gamma.pdf without importing scipy.stats, which is slow)."""
    out = np.zeros_like(x, dtype=float)
    pos = x > 0
    z = x[pos] / scale
    out[pos] = np.exp((shape - 1) * np.log(z) - z - gammaln(shape)) / scale
    return out


def frame_times(n_frames: int, tr_s: float) -> np.ndarray:
    """Acquisition times with slice_time_ref=0, as Real-time MindEye configures nilearn."""
    return np.arange(n_frames) * tr_s


def event_regressor(onsets: np.ndarray, durations: np.ndarray, times: np.ndarray, tr_s: float,
                    hrf: np.ndarray | None = None, oversampling: int = OVERSAMPLING) -> np.ndarray:
    """One condition's boxcars convolved with the HRF and sampled at ``times`` (seconds)."""
    onsets = np.atleast_1d(np.asarray(onsets, float))
    durations = np.atleast_1d(np.asarray(durations, float))
    n = len(times)
    if n < 2:
        return np.zeros(n)
    lo, hi = times.min(), times.max()
    n_high = (n - 1) / (hi - lo) * (hi * (1 + 1 / (n - 1)) - lo - MIN_ONSET_S) * oversampling + 1
    grid = np.linspace(lo + MIN_ONSET_S, hi * (1 + 1 / (n - 1)), int(np.rint(n_high)))
    boxcar = np.zeros(len(grid))
    start = np.minimum(np.searchsorted(grid, onsets), len(grid) - 1)
    stop = np.minimum(np.searchsorted(grid, onsets + durations), len(grid) - 1)
    stop = np.where((stop == start) & (stop < len(grid) - 1), stop + 1, stop)
    np.add.at(boxcar, start, 1.0)
    np.add.at(boxcar, stop, -1.0)
    boxcar = np.cumsum(boxcar)
    kernel = glover_hrf(tr_s, oversampling) if hrf is None else hrf
    conv = np.convolve(boxcar, kernel)[: len(grid)]
    return np.interp(times, grid, conv)


def cosine_drift(high_pass_hz: float, times: np.ndarray) -> np.ndarray:
    """nilearn's DCT drift basis (without its constant column) for a high-pass cut-off in Hz."""
    n = len(times)
    if n < 2:
        return np.zeros((n, 0))
    dt = (times[-1] - times[0]) / (n - 1)
    order = min(n - 1, int(np.floor(2 * n * high_pass_hz * dt)))
    k = np.arange(1, order + 1)
    return np.sqrt(2.0 / n) * np.cos(np.pi / n * (np.arange(n)[:, None] + 0.5) * k[None, :])


def trial_regressors(onsets: np.ndarray, durations: np.ndarray, times: np.ndarray, tr_s: float,
                     kernel: np.ndarray | None = None, oversampling: int = OVERSAMPLING) -> np.ndarray:
    """(n_frames, n_trials): each trial's own regressor (the LSA design without nuisance columns);
    ``kernel``: an HRF on the oversampled grid (default Glover's).

    The same numbers as :func:`event_regressor` per trial, without a convolution per trial: a boxcar
    from grid point a to b convolved with the kernel is C[g - a] - C[g - b], with C the kernel's
    running sum, and only the grid points next to each frame time are needed.
    """
    kernel = glover_hrf(tr_s) if kernel is None else kernel
    onsets, durations = np.asarray(onsets, float), np.asarray(durations, float)
    n = len(times)
    if not len(onsets):
        return np.zeros((n, 0))
    if n < 2:
        return np.zeros((n, len(onsets)))
    lo, hi = times.min(), times.max()
    n_high = (n - 1) / (hi - lo) * (hi * (1 + 1 / (n - 1)) - lo - MIN_ONSET_S) * oversampling + 1
    grid = np.linspace(lo + MIN_ONSET_S, hi * (1 + 1 / (n - 1)), int(np.rint(n_high)))
    last = len(grid) - 1
    start = np.minimum(np.searchsorted(grid, onsets), last)
    stop = np.minimum(np.searchsorted(grid, onsets + durations), last)
    stop = np.where((stop == start) & (stop < last), stop + 1, stop)
    csum = np.r_[0.0, np.cumsum(kernel)]  # csum[m + 1] = kernel[0] + ... + kernel[m]

    def conv(g: np.ndarray) -> np.ndarray:  # (frames,) grid indices -> (frames, trials)
        def c(m):
            return csum[np.clip(m, -1, len(kernel) - 1) + 1]
        return c(g[:, None] - start[None, :]) - c(g[:, None] - stop[None, :])

    # np.interp of the convolution at the frame times, from its two neighbouring grid points.
    right = np.clip(np.searchsorted(grid, times, side="right"), 1, last)
    left = right - 1
    w = (times - grid[left]) / (grid[right] - grid[left])
    out = conv(left) * (1 - w)[:, None] + conv(right) * w[:, None]
    at_end = times >= grid[-1]
    if np.any(at_end):
        out[at_end] = conv(np.full(int(at_end.sum()), last))
    return out


def lss_design(trials: np.ndarray, probe: int, confounds: np.ndarray | None, drift: np.ndarray) -> np.ndarray:
    """Columns [probe, reference, confounds..., drift..., constant] for one trial (LSS).

    ``trials`` are the per-trial regressors of the events known so far; the reference column is their
    sum without the probe, which equals nilearn's single 'reference' condition because convolution is
    linear.
    """
    n = trials.shape[0]
    probe_col = trials[:, probe]
    reference = trials.sum(axis=1) - probe_col
    parts = [probe_col[:, None], reference[:, None]]
    if confounds is not None and confounds.size:
        parts.append(np.asarray(confounds, float).reshape(n, -1))
    parts += [drift, np.ones((n, 1))]
    return np.hstack(parts)
