"""Rigid-body registration of a volume to a reference: a pure array-in, array-out core.

Inverse-compositional Gauss-Newton on the sum of squared intensity differences (Baker & Matthews,
2004): the Jacobian and Hessian come from the reference alone and are computed once per reference,
so each new volume costs a few trilinear interpolations at a sample of brain voxels. Three passes:
a coarse one on smoothed images widens the capture range to several millimetres and degrees (on a
half-resolution copy: 2x2x2 voxel averages, then a Gaussian of ``coarse_sigma`` / 2 half-voxels,
about as smooth as ``coarse_sigma`` full voxels for an eighth of the work); a full-resolution one on
the steepest voxels only, cheap, that brings the estimate close; a last one on every sampled voxel,
which then needs one or two steps and gives the estimate all voxels give.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from rtdecode.preprocess.rigid import matrix_to_params, params_to_matrix, volume_center

# The middle pass samples this many voxels, the steepest: 6k of ~30k on a 100x100x52 brain
# (docs/scanner-side.md, motion correction).
STEEP_POINTS = 6000
# The last pass stops when a step moves less than 0.3 micrometre (or 0.0003 degree at 50 mm), which
# gives the error the 1e-4 stop of before to four decimals; the passes before it only have to bring it
# within reach (0.01 mm).
FINE_TOL, ROUGH_TOL = 3e-4, 1e-2


@dataclass
class _Level:
    points: np.ndarray  # (N, 3) world coordinates of the sample points in the reference
    values: np.ndarray  # (N,) reference intensities there
    pinv: np.ndarray  # (6, N) (J^T J)^-1 J^T
    sigma: float  # smoothing (voxels of this level's grid) applied to the moving volume at this level
    half: bool  # whether this level works on the half-resolution grid
    tol: float  # convergence: largest step (mm; radians x 50 mm) at which this level stops


class RigidReference:
    """A reference volume prepared for repeated rigid registration.

    Args:
        data: reference volume (i, j, k).
        affine: its voxel-to-world matrix.
        mask: voxels to draw samples from; defaults to voxels above 30% of the robust maximum.
        stride: sample every ``stride``-th voxel along each axis at full resolution.
        coarse_sigma: smoothing (voxels) of the coarse pass; 0 disables it.
        steep_points: the middle pass samples this many voxels, the steepest (0: no middle pass).
    """

    def __init__(
        self,
        data: np.ndarray,
        affine: np.ndarray,
        mask: np.ndarray | None = None,
        stride: int = 2,
        coarse_sigma: float = 1.5,
        steep_points: int = STEEP_POINTS,
    ) -> None:
        data = np.asarray(data, dtype=np.float32)
        self.shape = data.shape
        self.affine = np.asarray(affine, dtype=float)
        self.center = volume_center(data.shape, self.affine)
        if mask is None:
            mask = data > 0.3 * np.percentile(data, 98)
        # Grow the mask so the brain's edge, where most of the signal for motion lies, is sampled.
        mask = ndimage.binary_dilation(mask, iterations=2)
        self.levels: list[_Level] = []
        if coarse_sigma > 0 and min(data.shape) >= 8:
            smooth = ndimage.gaussian_filter(halve(data), coarse_sigma / 2)
            half_mask = halve(mask.astype(np.float32)) > 0
            self.levels.append(self._level(smooth, half_mask, half_affine(self.affine), stride, coarse_sigma / 2, True))
        full = self._level(data, mask, self.affine, stride, 0.0, False)
        if steep_points and len(full.points) > 2 * steep_points:
            self.levels.append(self._level(data, mask, self.affine, stride, 0.0, False, steep_points))
        self.levels.append(full)

    def _level(self, data: np.ndarray, mask: np.ndarray, affine: np.ndarray, stride: int, sigma: float,
               half: bool, max_points: int = 0) -> _Level:
        sub = np.zeros_like(mask)
        sub[::stride, ::stride, ::stride] = True
        ijk = np.argwhere(mask & sub).astype(float)
        grads = np.gradient(data)
        g_vox = np.stack([g[mask & sub] for g in grads], axis=1)
        # Chain rule: world gradient = A^-T voxel gradient, with A the 3x3 part of the affine.
        g_world = g_vox @ np.linalg.inv(affine[:3, :3])
        points = ijk @ affine[:3, :3].T + affine[:3, 3]
        jac = np.hstack([g_world, np.cross(points - self.center, g_world)])
        keep = np.any(jac != 0, axis=1)
        if max_points and keep.sum() > max_points:
            # Flat voxels say almost nothing about motion: keep the steepest (gradient magnitude).
            steep = np.linalg.norm(g_world, axis=1)
            keep &= steep >= np.partition(steep[keep], -max_points)[-max_points]
        jac, points = jac[keep], points[keep]
        values = data[mask & sub][keep]
        hess = jac.T @ jac
        pinv = np.linalg.solve(hess, jac.T)
        return _Level(points=points, values=values.astype(np.float64), pinv=pinv, sigma=sigma, half=half,
                      tol=ROUGH_TOL if half or max_points else FINE_TOL)

    def register(
        self,
        data: np.ndarray,
        affine: np.ndarray,
        init: np.ndarray | None = None,
        max_iterations: int = 12,
        tol: float = 0.0,
    ) -> np.ndarray:
        """Return the 4x4 matrix mapping reference world points to ``data``'s world points.

        Each level stops after ``max_iterations`` or once a step is below ``tol`` or its own threshold
        (mm; radians count as the arc at 50 mm)."""
        data = np.asarray(data, dtype=np.float32)
        mat = np.eye(4) if init is None else np.array(init, dtype=float)
        for level in self.levels:
            if level.half:
                moving = ndimage.gaussian_filter(halve(data), level.sigma)
                inv_aff = np.linalg.inv(half_affine(np.asarray(affine, float)))
            else:
                moving, inv_aff = data, np.linalg.inv(affine)
            for _ in range(max_iterations):
                sampled = sample_world(moving, inv_aff @ mat, level.points)
                inside = sampled[1]
                err = np.where(inside, sampled[0] - level.values, 0.0)
                delta = level.pinv @ err
                mat = mat @ np.linalg.inv(params_to_matrix(delta, self.center))
                step = np.abs(delta[:3]).max() + 50 * np.abs(delta[3:]).max()
                if step < max(tol, level.tol):
                    break
        return mat

    def params(self, mat: np.ndarray) -> np.ndarray:
        """Six motion parameters (mm, radians) of a matrix returned by :meth:`register`."""
        return matrix_to_params(mat, self.center)

    def matrix(self, params: np.ndarray) -> np.ndarray:
        return params_to_matrix(params, self.center)


def halve(data: np.ndarray) -> np.ndarray:
    """2x2x2 voxel averages (an odd last row, column or slice is dropped), as float32."""
    i, j, k = (n - n % 2 for n in data.shape[:3])
    d = data[:i, :j, :k]
    out = np.zeros((i // 2, j // 2, k // 2), np.float32)
    for a in (0, 1):  # eight strided views summed: far cheaper than a reshape-and-mean over split axes
        for b in (0, 1):
            for c in (0, 1):
                out += d[a::2, b::2, c::2]
    out *= 0.125
    return out


def half_affine(affine: np.ndarray) -> np.ndarray:
    """Affine of :func:`halve`'s grid: its voxel i is the centre of full voxels 2i and 2i+1."""
    scale = np.diag([2.0, 2.0, 2.0, 1.0])
    scale[:3, 3] = 0.5
    return affine @ scale


def sample_world(data: np.ndarray, world_to_vox: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Trilinear samples of ``data`` at world ``points`` mapped by ``world_to_vox``.

    Returns the values (0 outside) and a boolean array telling which points fell inside the grid.
    """
    ijk = points @ world_to_vox[:3, :3].T + world_to_vox[:3, 3]
    shape = np.asarray(data.shape)
    inside = np.all((ijk >= 0) & (ijk <= shape - 1), axis=1)
    values = ndimage.map_coordinates(data, ijk.T, order=1, mode="nearest", prefilter=False)
    return np.where(inside, values, 0.0), inside
