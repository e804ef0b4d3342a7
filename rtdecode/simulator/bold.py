"""Volume-level simulated runs: a brain on an EPI grid with task responses, drift, noise and motion.

Per volume t (head frame first, then the scanner frame):
  head(t)    = baseline * (1 + drift(t)) + baseline * sum_j beta_j * x_j(t) / 100
               + ar1(t) + physio(t) + structured(t)
  scanner(t) = head(t) resampled through the head's rigid motion at t + thermal noise
where x_j is trial j's 3 s boxcar convolved with the voxel's HRF (Glover everywhere for
``physiology = "canonical"``; the simulator's own exact response, :mod:`rtdecode.simulator.hrf`, not
the GLM's code), the betas are the subject's true responses (% signal change) in its visual region,
and ``structured`` is a few slow components shared by every brain voxel through smooth loadings
(none for "canonical"). Noise levels are set
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

from rtdecode.base.events import Events, write_events
from rtdecode.simulator.head import moved_volume
from rtdecode.simulator.hrf import boxcar_responses, slow_cosines, voxel_signal
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
    physio_share: float = 0.3
    structured_share: float = 0.0
    structured_rho: float = 0.9

    def white(self) -> np.ndarray:
        return np.eye(len(self.times))

    def ar1(self) -> np.ndarray:
        lag = np.abs(np.subtract.outer(np.arange(len(self.times)), np.arange(len(self.times))))
        return AR_RHO ** lag

    def physio(self) -> np.ndarray:
        dt = np.subtract.outer(self.times, self.times)
        return 0.5 * np.cos(2 * np.pi * self.resp_hz * dt) + 0.5 * np.cos(2 * np.pi * self.card_hz * dt)

    def structured(self) -> np.ndarray:
        lag = np.abs(np.subtract.outer(np.arange(len(self.times)), np.arange(len(self.times))))
        return self.structured_rho ** lag

    def head(self) -> np.ndarray:
        ar = 1 - self.physio_share - self.structured_share
        out = ar * self.ar1() + self.physio_share * self.physio()
        return out + self.structured_share * self.structured() if self.structured_share else out

    def components(self, k: int, rng: np.random.Generator) -> np.ndarray:
        """(frames, k) unit-variance AR(1) time courses of the shared slow components."""
        out = np.zeros((len(self.times), k))
        rho = self.structured_rho
        out[0] = rng.normal(0, 1, k)
        for t in range(1, len(self.times)):
            out[t] = rho * out[t - 1] + np.sqrt(1 - rho ** 2) * rng.normal(0, 1, k)
        return out


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
        self.hrf = self.subject.hrf(self.roi_xyz)
        # (frames, n_roi) task signal in %; None: the canonical HRF's shared regressors serve every voxel.
        self._signal = None if self.hrf.canonical else voxel_signal(
            self.hrf, self.betas, self.events.onset, self.events.duration, self.times)
        params = self.subject.voxel_params(self.roi_xyz)
        self.reliability = params["reliability"]
        phys = self.subject.physiology
        noise = NoiseModel(self.times, rng.uniform(0.25, 0.32), rng.uniform(0.9, 1.3), PHYSIO_SHARE,
                           phys.structured_share, phys.structured_rho)
        confounds = np.c_[self.motion[:, :3], np.rad2deg(self.motion[:, 3:])]
        self.stats = estimator_stats(self.regressors, confounds, noise, self.tr_s)
        self._set_noise(params["signal"], rng)
        self._noise = noise
        self._rng = np.random.default_rng([self.seed, 12])
        n_brain = len(self.brain_index)
        self._phase = rng.uniform(0, 2 * np.pi, (2, n_brain))
        if phys.structured_components:
            self._components = noise.components(phys.structured_components, np.random.default_rng([self.seed, 13]))
            self._loadings = self.subject.noise_loadings(xyz[self.brain_index])
        else:
            self._components = self._loadings = None
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
        for t, noise in enumerate(self._head_noise(np.arange(len(self.brain_index)), self._rng)):
            head = base * (1 + self._drift[t])
            head[self.roi_index] += base[self.roi_index] * self.task_signal(t) / 100
            head[self.brain_index] += noise
            vol = head.reshape(self.shape)
            if np.any(self.motion[t]):
                vol = moved_volume(vol, self.affine, self.motion[t])
            vol = vol + self._rng.normal(0, self.thermal_sd, self.shape) + 20.0
            yield np.clip(vol, 0, 4095).astype(np.float32)

    def task_signal(self, t: int) -> np.ndarray:
        """Frame ``t``'s task response (% of baseline) in every visual voxel."""
        return self.betas @ self.regressors[t] if self._signal is None else self._signal[t]

    def _head_noise(self, which: np.ndarray, rng: np.random.Generator) -> Iterator[np.ndarray]:
        """Head-frame noise (absolute units) per frame for brain voxels ``which`` (indices into brain_index)."""
        sd = self.head_sd[which]
        n = self._noise
        ar_share = 1 - n.physio_share - n.structured_share
        ar = rng.normal(0, 1, len(which))  # stationary start
        innov = np.sqrt(1 - AR_RHO ** 2)
        for t in range(self.n_volumes):
            if t:
                ar = AR_RHO * ar + innov * rng.normal(0, 1, len(ar))
            # Two unit-amplitude sinusoids with random phases: unit variance in all.
            phys = (np.cos(2 * np.pi * n.resp_hz * self.times[t] + self._phase[0, which])
                    + np.cos(2 * np.pi * n.card_hz * self.times[t] + self._phase[1, which]))
            mix = np.sqrt(ar_share) * ar + np.sqrt(n.physio_share) * phys
            if self._components is not None:
                mix = mix + np.sqrt(n.structured_share) * (self._loadings[which] @ self._components[t])
            yield sd * mix

    def masked_series(self, which: np.ndarray, seed: int = 0) -> np.ndarray:
        """(frames, len(which)) head-frame series of brain voxels ``which`` (indices into ``brain_index``),
        with drift, task response, head noise and thermal noise but no motion: what a GLM benchmark needs
        without writing or reading volumes."""
        which = np.asarray(which, int)
        rng = np.random.default_rng([self.seed, 14, seed])
        base = self.baseline.ravel()[self.brain_index[which]]
        roi_pos = {int(b): i for i, b in enumerate(np.searchsorted(self.brain_index, self.roi_index))}
        task = np.array([roi_pos.get(int(w), -1) for w in which])
        hit = task >= 0
        out = np.empty((self.n_volumes, len(which)), np.float32)
        for t, noise in enumerate(self._head_noise(which, rng)):
            frame = base * (1 + self._drift[t]) + noise + rng.normal(0, self.thermal_sd, len(which)) + 20.0
            frame[hit] += base[hit] * self.task_signal(t)[task[hit]] / 100
            out[t] = frame
        return out

    def structured_noise(self, which: np.ndarray) -> np.ndarray:
        """(frames, len(which)) the shared slow noise in brain voxels ``which`` (absolute units, zeros under
        "canonical"): exactly what :meth:`masked_series` adds, for an oracle that removes it."""
        which = np.asarray(which, int)
        if self._components is None:
            return np.zeros((self.n_volumes, len(which)))
        mix = self._components @ self._loadings[which].T
        return mix * np.sqrt(self._noise.structured_share) * self.head_sd[which][None, :]

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
        if not self.hrf.canonical:  # each visual voxel's double-gamma parameters, in roi order
            paths["hrf"] = folder / f"{prefix}_truth_hrf.npz"
            n = len(self.roi_index)
            np.savez(paths["hrf"], **{k: np.broadcast_to(np.asarray(getattr(self.hrf, k), np.float32), (n,))
                                      for k in ("peak_s", "undershoot_s", "dispersion", "ratio")})
        info = {
            "subject": self.subject.spec.to_dict(), "seed": self.seed, "tr_s": self.tr_s, "volumes": self.n_volumes,
            "shape": list(self.shape), "voxel_mm": self.voxel_mm, "affine": self.affine.tolist(),
            "betas_units": "percent signal change of the voxel's baseline",
            "roi_index": "flat C-order indices into the volume (head frame, before motion)",
            "median_reliability": float(np.median(self.reliability)), "thermal_sd": self.thermal_sd,
            "estimator": {"leakage": self.stats.leakage, "c_white": self.stats.c_white, "c_head": self.stats.c_head},
            "physiology": self.subject.spec.physiology,
            "noise": {"ar_rho": AR_RHO, "physio_share": PHYSIO_SHARE, "thermal_share": THERMAL_SHARE,
                      "structured_share": self._noise.structured_share, "structured_rho": self._noise.structured_rho,
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
