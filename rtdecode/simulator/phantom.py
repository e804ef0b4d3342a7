"""A brain-shaped EPI phantom from the MNI152 template that nilearn ships (no download)."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy import ndimage

from rtdecode.base.cache import cached_arrays
from rtdecode.simulator.head import grid_centre, pose


@lru_cache(maxsize=1)
def mni_template() -> tuple[np.ndarray, np.ndarray]:
    """nilearn's bundled MNI152 2 mm template (values 0..1) and its affine."""

    def build() -> tuple[np.ndarray, np.ndarray]:
        from nilearn.datasets import load_mni152_template

        img = load_mni152_template(resolution=2)
        return np.asarray(img.get_fdata(), np.float32), np.asarray(img.affine, float)

    data, affine = cached_arrays("mni152-2mm", "nilearn load_mni152_template(resolution=2)|v1", build)
    return data, affine


def epi_grid(shape: tuple[int, int, int], voxel_mm: float) -> np.ndarray:
    """An axial RAS grid of ``shape`` voxels of ``voxel_mm`` centred on the MNI brain."""
    affine = np.diag([voxel_mm, voxel_mm, voxel_mm, 1.0])
    centre_mni = np.array([0.0, -18.0, 10.0])
    affine[:3, 3] = centre_mni - voxel_mm * (np.asarray(shape) - 1) / 2
    return affine


def brain_volume(shape: tuple[int, int, int] = (100, 100, 52), voxel_mm: float = 2.0, params: np.ndarray | None = None,
                 scale: float = 1000.0) -> tuple[np.ndarray, np.ndarray]:
    """An EPI-like brain (grey ~1000, background near 0) on an axial grid, optionally moved rigidly.

    ``params`` (mm, radians, about the grid centre) is the head's motion: the returned volume shows
    the head displaced by that transform, so registration to the unmoved volume should recover it.
    """
    template, t_aff = mni_template()
    affine = epi_grid(shape, voxel_mm)
    ijk = np.indices(shape, dtype=np.float64).reshape(3, -1)
    world = affine[:3, :3] @ ijk + affine[:3, 3:4]
    if params is not None:
        moved = np.linalg.inv(pose(params, grid_centre(shape, affine)))
        world = moved[:3, :3] @ world + moved[:3, 3:4]
    tvox = np.linalg.inv(t_aff)[:3, :3] @ world + np.linalg.inv(t_aff)[:3, 3:4]
    data = ndimage.map_coordinates(template, tvox, order=1, mode="constant", cval=0.0).reshape(shape)
    return (data * scale).astype(np.float32), affine
