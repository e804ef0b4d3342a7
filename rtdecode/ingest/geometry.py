"""Voxel-to-world affines of DICOM images, in nibabel's convention (pure functions of header numbers).

Array axis 0 runs down the image rows, axis 1 along them, axis 2 along the slice normal (column
cosine x row cosine, as nibabel); DICOM's LPS patient space becomes NIfTI's RAS.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from rtdecode.base.errors import IngestError

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
SAME_ORIENTATION = 1e-4  # cosines of one series agree to this
EVEN_SPACING = 0.01  # slice gaps may differ from their median by 1 % before the volume is refused


def orientation(iop: Any, path: Path) -> np.ndarray:
    """ImageOrientationPatient as a 3x2 matrix whose columns are the row and column cosines."""
    if iop is None or len(iop) != 6:
        raise IngestError(path, f"ImageOrientationPatient must hold 6 numbers, got {iop!r}")
    return np.array([float(v) for v in iop]).reshape(2, 3).T


def slice_normal(iop: np.ndarray) -> np.ndarray:
    return np.cross(iop[:, 1], iop[:, 0])  # nibabel: column cosine x row cosine


def affine(iop: np.ndarray, spacing: tuple[float, float, float], normal: np.ndarray, ipp: np.ndarray) -> np.ndarray:
    """RAS affine of a slice stack whose first slice's corner voxel is at ``ipp`` (LPS, mm)."""
    rot = np.column_stack([iop[:, 1], iop[:, 0], normal])  # axis 0 moves down the rows
    aff = np.eye(4)
    aff[:3, :3] = rot * np.asarray(spacing)
    aff[:3, 3] = ipp
    return LPS_TO_RAS @ aff


def stack_slices(frames: np.ndarray, iop: np.ndarray, pixel_spacing: tuple[float, float], positions: np.ndarray,
                 path: Path, single_spacing: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Frames (n, rows, cols) at ``positions`` (n x 3, LPS) -> volume (rows, cols, n) in slice order, affine.

    Slices are ordered by their position along the normal, whatever order they came in; their gaps
    must be even (one volume, not two interleaved or a gap). ``single_spacing`` is the slice
    thickness to use when there is only one slice.
    """
    normal = slice_normal(iop)
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    spacing = single_spacing
    if len(order) > 1:
        gaps = np.diff(along[order])
        spacing = float(np.median(gaps))
        if gaps.min() <= 1e-3:
            raise IngestError(path, f"two slices at one position ({along[order][np.argmin(gaps)]:.2f} mm along the "
                                    "normal): more than one volume in one stack?")
        if np.abs(gaps - spacing).max() > EVEN_SPACING * spacing:
            raise IngestError(path, f"uneven slice gaps ({gaps.min():.3f} to {gaps.max():.3f} mm): a slice is "
                                    "missing or the stack mixes volumes")
    data = np.ascontiguousarray(frames[order].transpose(1, 2, 0))
    spacing3 = (float(pixel_spacing[0]), float(pixel_spacing[1]), spacing)
    return data, affine(iop, spacing3, normal, positions[order[0]])
