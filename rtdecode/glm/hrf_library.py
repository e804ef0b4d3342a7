"""A library of candidate HRFs and the choice of one per voxel (GLMsingle's approach, our own family).

The library is one-dimensional, as GLMsingle's: double gammas whose delay runs from early to late
(the undershoot follows the peak at a fixed distance; dispersion and undershoot ratio stay Glover's),
ordered so that neighbouring members are similar. Member ``GLOVER_INDEX`` is closest to the
canonical Glover HRF. Each voxel's member is the one under which its single-trial betas agree best
across repeated presentations of the same images in different runs, shrunk towards the person's
curve by an amount chosen on held-out images (:func:`choose_members`). The in-run fit of a
one-regressor-per-trial design (GLMsingle's R^2) was tried first and prefers the latest members in
back-to-back designs (it fits slow noise), so it is not used (docs/glm.md).
"""

from __future__ import annotations

import numpy as np

from rtdecode.glm.design import double_gamma_hrf

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


def residualize(nuisance: np.ndarray, a: np.ndarray) -> np.ndarray:
    """``a`` with its least-squares fit on the nuisance columns removed (columns of zeros ignored)."""
    n = nuisance[:, np.any(nuisance != 0, axis=0)]
    coef, *_ = np.linalg.lstsq(n, a, rcond=None)
    return a - n @ coef


def choose_members(rel_a: np.ndarray, rel_b: np.ndarray, rel_all: np.ndarray,
                   shrinkage: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 0.9, 1.0)) -> tuple[np.ndarray, float, dict]:
    """Each voxel's member from beta reliability per (member, voxel), shrunk towards the person's curve.

    A voxel's own curve is noisy (tens of repeated images); the mean over responsive voxels is not. The score is
    (1 - s) own + s mean; s is the value whose choices, made on one half of the repeated images
    (``rel_a``), give the most reliable betas on the other half (``rel_b``), and back. Returns the
    choices on all pairs (``rel_all``), s and the held-out reliability for every s.
    """
    cols = np.arange(rel_all.shape[1])

    def pick(rel: np.ndarray, s: float) -> np.ndarray:
        # The person's curve: voxels weighted by how reliable they are at all (at Glover's neighbour), so
        # that the many voxels without a response do not flatten it.
        w = np.clip(rel[GLOVER_INDEX], 0, None)
        person = (rel @ w / w.sum())[:, None] if w.sum() > 0 else rel.mean(1, keepdims=True)
        return np.argmax((1 - s) * rel + s * person, axis=0)

    def score(chosen_on: np.ndarray, scored_on: np.ndarray, s: float) -> float:
        # Weighted by responsiveness in the half the choice was made on: voxels without a response have
        # reliabilities that drift with the member (slow noise) and must not steer the choice of s.
        w = np.clip(chosen_on[GLOVER_INDEX], 0, None) + 1e-12
        return float(scored_on[pick(chosen_on, s), cols] @ w / w.sum())

    held = {s: (score(rel_a, rel_b, s) + score(rel_b, rel_a, s)) / 2 for s in shrinkage}
    best = max(held, key=held.get)
    return pick(rel_all, best), best, held
