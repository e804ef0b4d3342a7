"""A library of candidate HRFs and the choice of one per voxel (GLMsingle's approach, our own family).

The library is one-dimensional, as GLMsingle's: double gammas whose delay runs from early to late
(the undershoot follows the peak at a fixed distance; dispersion and undershoot ratio stay Glover's),
ordered so that neighbouring members are similar. Member ``GLOVER_INDEX`` is closest to the
canonical Glover HRF. Each voxel's member is the one under which its single-trial betas agree best
across repeated presentations of the same images in different runs. One voxel's evidence is noisy;
where the voxels' positions are known it is pooled with its neighbours' (a Gaussian over the grid,
width chosen on held-out images), which keeps a patch of late voxels late; without positions it is
shrunk towards the person's curve (:func:`choose_members`). The in-run fit of a
one-regressor-per-trial design (GLMsingle's R^2) was tried first and prefers the latest members in
back-to-back designs (it fits slow noise), so it is not used (docs/glm.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from rtdecode.glm.design import _gamma_pdf, double_gamma_hrf

DELAYS_S = np.round(np.linspace(4.0, 9.0, 21), 3)  # 0.25 s apart, Glover's 6 s is member 8
UNDERSHOOT_GAP_S, DISPERSION, RATIO = 6.0, 0.9, 0.48
GLOVER_INDEX = int(np.argmin(np.abs(DELAYS_S - 6.0)))


def library_params() -> np.ndarray:
    """(n_members, 4): delay, undershoot, dispersion, ratio of each member (the gammas' means, s)."""
    return np.stack([DELAYS_S, DELAYS_S + UNDERSHOOT_GAP_S, np.full(len(DELAYS_S), DISPERSION),
                     np.full(len(DELAYS_S), RATIO)], axis=1)


def library_kernel(member: int, tr_s: float, params: np.ndarray | None = None) -> np.ndarray:
    """Member ``member``'s HRF on the GLM's oversampled grid (unit sum)."""
    d, u, disp, r = (library_params() if params is None else params)[member]
    return double_gamma_hrf(tr_s, float(d), float(u), float(disp), float(r))


def nearest_member(delay_s: np.ndarray, params: np.ndarray | None = None) -> np.ndarray:
    """The library member whose delay is closest to each ``delay_s`` (for checking a choice)."""
    delays = (library_params() if params is None else params)[:, 0]
    return np.argmin(np.abs(np.asarray(delay_s, float)[:, None] - delays[None, :]), axis=1)


def peak_times(params: np.ndarray, step_s: float = 0.01) -> np.ndarray:
    """Time (s) of the maximum of each double gamma in ``params`` (rows: delay, undershoot, dispersion, ratio).

    The delay parameter is the gamma's mean, not where the response peaks (about one dispersion earlier);
    a choice is judged on the curve's peak, the same way for the library and for a true HRF."""
    params = np.atleast_2d(np.asarray(params, float))
    t = np.arange(0.0, 30.0, step_s)
    out = np.empty(len(params))
    for i, (d, u, disp, r) in enumerate(params):
        out[i] = t[np.argmax(_gamma_pdf(t, d / disp, disp) - r * _gamma_pdf(t, u / disp, disp))]
    return out


@dataclass(frozen=True)
class VoxelGrid:
    """Where each voxel lies: its (i, j, k) on the mask's grid and the grid's voxel size in mm."""

    ijk: np.ndarray  # (voxels, 3) int
    voxel_mm: tuple[float, float, float]

    @classmethod
    def from_mask(cls, mask: np.ndarray, affine: np.ndarray) -> VoxelGrid:
        """The mask's voxels in the order masked vectors hold them (C order, as ``data[mask]``)."""
        return cls(np.argwhere(np.asarray(mask, bool)), tuple(float(v) for v in np.linalg.norm(affine[:3, :3], axis=0)))

    def smooth(self, values: np.ndarray, weights: np.ndarray, sigma_mm: float) -> np.ndarray:
        """(rows, voxels) ``values`` averaged over neighbours with a Gaussian of ``sigma_mm``, each voxel
        weighted by ``weights`` (voxels outside the mask count for nothing, not as zeros)."""
        if sigma_mm <= 0:
            return values
        lo = self.ijk.min(0)
        idx = tuple((self.ijk - lo).T)
        shape = tuple(self.ijk.max(0) - lo + 1)
        sigma = [sigma_mm / v for v in self.voxel_mm]
        w = np.zeros(shape)
        w[idx] = weights
        norm = ndimage.gaussian_filter(w, sigma, mode="constant")[idx]
        out = np.empty_like(values, dtype=float)
        for row, v in enumerate(values):
            vol = np.zeros(shape)
            vol[idx] = v * weights
            out[row] = ndimage.gaussian_filter(vol, sigma, mode="constant")[idx] / np.maximum(norm, 1e-12)
        return out


def residualize(nuisance: np.ndarray, a: np.ndarray) -> np.ndarray:
    """``a`` with its least-squares fit on the nuisance columns removed (columns of zeros ignored)."""
    n = nuisance[:, np.any(nuisance != 0, axis=0)]
    coef, *_ = np.linalg.lstsq(n, a, rcond=None)
    return a - n @ coef


SIGMAS_MM = (0.0, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
SHRINKAGE = (0.0, 0.25, 0.5, 0.75, 0.9, 1.0)


def choose_members(rel_a: np.ndarray, rel_b: np.ndarray, rel_all: np.ndarray,
                   grid: VoxelGrid | None = None) -> tuple[np.ndarray, str, dict]:
    """Each voxel's member from beta reliability per (member, voxel), its evidence pooled to be less noisy.

    With ``grid``: each voxel's curve is averaged with its neighbours' (Gaussian of sigma mm, voxels
    weighted by how responsive they are), so a patch of late voxels stays late. Without: it is shrunk
    towards the person's curve, (1 - s) own + s mean. The amount is the one whose choices, made on one
    half of the repeated images (``rel_a``), give the most reliable betas on the other half
    (``rel_b``), and back; over the grid, the least pooling whose held-out reliability is within one
    standard error of the best (the one-standard-error rule: pooling blurs small patches, such as late
    venous voxels, so more of it must earn its place). Returns the choices on all
    pairs (``rel_all``), the amount as text and the held-out reliability for every amount.
    """
    cols = np.arange(rel_all.shape[1])

    def pick(rel: np.ndarray, amount: float) -> np.ndarray:
        if grid is not None:
            # Responsive voxels carry the evidence; one without a response adds mostly noise.
            return np.argmax(grid.smooth(rel, np.clip(rel.max(0), 0, None) + 1e-3, amount), axis=0)
        # The person's curve: voxels weighted by how reliable they are at all (at Glover's neighbour), so
        # that the many voxels without a response do not flatten it.
        w = np.clip(rel[GLOVER_INDEX], 0, None)
        person = (rel @ w / w.sum())[:, None] if w.sum() > 0 else rel.mean(1, keepdims=True)
        return np.argmax((1 - amount) * rel + amount * person, axis=0)

    def per_voxel(chosen_on: np.ndarray, scored_on: np.ndarray, amount: float) -> tuple[np.ndarray, np.ndarray]:
        # Weighted by responsiveness in the half the choice was made on: voxels without a response have
        # reliabilities that drift with the member (slow noise) and must not steer the choice.
        return scored_on[pick(chosen_on, amount), cols], np.clip(chosen_on[GLOVER_INDEX], 0, None) + 1e-12

    amounts = SIGMAS_MM if grid is not None else SHRINKAGE
    # Each voxel's held-out reliability under each amount, both ways round, and the weights.
    parts = {a: (per_voxel(rel_a, rel_b, a), per_voxel(rel_b, rel_a, a)) for a in amounts}
    held = {a: float(sum(v @ w / w.sum() for v, w in p) / 2) for a, p in parts.items()}
    best = max(held, key=held.get)
    if grid is not None:
        best = min(a for a in amounts if _within_one_se(parts[a], parts[best]))
    what = f"pooled over neighbours, Gaussian sigma {best:g} mm" if grid is not None else f"shrunk {best:g} towards the person's curve"
    return pick(rel_all, best), what, held


def _within_one_se(candidate: tuple, best: tuple) -> bool:
    """Whether a candidate's held-out reliability is within one standard error of the best's: the paired
    per-voxel differences (weighted as the scores are), both directions of the half split pooled."""
    diffs, weights = [], []
    for (v, w), (vb, _) in zip(candidate, best, strict=True):
        diffs.append(v - vb)
        weights.append(w / w.sum())
    d, w = np.concatenate(diffs), np.concatenate(weights) / len(diffs)
    mean = float(d @ w)
    n_eff = 1.0 / float(np.sum(w ** 2))
    se = float(np.sqrt(np.sum(w * (d - mean) ** 2) / max(n_eff - 1, 1)))
    return mean >= -se
