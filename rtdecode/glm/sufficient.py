"""Running cross-products that make a trial's OLS and AR(1) estimate independent of the run length.

Every quantity nilearn's AR(1) fit needs for one voxel is a function of a few products of the design
X and the data y over the rows used, with L the shift to the previous row used:
    X'y, X'Ly, (LX)'y, y'y, y'Ly      (p-vectors and scalars per voxel)
    X'X, X'LX                        (p x p, shared by all voxels)
The columns of X that do not change while the run grows (each trial's regressor, the motion
parameters, the constant) have their products with y accumulated as each volume arrives, touching
only the regressors that are non-zero at that frame. The cosine drift basis changes with the number
of frames, so its products are taken at estimate time: a handful of columns, one pass over the data.
Then (derivation in docs/glm.md):
    OLS:  b = (X'X)^-1 X'y;  r0 = y'y - b.X'y;  r1 = y'Ly - b.(X'Ly + (LX)'y) + b'(X'LX)b
    AR(1) at level rho, with Xw = X - rho LX and yw = y - rho Ly:
          beta = e0' (Xw'Xw)^-1 Xw'yw,  Xw'yw = X'y - rho (X'Ly + (LX)'y) + rho^2 (LX)'Ly
All in float64, so the subtractions above lose nothing that matters.
"""

from __future__ import annotations

import numpy as np


class RunningProducts:
    """Products of the fixed design columns ``F`` (frames x q) with the data, updated per volume."""

    def __init__(self, fixed: np.ndarray, n_voxels: int) -> None:
        self.fixed = fixed  # (capacity, q): trial regressors, motion (filled as volumes come), constant
        q = fixed.shape[1]
        self.f_y = np.zeros((q, n_voxels))  # sum_t f_t y_t
        self.f_ly = np.zeros((q, n_voxels))  # sum over pairs f_t y_prev
        self.lf_y = np.zeros((q, n_voxels))  # sum over pairs f_prev y_t
        self.yy = np.zeros(n_voxels)
        self.y_ly = np.zeros(n_voxels)
        self.prev: int | None = None  # last frame used
        self.prev_y: np.ndarray | None = None

    def add(self, t: int, y: np.ndarray) -> None:
        """Frame ``t`` (after every earlier frame that will ever be used) with data ``y`` (float32)."""
        y64 = np.asarray(y, float)
        f_t = self.fixed[t]
        nz = np.flatnonzero(f_t)
        self.f_y[nz] += f_t[nz, None] * y64
        self.yy += y64 * y64
        if self.prev is not None:
            f_s = self.fixed[self.prev]
            nzs = np.flatnonzero(f_s)
            self.f_ly[nz] += f_t[nz, None] * self.prev_y
            self.lf_y[nzs] += f_s[nzs, None] * y64
            self.y_ly += y64 * self.prev_y
        self.prev, self.prev_y = t, y64


def probe_betas(X: np.ndarray, xy: np.ndarray, x_ly: np.ndarray, lx_y: np.ndarray, yy: np.ndarray,
                y_ly: np.ndarray, y_last: np.ndarray, noise_model: str, bins: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """Column 0's coefficient per voxel from the products (see module docstring); returns (beta, rho)."""
    X = np.asarray(X, float)
    n = X.shape[0]
    keep = np.any(X != 0, axis=0)
    keep[0] = True
    X, xy, x_ly, lx_y = X[:, keep], xy[keep], x_ly[keep], lx_y[keep]
    p = X.shape[1]
    lagged = np.zeros_like(X)
    lagged[1:] = X[:-1]
    g0 = X.T @ X
    g0_inv = _solve(g0, np.eye(p))
    if noise_model == "ols":
        return g0_inv[0] @ xy, np.zeros(1)
    b = g0_inv @ xy  # (p, V) OLS coefficients; X'X is tiny, so invert it once
    m1 = X.T @ lagged  # X'LX
    x_lag = x_ly + lx_y  # X'Ly + (LX)'y
    r0 = (yy - np.einsum("pv,pv->v", b, xy)) / n
    r1 = (y_ly - np.einsum("pv,pv->v", b, x_lag - m1 @ b)) / max(n - 1, 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = np.where(r0 > 0, r1 / r0, 0.0)
    level = np.trunc(rho * bins).astype(np.int64)  # nilearn's binning, as integers: no sort needed
    np.clip(level, -bins, bins, out=level)
    present = np.bincount(level + bins, minlength=2 * bins + 1) > 0
    index = np.cumsum(present) - 1
    levels = (np.flatnonzero(present) - bins) / bins
    which = index[level + bins]
    rho = level / bins
    g2 = lagged.T @ lagged
    r = levels[:, None, None]
    gram = g0 + r ** 2 * g2 - r * (m1 + m1.T)
    e0 = np.zeros((len(levels), p, 1))
    e0[:, 0] = 1.0
    weights = _solve_batched(gram, e0)  # (levels, p): each level's weights
    g = weights[which]  # (V, p), contiguous
    # Xw'yw = X'y - rho (X'Ly + (LX)'y) + rho^2 (LX)'Ly, and (LX)'Ly is X'y without the last row, so
    # beta = (1 + rho^2) g.X'y - rho g.(X'Ly + (LX)'y) - rho^2 y_last g.x_last: no (p, V) temporaries.
    gxy = np.einsum("vp,pv->v", g, xy)
    glag = np.einsum("vp,pv->v", g, x_lag)
    glast = (weights @ X[-1])[which]
    rho2 = rho * rho
    beta = (1 + rho2) * gxy - rho * glag - rho2 * y_last * glast
    return beta, rho


def _well_conditioned(a: np.ndarray) -> bool:
    """Symmetric positive definite matrices (or a stack) that are far from singular: a Cholesky factor
    exists and its smallest pivot is not tiny against its largest (a cheap bound on the condition
    number; an eigen-decomposition per trial and HRF group cost more than the fit)."""
    try:
        d = np.diagonal(np.linalg.cholesky(a), axis1=-2, axis2=-1)
    except np.linalg.LinAlgError:
        return False
    return bool(np.all(d.min(-1) ** 2 > 1e-10 * d.max(-1) ** 2))


def _solve(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    try:
        if _well_conditioned(a):
            return np.linalg.solve(a, b)
    except np.linalg.LinAlgError:
        pass
    return np.linalg.pinv(a, hermitian=True) @ b


def _solve_batched(gram: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    try:
        if _well_conditioned(gram):
            g = np.linalg.solve(gram, rhs)[:, :, 0]
            if np.all(np.isfinite(g)):
                return g
    except np.linalg.LinAlgError:
        pass
    return np.linalg.pinv(gram, hermitian=True)[:, :, 0]
