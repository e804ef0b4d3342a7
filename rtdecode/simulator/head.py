"""The simulated head's rigid pose and the volumes it moves, with the simulator's own code.

Six parameters ``(tx, ty, tz, rx, ry, rz)`` (mm, radians), as the session folder reports motion:
rotations about the world x, y and z axes through the grid's centre, x first, then y, then z (scipy's
extrinsic "xyz" Euler angles), then the translation. Written apart from the motion estimator
(``rtdecode.preprocess.rigid``), so a convention error on either side shows up as a test failure
instead of cancelling out.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation


def grid_centre(shape: tuple[int, ...], affine: np.ndarray) -> np.ndarray:
    """World coordinates (mm) of the middle of a voxel grid."""
    middle = np.append((np.asarray(shape[:3], float) - 1.0) / 2.0, 1.0)
    return (affine @ middle)[:3]


def pose(params: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """4x4 world map of the head's pose: a point of the still head to where it is now."""
    params = np.asarray(params, float)
    out = np.eye(4)
    out[:3, :3] = Rotation.from_euler("xyz", params[3:6]).as_matrix()
    out[:3, 3] = params[:3] + centre - out[:3, :3] @ centre
    return out


def moved_volume(volume: np.ndarray, affine: np.ndarray, params: np.ndarray) -> np.ndarray:
    """``volume`` (on the grid ``affine``) as it looks with the head at pose ``params`` (trilinear)."""
    # Each output voxel shows the still head at the pose's inverse image of that voxel's position.
    voxel_map = np.linalg.inv(affine) @ np.linalg.inv(pose(params, grid_centre(volume.shape, affine))) @ affine
    return ndimage.affine_transform(volume, voxel_map[:3, :3], voxel_map[:3, 3], order=1, mode="constant", cval=0.0)
