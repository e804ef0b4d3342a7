"""A run's GLM with one HRF per voxel and noise components: one incremental GLM per library member.

Voxels that chose the same library member share a design, so the run is split into groups, each an
:class:`IncrementalGLM` over its voxels with that member's kernel; every group draws the same noise
components from one :class:`NoisePool` (``denoise_mode = "regress"``), or is fed volumes with the
calibration hour's noise subtracted (``"subtract"``, :class:`NoiseSubtraction`). Per-trial cost: the same passes over the data as one GLM
(each voxel is in one group), plus a small fixed cost per group (its design's normal equations).
"""

from __future__ import annotations

import time

import numpy as np

from rtdecode.base.events import Events
from rtdecode.glm.denoise import NoisePool
from rtdecode.glm.hrf_library import library_kernel
from rtdecode.glm.incremental import GLMSettings, IncrementalGLM, TrialEstimate
from rtdecode.glm.tuning import GLMTuning


class VoxelwiseGLM:
    """The :class:`IncrementalGLM` interface over groups of voxels (see module docstring)."""

    def __init__(self, events: Events, n_voxels: int, settings: GLMSettings, tuning: GLMTuning,
                 expected_volumes: int = 192) -> None:
        if tuning.n_voxels != n_voxels:
            raise ValueError(f"GLM tuning {tuning.source}: made for {tuning.n_voxels} voxels, the mask has {n_voxels}")
        self.settings, self.events, self.n_voxels = settings, events, n_voxels
        members = tuning.hrf_index if settings.hrf == "library" else np.full(n_voxels, -1)
        self.pool, self.subtract = None, None
        if settings.denoise > 0 and len(tuning.pool) < settings.denoise + 1:
            raise ValueError(f"GLM tuning {tuning.source}: {settings.denoise} noise component(s) asked for, but its "
                             f"noise pool has {len(tuning.pool)} voxels ({'; '.join(tuning.notes) or 'none found'})")
        if settings.denoise > 0 and settings.denoise_mode == "subtract":
            sub = tuning.subtraction
            if sub is None or sub.max_components < settings.denoise:
                have = "none" if sub is None else f"{sub.max_components}"
                raise ValueError(f"GLM tuning {tuning.source}: {settings.denoise} noise component(s) to subtract asked "
                                 f"for, it holds {have} (a tuning made before issue 32: run rtdecode glm-tune again, "
                                 "or set glm.denoise_mode = \"regress\")")
            self.subtract = sub
        elif settings.denoise > 0:
            self.pool = NoisePool(tuning.pool, settings.denoise, settings.t_r, settings.high_pass,
                                  settings.denoise_min_frames, expected_volumes)
        extra = self.pool.components if self.pool is not None else None
        self.groups: list[tuple[np.ndarray, IncrementalGLM]] = []
        for m in np.unique(members):
            idx = np.flatnonzero(members == m)
            kernel = None if m < 0 else library_kernel(int(m), settings.t_r, tuning.library)
            self.groups.append((idx, IncrementalGLM(events, len(idx), settings, expected_volumes, kernel, extra)))
        self.done: set[int] = set()
        self.versions: set[tuple[int, str]] = set()

    @property
    def n_frames(self) -> int:
        return self.groups[0][1].n_frames

    def add(self, index: int, vector: np.ndarray, motion: np.ndarray | None = None) -> None:
        vector = np.asarray(vector, np.float32).ravel()
        if vector.size != self.n_voxels:
            raise ValueError(f"volume {index}: expected {self.n_voxels} voxels, got {vector.size}")
        if self.subtract is not None:
            vector = self.subtract.clean(vector, self.settings.denoise)
        if self.pool is not None:
            self.pool.add(index, vector)
        for idx, glm in self.groups:
            glm.add(index, vector[idx], motion)

    def add_missing(self, index: int) -> None:
        if self.pool is not None:
            self.pool.add_missing(index)
        for _, glm in self.groups:
            glm.add_missing(index)

    def ready_frame(self, trial: int) -> int:
        return self.groups[0][1].ready_frame(trial)

    def frames_at(self, trial: int, delay_s: float) -> int:
        return self.groups[0][1].frames_at(trial, delay_s)

    def ready(self) -> list[int]:
        glm = self._lead()
        return glm.ready()

    def due(self) -> list[tuple[int, int, str]]:
        return self._lead().due()

    def mark(self, trial: int, version: str) -> None:
        if version == "realtime":
            self.done.add(trial)
        elif version != "endofrun":
            self.versions.add((trial, version))

    def _lead(self) -> IncrementalGLM:
        """The first group, with this wrapper's record of what went out (readiness is the same in all)."""
        glm = self.groups[0][1]
        glm.done, glm.versions = self.done, self.versions
        return glm

    def estimate(self, trial: int, n_frames: int | None = None, version: str = "realtime") -> TrialEstimate:
        t0 = time.perf_counter()
        beta = np.zeros(self.n_voxels, np.float32)
        rho, designs, first = [], [], None
        for idx, glm in self.groups:
            est = glm.estimate(trial, n_frames, version="endofrun")  # the groups keep no record
            beta[idx] = est.beta
            rho.append(np.full(len(idx), est.rho_median))
            designs.append(est.design)
            first = first or est
        self.mark(trial, version)
        # The design saved is the largest group's: the others differ only in the trial regressors' HRF.
        largest = int(np.argmax([len(idx) for idx, _ in self.groups]))
        return TrialEstimate(first.trial, first.image, first.onset, beta, first.n_frames, first.n_used, version,
                             first.noise_model, float(np.median(np.concatenate(rho))),
                             (time.perf_counter() - t0) * 1e3, designs[largest])

    def end_of_run(self) -> list[TrialEstimate]:
        return [self.estimate(j, version="endofrun") for j in range(len(self.events))
                if self.events.onset[j] <= (self.n_frames - 1) * self.settings.t_r]


def make_glm(events: Events, n_voxels: int, settings: GLMSettings, expected_volumes: int = 192,
             tuning: GLMTuning | None = None) -> IncrementalGLM | VoxelwiseGLM:
    """Real-time MindEye's GLM when the settings are plain, else the voxelwise one (needs ``tuning``)."""
    if settings.plain:
        return IncrementalGLM(events, n_voxels, settings, expected_volumes)
    if tuning is None:
        raise ValueError(f"glm.hrf = {settings.hrf!r} and glm.denoise = {settings.denoise} need a GLM tuning "
                         "(glm_tuning.npz from the calibration hour: rtdecode glm-tune)")
    return VoxelwiseGLM(events, n_voxels, settings, tuning, expected_volumes)
