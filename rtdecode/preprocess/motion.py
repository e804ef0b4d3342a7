"""Rigid-body registration of a volume to a reference: a pure array-in, array-out core.

Inverse-compositional Gauss-Newton on the sum of squared intensity differences (Baker & Matthews,
2004): the Jacobian and Hessian come from the reference alone and are computed once per reference,
so each new volume costs a few trilinear interpolations at a sample of brain voxels. A coarse pass on
smoothed images first widens the capture range to several millimetres and degrees.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from rtdecode.preprocess.rigid import matrix_to_params, params_to_matrix, volume_center


@dataclass
class _Level:
    points: np.ndarray  # (N, 3) world coordinates of the sample points in the reference
    values: np.ndarray  # (N,) reference intensities there
    pinv: np.ndarray  # (6, N) (J^T J)^-1 J^T
    sigma: float  # smoothing (voxels) applied to the moving volume at this level


class RigidReference:
    """A reference volume prepared for repeated rigid registration.

    Args:
        data: reference volume (i, j, k).
        affine: its voxel-to-world matrix.
        mask: voxels to draw samples from; defaults to voxels above 30% of the robust maximum.
        stride: sample every ``stride``-th voxel along each axis at full resolution.
        coarse_sigma: smoothing (voxels) of the coarse pass; 0 disables it.
    """

    def __init__(
        self,
        data: np.ndarray,
        affine: np.ndarray,
        mask: np.ndarray | None = None,
        stride: int = 2,
        coarse_sigma: float = 1.5,
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
        if coarse_sigma > 0:
            smooth = ndimage.gaussian_filter(data, coarse_sigma)
            self.levels.append(self._level(smooth, mask, stride * 2, coarse_sigma))
        self.levels.append(self._level(data, mask, stride, 0.0))

    def _level(self, data: np.ndarray, mask: np.ndarray, stride: int, sigma: float) -> _Level:
        sub = np.zeros_like(mask)
        sub[::stride, ::stride, ::stride] = True
        ijk = np.argwhere(mask & sub).astype(float)
        grads = np.gradient(data)
        g_vox = np.stack([g[mask & sub] for g in grads], axis=1)
        # Chain rule: world gradient = A^-T voxel gradient, with A the 3x3 part of the affine.
        g_world = g_vox @ np.linalg.inv(self.affine[:3, :3])
        points = ijk @ self.affine[:3, :3].T + self.affine[:3, 3]
        jac = np.hstack([g_world, np.cross(points - self.center, g_world)])
        keep = np.any(jac != 0, axis=1)
        jac, points = jac[keep], points[keep]
        values = data[mask & sub][keep]
        hess = jac.T @ jac
        pinv = np.linalg.solve(hess, jac.T)
        return _Level(points=points, values=values.astype(np.float64), pinv=pinv, sigma=sigma)

    def register(
        self,
        data: np.ndarray,
        affine: np.ndarray,
        init: np.ndarray | None = None,
        max_iterations: int = 12,
        tol: float = 1e-4,
    ) -> np.ndarray:
        """Return the 4x4 matrix mapping reference world points to ``data``'s world points."""
        data = np.asarray(data, dtype=np.float32)
        inv_aff = np.linalg.inv(affine)
        mat = np.eye(4) if init is None else np.array(init, dtype=float)
        for level in self.levels:
            moving = ndimage.gaussian_filter(data, level.sigma) if level.sigma > 0 else data
            for _ in range(max_iterations):
                sampled = sample_world(moving, inv_aff @ mat, level.points)
                inside = sampled[1]
                err = np.where(inside, sampled[0] - level.values, 0.0)
                delta = level.pinv @ err
                mat = mat @ np.linalg.inv(params_to_matrix(delta, self.center))
                step = np.abs(delta[:3]).max() + 50 * np.abs(delta[3:]).max()
                if step < tol:
                    break
        return mat

    def params(self, mat: np.ndarray) -> np.ndarray:
        """Six motion parameters (mm, radians) of a matrix returned by :meth:`register`."""
        return matrix_to_params(mat, self.center)

    def matrix(self, params: np.ndarray) -> np.ndarray:
        return params_to_matrix(params, self.center)


def sample_world(data: np.ndarray, world_to_vox: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Trilinear samples of ``data`` at world ``points`` mapped by ``world_to_vox``.

    Returns the values (0 outside) and a boolean array telling which points fell inside the grid.
    """
    ijk = points @ world_to_vox[:3, :3].T + world_to_vox[:3, 3]
    shape = np.asarray(data.shape)
    inside = np.all((ijk >= 0) & (ijk <= shape - 1), axis=1)
    values = ndimage.map_coordinates(data, ijk.T, order=1, mode="nearest", prefilter=False)
    return np.where(inside, values, 0.0), inside
