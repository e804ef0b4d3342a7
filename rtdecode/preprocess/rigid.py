"""Rigid-body transforms as 4x4 world-space matrices and their six parameters.

Parameters are ``(tx, ty, tz, rx, ry, rz)``: translations in mm and rotations in radians about the
world x, y and z axes through a centre point (the reference volume's centre), applied x first, then
y, then z. The matrix maps a point of the reference to the matching point of the moving volume.
"""

from __future__ import annotations

import numpy as np


def rotation_matrix(rx: float, ry: float, rz: float) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = np.cos(rx), np.sin(rx), np.cos(ry), np.sin(ry), np.cos(rz), np.sin(rz)
    rot_x = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    rot_y = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rot_z = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rot_z @ rot_y @ rot_x


def params_to_matrix(params: np.ndarray, center: np.ndarray) -> np.ndarray:
    """4x4 matrix of ``x -> R (x - c) + c + t``."""
    params = np.asarray(params, dtype=float)
    mat = np.eye(4)
    rot = rotation_matrix(*params[3:6])
    mat[:3, :3] = rot
    mat[:3, 3] = center - rot @ center + params[:3]
    return mat


def matrix_to_params(mat: np.ndarray, center: np.ndarray) -> np.ndarray:
    """Inverse of :func:`params_to_matrix` (rotations within +-90 degrees about y)."""
    rot = mat[:3, :3]
    ry = np.arcsin(np.clip(-rot[2, 0], -1.0, 1.0))
    rx = np.arctan2(rot[2, 1], rot[2, 2])
    rz = np.arctan2(rot[1, 0], rot[0, 0])
    t = mat[:3, 3] - (center - rot @ center)
    return np.array([t[0], t[1], t[2], rx, ry, rz])


def volume_center(shape: tuple[int, ...], affine: np.ndarray) -> np.ndarray:
    """World coordinates of the centre of a volume's voxel grid."""
    ijk = (np.asarray(shape[:3], dtype=float) - 1) / 2
    return affine[:3, :3] @ ijk + affine[:3, 3]
