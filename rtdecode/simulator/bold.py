"""Volume-level simulated runs: a brain on an EPI grid with task responses, drift, noise and motion.

Per volume t (head frame first, then the scanner frame):
  head(t)    = baseline * (1 + drift(t)) + baseline * sum_j beta_j * x_j(t) / 100 + ar1(t) + physio(t)
  scanner(t) = head(t) resampled through the head's rigid motion at t + thermal noise
where x_j is trial j's 3 s boxcar convolved with the Glover HRF (the simulator's own exact
response, :mod:`rtdecode.simulator.hrf`, not the GLM's code) and the betas are the subject's true
responses (% signal change) in its visual region. Noise levels are set
per voxel so that an ordinary LSS GLM on the whole run (the design Real-time MindEye uses) recovers
each voxel's betas with the voxel's configured reliability: the estimator's noise and its leakage
from neighbouring trials are computed exactly from the design and the noise covariance.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rtdecode.events import Events, write_events
from rtdecode.simulator.head import moved_volume
from rtdecode.simulator.hrf import boxcar_responses, slow_cosines
from rtdecode.simulator.phantom import brain_volume
from rtdecode.simulator.subjects import SimulatedSubject

AR_RHO = 0.35  # lag-1 autocorrelation of the head-frame noise at TR 1.5 s
PHYSIO_SHARE = 0.3  # share of head-frame noise variance that is respiratory/cardiac
THERMAL_SHARE = 0.5  # share of the median ROI voxel's noise variance that is thermal (white)


@dataclass
class NoiseModel:
    """Noise covariance pieces over one run's frames, each with unit variance."""

    times: np.ndarray
    resp_hz: float
    card_hz: float

    def white(self) -> np.ndarray:
        return np.eye(len(self.times))

    def ar1(self) -> np.ndarray:
        lag = np.abs(np.subtract.outer(np.arange(len(self.times)), np.arange(len(self.times))))
        return AR_RHO ** lag

    def physio(self) -> np.ndarray:
        dt = np.subtract.outer(self.times, self.times)
        return 0.5 * np.cos(2 * np.pi * self.resp_hz * dt) + 0.5 * np.cos(2 * np.pi * self.card_hz * dt)

    def head(self) -> np.ndarray:
        return (1 - PHYSIO_SHARE) * self.ar1() + PHYSIO_SHARE * self.physio()


@dataclass
class EstimatorStats:
    """Properties of the whole-run LSS estimator of each trial's beta (averaged over trials)."""

    leakage: float  # variance added by other trials' responses, in units of the response variance
    c_white: float  # estimator variance per unit white-noise variance
    c_head: float  # estimator variance per unit head-frame noise variance


def estimator_stats(regressors: np.ndarray, confounds: np.ndarray | None, noise: NoiseModel, tr_s: float,
                    high_pass_hz: float = 0.01) -> EstimatorStats:
    """Exact variance terms of the LSS beta estimates for this design and noise covariance.

    LSS (Real-time MindEye's design) fits, per trial, the trial's own regressor beside one regressor
    for every other trial, the confounds, the slow cosines and a constant; row 0 of the design's
    pseudo-inverse is the linear map from the data to that trial's estimate.
    """
    n, k = regressors.shape
    nuisance = [np.ones((n, 1)), slow_cosines(n, tr_s, high_pass_hz)]
    if confounds is not None and confounds.size:
        nuisance.append(np.asarray(confounds, float).reshape(n, -1))
    nuisance = np.hstack(nuisance)
    others = regressors.sum(axis=1)
    sw, sh = noise.white(), noise.head()
    leak, cw, ch = [], [], []
    for j in range(k):
        design = np.column_stack([regressors[:, j], others - regressors[:, j], nuisance])
        a = np.linalg.pinv(design)[0]
        gains = a @ regressors
        gains[j] -= 1.0
        leak.append(float(gains @ gains))
        cw.append(float(a @ sw @ a))
        ch.append(float(a @ sh @ a))
    return EstimatorStats(float(np.mean(leak)), float(np.mean(cw)), float(np.mean(ch)))


@dataclass
class BoldRun:
    """A simulated task run of ``subject`` seeing ``events``; iterate :meth:`iter_volumes` in order."""

    subject: SimulatedSubject
    events: Events
    latents: np.ndarray  # (n_trials, latent_dim): the shared latent of each trial's image
    n_volumes: int = 192
    shape: tuple[int, int, int] = (100, 100, 52)
    voxel_mm: float = 2.0
    tr_s: float = 1.5
    motion: np.ndarray | None = None  # (n_volumes, 6) mm and radians; None: a still head
    seed: int = 0
    drift_pct: float = 0.5
    stats: EstimatorStats = field(init=False)

    def __post_init__(self) -> None:
        rng = np.random.default_rng([self.seed, 11])
        self.motion = np.zeros((self.n_volumes, 6)) if self.motion is None else np.asarray(self.motion, float)
        if self.motion.shape != (self.n_volumes, 6):
            raise ValueError(f"motion must have shape ({self.n_volumes}, 6), got {self.motion.shape}")
        self.baseline, self.affine = brain_volume(self.shape, self.voxel_mm)
        ijk = np.indices(self.shape).reshape(3, -1).T
        xyz = ijk @ self.affine[:3, :3].T + self.affine[:3, 3]
        brain = self.baseline.ravel() > 0.1 * self.baseline.max()
        self.brain_index = np.flatnonzero(brain)
        roi = brain & self.subject.in_roi(xyz)
        self.roi_index = np.flatnonzero(roi)
        if not len(self.roi_index):
            raise ValueError(f"subject {self.subject.name} has no visual voxels on a {self.shape} grid of {self.voxel_mm} mm")
        self.roi_xyz = xyz[self.roi_index]
        self.times = np.arange(self.n_volumes) * self.tr_s  # each volume at its start (no slice timing)
        self.regressors = boxcar_responses(self.events.onset, self.events.duration, self.times)
        self.betas = self.subject.responses(self.latents, self.roi_xyz).T  # (n_roi, n_trials), %
        params = self.subject.voxel_params(self.roi_xyz)
        self.reliability = params["reliability"]
        noise = NoiseModel(self.times, rng.uniform(0.25, 0.32), rng.uniform(0.9, 1.3))
        confounds = np.c_[self.motion[:, :3], np.rad2deg(self.motion[:, 3:])]
        self.stats = estimator_stats(self.regressors, confounds, noise, self.tr_s)
        self._set_noise(params["signal"], rng)
        self._noise = noise
        self._rng = np.random.default_rng([self.seed, 12])
        n_brain = len(self.brain_index)
        self._phase = rng.uniform(0, 2 * np.pi, (2, n_brain))
        slow = slow_cosines(self.n_volumes, self.tr_s, 0.01)[:, :2] * np.sqrt(2.0 / self.n_volumes)  # unit norm; high-passed away
        self._drift = self.drift_pct / 100 * np.sqrt(self.n_volumes / 2) * (slow @ rng.normal(0, 1, slow.shape[1]))

    def _set_noise(self, signal_pct: np.ndarray, rng: np.random.Generator) -> None:
        """Per-voxel noise sd (absolute units) so that the LSS estimate has the voxel's reliability."""
        base = self.baseline.ravel()
        s_abs = signal_pct * base[self.roi_index] / 100
        # Other trials' responses leak into an LSS estimate, which caps the reachable reliability.
        ceiling = 0.95 / np.sqrt(1 + self.stats.leakage)
        if self.subject.spec.reliability > ceiling:
            warnings.warn(f"reliability {self.subject.spec.reliability:g} is above what this design allows "
                          f"({ceiling:.2f}, leakage {self.stats.leakage:.2f}); voxels are capped there", stacklevel=3)
        self.reliability = np.minimum(self.reliability, ceiling)
        budget = s_abs ** 2 * (1 / self.reliability ** 2 - 1 - self.stats.leakage)  # estimator noise variance
        total_if_white = budget / self.stats.c_white
        self.thermal_sd = float(np.sqrt(THERMAL_SHARE * np.median(total_if_white)))
        head_var = np.maximum(budget - self.thermal_sd ** 2 * self.stats.c_white, 0) / self.stats.c_head
        head_pct = np.sqrt(head_var) / base[self.roi_index] * 100
        self.head_sd = np.full(len(self.brain_index), float(np.median(head_pct)))  # % of baseline, all brain voxels
        where = np.searchsorted(self.brain_index, self.roi_index)
        self.head_sd[where] = head_pct
        self.head_sd *= base[self.brain_index] / 100  # to absolute units

    def iter_volumes(self) -> Iterator[np.ndarray]:
        """Volumes in acquisition order (float32, scanner frame); state advances, so iterate once."""
        base = self.baseline.ravel()
        ar = self._rng.normal(0, 1, len(self.brain_index))  # stationary start
        innov = np.sqrt(1 - AR_RHO ** 2)
        for t in range(self.n_volumes):
            head = base * (1 + self._drift[t])
            head[self.roi_index] += base[self.roi_index] * (self.betas @ self.regressors[t]) / 100
            if t:
                ar = AR_RHO * ar + innov * self._rng.normal(0, 1, len(ar))
            # Two unit-amplitude sinusoids with random phases: unit variance in all.
            phys = (np.cos(2 * np.pi * self._noise.resp_hz * self.times[t] + self._phase[0])
                    + np.cos(2 * np.pi * self._noise.card_hz * self.times[t] + self._phase[1]))
            head[self.brain_index] += self.head_sd * (np.sqrt(1 - PHYSIO_SHARE) * ar + np.sqrt(PHYSIO_SHARE) * phys)
            vol = head.reshape(self.shape)
            if np.any(self.motion[t]):
                vol = moved_volume(vol, self.affine, self.motion[t])
            vol = vol + self._rng.normal(0, self.thermal_sd, self.shape) + 20.0
            yield np.clip(vol, 0, 4095).astype(np.float32)

    def save_truth(self, folder: str | Path, prefix: str) -> dict[str, Path]:
        """Ground truth beside the data: events, motion, true betas, voxel indices, latents, settings."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        paths = {
            "events": write_events(folder / f"{prefix}_events.tsv", self.events),
            "motion": folder / f"{prefix}_motion_truth.tsv",
            "betas": folder / f"{prefix}_truth_betas.npy",
            "roi": folder / f"{prefix}_truth_roi.npy",
            "latents": folder / f"{prefix}_truth_latents.npy",
            "reliability": folder / f"{prefix}_truth_reliability.npy",
            "info": folder / f"{prefix}_truth.json",
        }
        save_motion(self.motion, paths["motion"])
        np.save(paths["betas"], self.betas.astype(np.float32))
        np.save(paths["roi"], self.roi_index.astype(np.int64))
        np.save(paths["latents"], np.asarray(self.latents, np.float32))
        np.save(paths["reliability"], self.reliability.astype(np.float32))
        info = {
            "subject": self.subject.spec.to_dict(), "seed": self.seed, "tr_s": self.tr_s, "volumes": self.n_volumes,
            "shape": list(self.shape), "voxel_mm": self.voxel_mm, "affine": self.affine.tolist(),
            "betas_units": "percent signal change of the voxel's baseline",
            "roi_index": "flat C-order indices into the volume (head frame, before motion)",
            "median_reliability": float(np.median(self.reliability)), "thermal_sd": self.thermal_sd,
            "estimator": {"leakage": self.stats.leakage, "c_white": self.stats.c_white, "c_head": self.stats.c_head},
            "noise": {"ar_rho": AR_RHO, "physio_share": PHYSIO_SHARE, "thermal_share": THERMAL_SHARE,
                      "resp_hz": self._noise.resp_hz, "card_hz": self._noise.card_hz},
        }
        paths["info"].write_text(json.dumps(info, indent=2))
        return paths


def save_motion(motion: np.ndarray, path: Path) -> None:
    """Motion truth as the session folder writes estimates: mm and degrees, one row per volume."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = "trans_x\ttrans_y\ttrans_z\trot_x\trot_y\trot_z"
    table = np.c_[motion[:, :3], np.rad2deg(motion[:, 3:])]
    np.savetxt(path, table, delimiter="\t", header=header, comments="", fmt="%.6f")
