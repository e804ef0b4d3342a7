"""Per-run preprocessing state: reference, registration to a session reference, mask, QA.

The shell around the pure cores in :mod:`motion` and :mod:`qa`: it owns the run's reference volume
and the previous volume's estimate, and turns each incoming volume into a masked vector.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rtdecode.base.errors import IngestError
from rtdecode.ingest.reader import Volume
from rtdecode.preprocess.motion import RigidReference, sample_world
from rtdecode.preprocess.qa import RunningQA, framewise_displacement


@dataclass
class Mask:
    """A boolean mask on a grid (the session reference's, or the run reference's)."""

    data: np.ndarray
    affine: np.ndarray

    @property
    def n_voxels(self) -> int:
        return int(self.data.sum())

    def world_points(self) -> np.ndarray:
        ijk = np.argwhere(self.data).astype(float)
        return ijk @ self.affine[:3, :3].T + self.affine[:3, 3]


def intensity_mask(data: np.ndarray, threshold: float) -> np.ndarray:
    """Voxels brighter than ``threshold`` times the 98th percentile: a crude brain mask."""
    return data > threshold * np.percentile(data, 98)


def same_volume(a: Volume, b: Volume) -> bool:
    """Whether two volumes are the same image on the same grid (then no registration is needed)."""
    return (a.data.shape == b.data.shape and np.allclose(a.affine, b.affine, atol=1e-4)
            and np.array_equal(np.asarray(a.data, np.float32), np.asarray(b.data, np.float32)))


@dataclass
class Processed:
    """What preprocessing yields for one volume."""

    vector: np.ndarray  # masked, motion-corrected values (float32, n_voxels)
    params: np.ndarray  # motion relative to the run reference: mm, radians
    fd: float
    dvars: float
    tsnr: float
    resampled: np.ndarray | None = None


class RunPreprocessor:
    """Motion-correct and mask the volumes of one run, in order.

    Args:
        reference: the run's reference volume (its first volume by default).
        mask: mask on the session reference grid, or None for an intensity mask of ``reference``.
        session_reference: optional volume (e.g. an earlier session's boldref) the mask lives on; the
            run reference is registered to it once so one mask serves every run.
    """

    def __init__(
        self,
        reference: Volume,
        mask: Mask | None = None,
        session_reference: Volume | None = None,
        mask_threshold: float = 0.3,
        sample_stride: int = 2,
        max_iterations: int = 12,
    ) -> None:
        self.reference = reference
        self.max_iterations = max_iterations
        self._rigid = RigidReference(reference.data, reference.affine, stride=sample_stride)
        # Registration: maps session-reference world points into the run reference's world.
        self.registration = np.eye(4)
        if session_reference is not None and not same_volume(session_reference, reference):
            # (The run that made the session's space is its own reference: nothing to register.)
            session_rigid = RigidReference(session_reference.data, session_reference.affine, stride=sample_stride)
            self.registration = session_rigid.register(reference.data, reference.affine, max_iterations=30)
        if mask is None:
            # The mask lives on the grid that the registration starts from.
            base = session_reference if session_reference is not None else reference
            mask = Mask(intensity_mask(base.data, mask_threshold), base.affine)
        if mask.n_voxels == 0:
            raise IngestError("mask", "the mask selects no voxels")
        self.mask = mask
        self._mask_points = mask.world_points()
        self._previous_matrix: np.ndarray | None = None
        self._previous_params: np.ndarray | None = None
        self.qa = RunningQA(mask.n_voxels)

    def resume(self, params: np.ndarray, vectors: np.ndarray) -> None:
        """Restore state after a restart from the parameters and vectors already stored."""
        for vec in vectors:
            self.qa.update(vec)
        if len(params):
            self._previous_params = np.asarray(params[-1], dtype=float)
            self._previous_matrix = self._rigid.matrix(self._previous_params)

    def check(self, volume: Volume) -> None:
        """Raise IngestError if a volume cannot belong to this run (shape or grid changed)."""
        if volume.data.shape != self.reference.data.shape:
            raise IngestError(volume.source, f"matrix {volume.data.shape} differs from the run's {self.reference.data.shape}")
        if not np.allclose(volume.affine[:3, :3], self.reference.affine[:3, :3], atol=1e-3):
            raise IngestError(volume.source, "voxel size or orientation differs from the run's reference")

    def process(self, volume: Volume, save_resampled: bool = False) -> Processed:
        self.check(volume)
        mat = self._rigid.register(volume.data, volume.affine, init=self._previous_matrix, max_iterations=self.max_iterations)
        params = self._rigid.params(mat)
        to_vox = np.linalg.inv(volume.affine) @ mat @ self.registration
        values, _ = sample_world(volume.data, to_vox, self._mask_points)
        vector = values.astype(np.float32)
        fd = framewise_displacement(params, self._previous_params)
        dvars, tsnr = self.qa.update(vector)
        self._previous_matrix, self._previous_params = mat, params
        resampled = None
        if save_resampled:
            resampled = self._resample_full(volume, mat)
        return Processed(vector=vector, params=params, fd=fd, dvars=dvars, tsnr=tsnr, resampled=resampled)

    def _resample_full(self, volume: Volume, mat: np.ndarray) -> np.ndarray:
        grid = self.mask.data.shape
        ijk = np.indices(grid).reshape(3, -1).T.astype(float)
        points = ijk @ self.mask.affine[:3, :3].T + self.mask.affine[:3, 3]
        to_vox = np.linalg.inv(volume.affine) @ mat @ self.registration
        values, _ = sample_world(volume.data, to_vox, points)
        return values.reshape(grid).astype(np.float32)
