"""Pure estimators of one trial's beta (column 0 of the design) for every voxel at once.

``ols`` is the probe row of the design's pseudo-inverse applied to the data. ``ar1`` follows nilearn's
``run_glm(noise_model='ar1')``: an OLS fit, each voxel's lag-1 autocorrelation of the residuals
(Yule-Walker, nilearn's denominators), truncated to ``bins`` levels, then an OLS fit of the
prewhitened design and data per level. Only the probe's coefficient is computed, and the whitened
fits are reduced to one weight vector per level, which is what makes them fast: two matrix products
over the data instead of a refit per level.
"""

from __future__ import annotations

import numpy as np


def _usable_columns(X: np.ndarray) -> np.ndarray:
    """Drop all-zero columns (a still head's motion, no other trial yet), which carry no information."""
    keep = np.any(X != 0, axis=0)
    keep[0] = True
    return X[:, keep]


def _pinv(X: np.ndarray) -> np.ndarray:
    """Pseudo-inverse of a tall design through its normal equations (an SVD costs more than the fit).

    Falls back to the SVD when the design is singular or badly conditioned, where the two differ.
    """
    gram = X.T @ X
    try:
        if np.linalg.cond(gram) < 1e10:
            return np.linalg.solve(gram, X.T)
    except np.linalg.LinAlgError:
        pass
    return np.linalg.pinv(X)


def ols_weights(X: np.ndarray) -> np.ndarray:
    """Weights w (n,) such that w @ Y is the OLS estimate of column 0's coefficient."""
    return _pinv(_usable_columns(np.asarray(X, float)))[0]


def ols_beta(X: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """Column 0's OLS coefficient for every voxel of ``Y`` (n, V)."""
    w = ols_weights(X).astype(Y.dtype)
    return w @ Y


class Workspace:
    """Reusable scratch arrays: a fresh 12 MB array per call costs more in page faults than the maths."""

    def __init__(self) -> None:
        self._buffers: dict[str, np.ndarray] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype) -> np.ndarray:
        buf = self._buffers.get(name)
        if buf is None or buf.dtype != dtype or buf.size < int(np.prod(shape)):
            buf = self._buffers[name] = np.empty(int(np.prod(shape)), dtype)
        return buf[: int(np.prod(shape))].reshape(shape)


def ar1_beta(X: np.ndarray, Y: np.ndarray, bins: int = 100, work: Workspace | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Column 0's AR(1)-prewhitened coefficient and the (binned) AR coefficient for every voxel."""
    work = work or Workspace()
    X = _usable_columns(np.asarray(X, float))
    n = X.shape[0]
    B = _pinv(X).astype(Y.dtype) @ Y
    E = np.matmul(X.astype(Y.dtype), B, out=work.get("residuals", Y.shape, Y.dtype))
    np.subtract(Y, E, out=E)  # residuals, computed directly: no cancellation in float32
    r0 = np.einsum("tv,tv->v", E, E) / n
    r1 = np.einsum("tv,tv->v", E[1:], E[:-1]) / max(n - 1, 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = np.where(r0 > 0, r1 / r0, 0.0)
    rho = np.trunc(rho.astype(np.float64) * bins) / bins  # nilearn: (rho * bins).astype(int) / bins
    levels, which = np.unique(rho, return_inverse=True)
    # One weight vector per level: beta_v = u_{level(v)} . y_v. Applying every level's weights to every
    # voxel in one matrix product and picking is faster than gathering voxels by level.
    U = _whitened_weights(X, levels).astype(Y.dtype)  # (n_levels, n)
    every = np.matmul(U, Y, out=work.get("levels", (len(levels), Y.shape[1]), Y.dtype))
    beta = every[which, np.arange(Y.shape[1])]
    return beta, rho


def _whitened_weights(X: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """For each AR level rho, u (n,) with u @ y equal to the whitened fit's column-0 coefficient.

    nilearn whitens rows t >= 1 as x_t - rho * x_{t-1} and keeps row 0. The probe row of the whitened
    pseudo-inverse is a = Xw @ pinv(Xw' Xw)[:, 0]; then a @ (W y) = (W' a) @ y, so u = W' a.
    """
    shifted = np.zeros_like(X)
    shifted[1:] = X[:-1]
    a0, a1 = X.T @ X, X.T @ shifted + shifted.T @ X
    a2 = shifted.T @ shifted
    r = levels[:, None, None]
    gram = a0 + r ** 2 * a2 - r * a1  # (L, p, p) = Xw' Xw for every level
    e0 = np.zeros((len(levels), X.shape[1], 1))
    e0[:, 0] = 1.0
    try:
        g = np.linalg.solve(gram, e0)[:, :, 0]  # (L, p)
        if not np.all(np.isfinite(g)) or np.linalg.cond(gram).max() > 1e10:
            raise np.linalg.LinAlgError
    except np.linalg.LinAlgError:
        g = np.linalg.pinv(gram, hermitian=True)[:, :, 0]
    a = g @ X.T - levels[:, None] * (g @ shifted.T)  # (L, n): Xw @ g
    u = a.copy()
    u[:, :-1] -= levels[:, None] * a[:, 1:]
    return u
