"""One run's single-trial GLM, fed volume by volume: each trial estimated as soon as its response is in.

The settings mirror the nilearn FirstLevelModel that Real-time MindEye builds for every trial
(t_r, slice_time_ref=0, hrf_model='glover', drift_model='cosine', high_pass=0.01,
signal_scaling=False, noise_model, motion confounds; LSS with 'probe' and 'reference'; events
cropped to onsets at or before the newest volume). Instead of refitting a model, the design is built
from regressors computed once per run and the estimate is one or two matrix products over the data.

Time never shifts: frame t is always at t * TR. A missing volume removes its row from the data and
the design; the drift basis and the regressors still span every frame up to the newest.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from rtdecode.base.events import Events
from rtdecode.glm.design import cosine_drift, frame_times, lss_design, trial_regressors
from rtdecode.glm.estimate import Workspace, ar1_beta, ols_beta
from rtdecode.glm.sufficient import RunningProducts, probe_betas


@dataclass(frozen=True)
class GLMSettings:
    """What defines the estimate. Names follow nilearn's FirstLevelModel."""

    t_r: float = 1.5
    hrf_model: str = "glover"
    drift_model: str = "cosine"
    high_pass: float = 0.01
    noise_model: str = "ar1"  # 'ar1' or 'ols'
    delay_s: float = 7.5  # estimate a trial once the volume at onset + delay_s has arrived
    motion_confounds: bool = True
    # Motion columns only once this many volumes are in the fit: six confounds regressed out of a
    # dozen frames take more of the response than the motion (early trials' betas; docs/glm.md).
    motion_min_frames: int = 60
    bins: int = 100  # AR coefficient levels, as nilearn's run_glm
    # Beyond Real-time MindEye (docs/glm.md): one HRF per voxel from a calibration-chosen library,
    # noise components from the pool voxels of the current run, and refined estimates.
    hrf: str = "glover"  # "glover" or "library" (each voxel's member, from the GLM tuning)
    denoise: int = 0  # noise components used as confounds (0: none)
    denoise_min_frames: int = 30  # components only once this many volumes are in the fit (regress)
    # "subtract": the calibration hour's components removed from every volume (issue 32); "regress": the
    # current run's components re-fitted as confounds in every fit (issue 20).
    denoise_mode: str = "subtract"
    refine: bool = False  # re-estimate each trial at every volume from first_delay_s to final_delay_s
    first_delay_s: float = 4.5
    final_delay_s: float = 15.0

    @property
    def plain(self) -> bool:
        """Real-time MindEye's estimator: one HRF, no noise components."""
        return self.hrf == "glover" and self.denoise == 0


def _median(rho: np.ndarray, bins: int) -> float:
    """The median AR coefficient; rho is binned to 1/bins, so counting beats sorting 15,000 values."""
    level = np.rint(np.asarray(rho, float) * bins).astype(np.int64)
    if level.size == 0 or level.min() < -bins or level.max() > bins:
        return float(np.median(rho)) if np.size(rho) else 0.0
    cum = np.cumsum(np.bincount(level + bins, minlength=2 * bins + 1))
    n = cum[-1]
    lo = int(np.searchsorted(cum, (n - 1) // 2, side="right"))
    hi = int(np.searchsorted(cum, n // 2, side="right"))
    return float((lo + hi) / 2 - bins) / bins


def refine_version(delay_s: float) -> str:
    """The version name of an estimate taken ``delay_s`` after onset: rt4.5, rt12.0."""
    return f"rt{round(float(delay_s), 1):.1f}"


@dataclass
class TrialEstimate:
    trial: int
    image: str
    onset: float
    beta: np.ndarray  # (n_voxels,) float32, raw units (signal_scaling=False)
    n_frames: int  # frames on the time axis (newest index + 1)
    n_used: int  # rows in the fit (frames minus missing volumes)
    version: str  # 'realtime', 'endofrun' or a refinement 'rtX.X'
    noise_model: str
    rho_median: float
    estimate_ms: float
    design: np.ndarray  # the design actually fitted (rows used x columns)


class IncrementalGLM:
    """Accumulates a run's vectors and motion; estimates trials when ready (see module docstring)."""

    def __init__(self, events: Events, n_voxels: int, settings: GLMSettings | None = None,
                 expected_volumes: int = 192, kernel: np.ndarray | None = None,
                 extra: Callable[[int], np.ndarray | None] | None = None) -> None:
        """``kernel``: the HRF on the oversampled grid (default Glover's); ``extra``: given a frame count,
        time-varying confounds over those frames (noise components), or None."""
        self.settings = settings or GLMSettings()
        self.kernel = kernel
        self.extra = extra
        self._varying_cache: tuple | None = None
        if self.settings.hrf_model != "glover" or self.settings.drift_model != "cosine":
            raise ValueError("only hrf_model='glover' and drift_model='cosine' are implemented "
                             f"(got {self.settings.hrf_model!r}, {self.settings.drift_model!r})")
        if self.settings.noise_model not in ("ar1", "ols"):
            raise ValueError(f"noise_model must be 'ar1' or 'ols', got {self.settings.noise_model!r}")
        self.events = events
        self.n_voxels = n_voxels
        self._capacity = 0
        self._data = np.zeros((0, n_voxels), np.float32)
        self._motion = np.zeros((0, 6))
        self._present = np.zeros(0, bool)
        self.n_frames = 0
        self.done: set[int] = set()  # trials whose 'realtime' estimate went out
        self.versions: set[tuple[int, str]] = set()  # (trial, version) refinements that went out
        self._schedule: list[list[tuple[int, str]]] | None = None
        self._complete: set[int] = set()
        self._work = Workspace()
        self._products: RunningProducts | None = None
        self._fast_ok = True  # volumes arrived in order: the running products are valid
        self._grow(expected_volumes)

    def _grow(self, frames: int) -> None:
        if frames <= self._capacity:
            return
        cap = max(frames, int(self._capacity * 1.5))
        data = np.zeros((cap, self.n_voxels), np.float32)
        data[: self._capacity] = self._data
        motion = np.zeros((cap, 6))
        motion[: self._capacity] = self._motion
        present = np.zeros(cap, bool)
        present[: self._capacity] = self._present
        self._data, self._motion, self._present, self._capacity = data, motion, present, cap
        # Regressors on nilearn's grid are causal, so the first n rows serve every shorter run.
        times = frame_times(cap, self.settings.t_r)
        self._regressors = trial_regressors(self.events.onset, self.events.duration, times, self.settings.t_r,
                                            self.kernel)
        if self._products is not None:
            fixed = self._fixed_columns()
            fixed[: len(self._products.fixed)] = self._products.fixed
            self._products.fixed = fixed

    # -- input ----------------------------------------------------------------------------------
    def add(self, index: int, vector: np.ndarray, motion: np.ndarray | None = None) -> None:
        """Volume ``index`` (0-based, scanner order) as a masked vector, with its 6 motion parameters."""
        vector = np.asarray(vector, np.float32).ravel()
        if vector.size != self.n_voxels:
            raise ValueError(f"volume {index}: expected {self.n_voxels} voxels, got {vector.size}")
        self._grow(index + 1)
        self._data[index] = vector
        self._motion[index] = 0.0 if motion is None else np.asarray(motion, float)
        self._present[index] = True
        self._varying_cache = None
        if self.settings.noise_model != "ar1":
            self._fast_ok = False  # OLS is one product with the data: nothing to keep per volume
        elif self._products is None:
            self._products = RunningProducts(self._fixed_columns(), self.n_voxels)
        if self._fast_ok and (self._products.prev is None or index > self._products.prev):
            self._products.fixed[index, -7:-1] = self._motion[index]  # the motion columns
            self._products.add(index, vector)
        else:
            self._fast_ok = False  # out of order or replaced: estimates take the direct path
        self.n_frames = max(self.n_frames, index + 1)

    def add_missing(self, index: int) -> None:
        """Volume ``index`` will never come: its row is dropped, the time axis is unchanged."""
        self._grow(index + 1)
        self._present[index] = False
        self._varying_cache = None
        self.n_frames = max(self.n_frames, index + 1)

    def _fixed_columns(self) -> np.ndarray:
        """[each trial's regressor | their sum | 6 motion columns (filled per volume) | constant] per frame."""
        k = self._regressors.shape[1]
        fixed = np.zeros((self._capacity, k + 8))
        fixed[:, :k] = self._regressors
        # Every trial's regressors summed: a trial that has not started is zero on every frame so far,
        # so 'reference' = this sum minus the probe, without touching each trial's products.
        fixed[:, k] = self._regressors.sum(axis=1)
        fixed[:, -1] = 1.0
        return fixed

    # -- readiness --------------------------------------------------------------------------------
    def ready_frame(self, trial: int) -> int:
        """Number of frames needed before ``trial`` is estimated (the frame at onset + delay, inclusive)."""
        return self.frames_at(trial, self.settings.delay_s)

    def ready(self) -> list[int]:
        """Trials not yet estimated whose response window has arrived."""
        return [j for j in range(len(self.events)) if j not in self.done and self.ready_frame(j) <= self.n_frames]

    def frames_at(self, trial: int, delay_s: float) -> int:
        """Frames needed for ``trial`` at ``delay_s`` after its onset (the frame at onset + delay, inclusive)."""
        return int(np.ceil((self.events.onset[trial] + delay_s) / self.settings.t_r - 1e-9)) + 1

    def due(self) -> list[tuple[int, int, str]]:
        """Estimates to make now: (trial, frames, version).

        Classic: each trial once, as 'realtime', when its window is in. Refining: each trial at every
        received frame from ``first_delay_s`` to ``final_delay_s`` after onset, named by the delay of
        that frame; a frame whose volume is missing adds nothing and is skipped, and a frame count
        already estimated for a trial is never estimated again (after a restart too).
        """
        s = self.settings
        if not s.refine:
            return [(j, self.n_frames, "realtime") for j in self.ready()]
        if self._schedule is None:  # each trial's (frames, version) pairs: fixed by the events and the TR
            self._schedule = []
            for j in range(len(self.events)):
                first, last = self.frames_at(j, s.first_delay_s), self.frames_at(j, s.final_delay_s)
                if (last - 1) * s.t_r - self.events.onset[j] > s.final_delay_s + 1e-9:
                    last -= 1  # that frame comes after final_delay_s: the one before it is the last
                self._schedule.append([(n, refine_version((n - 1) * s.t_r - self.events.onset[j]))
                                       for n in range(first, max(first, last) + 1)])
        out = []
        for j, plan in enumerate(self._schedule):
            if j in self._complete or not plan or plan[0][0] > self.n_frames:
                continue
            for n, version in plan:
                if n > self.n_frames:
                    break
                if self._present[n - 1] and (j, version) not in self.versions:
                    out.append((j, n, version))
            if plan[-1][0] <= self.n_frames and not any(o[0] == j for o in out):
                self._complete.add(j)  # every version made (or its volume missing): never looked at again
        return out

    def mark(self, trial: int, version: str) -> None:
        """Record an estimate that went out (the runner calls it; a restart calls it from the store)."""
        if version == "realtime":
            self.done.add(trial)
        elif version != "endofrun":
            self.versions.add((trial, version))

    # -- estimation -------------------------------------------------------------------------------
    def estimate(self, trial: int, n_frames: int | None = None, version: str = "realtime") -> TrialEstimate:
        """Trial ``trial``'s beta from the first ``n_frames`` frames (default: all received so far)."""
        t0 = time.perf_counter()
        n = self.n_frames if n_frames is None else n_frames
        s = self.settings
        times = frame_times(n, s.t_r)
        known = np.flatnonzero(self.events.onset <= times[-1])  # cropped as Real-time MindEye does
        if trial not in known:
            raise ValueError(f"trial {trial} (onset {self.events.onset[trial]:g} s) has not started by frame {n - 1}")
        regs = self._regressors[:n, known]
        probe = int(np.flatnonzero(known == trial)[0])
        rows = self._present[:n]
        use_motion = s.motion_confounds and int(rows.sum()) >= s.motion_min_frames
        confounds = self._motion[:n] if use_motion else None
        X = lss_design(regs, probe, confounds, self._varying(n, times))
        full = bool(rows.all())
        X = X if full else X[rows]
        Y = self._data[:n] if full else self._data[:n][rows]  # a view when nothing is missing: no copy
        fast = self._fast_ok and self._products is not None and n == self.n_frames and self._products.prev is not None
        if fast and s.noise_model == "ar1":
            beta, rho = self._from_products(trial, X, Y, times, rows, use_motion)
        elif s.noise_model == "ols":
            beta, rho = ols_beta(X, Y), np.zeros(1)
        else:
            beta, rho = ar1_beta(X, Y, bins=s.bins, work=self._work)
        self.mark(trial, version)
        return TrialEstimate(trial, self.events.image[trial], float(self.events.onset[trial]),
                             np.asarray(beta, np.float32), n, int(rows.sum()), version, s.noise_model,
                             _median(rho, s.bins), (time.perf_counter() - t0) * 1e3, X.astype(np.float32))

    def _from_products(self, trial: int, X: np.ndarray, Y: np.ndarray, times: np.ndarray, rows: np.ndarray,
                       use_motion: bool) -> tuple[np.ndarray, np.ndarray]:
        """The same estimate from the running products: no pass over the data but the drift's."""
        pr = self._products
        k = self._regressors.shape[1]
        motion = [k + 1 + i for i in range(6)] if use_motion else []
        drift = self._varying(len(times), times)[rows]
        nd = drift.shape[1]
        key = (len(times), int(rows.sum()), nd)
        if self._varying_cache is not None and self._varying_cache[0] == key:
            products = self._varying_cache[1]  # every trial estimated at this frame shares them
        else:
            # D'y, D'Ly and (LD)'y in one pass over the data: D'Ly = (D moved up a row)'y, (LD)'y = (D moved down)'y.
            three = np.zeros((3 * nd, drift.shape[0]), np.float32)
            three[:nd] = drift.T
            three[nd:2 * nd, :-1] = drift[1:].T
            three[2 * nd:, 1:] = drift[:-1].T
            products = three @ Y
            self._varying_cache = (key, products)
        extra = [products[:nd], products[nd:2 * nd], products[2 * nd:]]

        def stack(products: np.ndarray, d: np.ndarray) -> np.ndarray:
            out = np.empty((3 + len(motion) + len(d), products.shape[1]))
            out[0] = products[trial]
            np.subtract(products[k], out[0], out=out[1])
            out[2: 2 + len(motion)] = products[motion]
            out[2 + len(motion): -1] = d
            out[-1] = products[-1]
            return out

        xy, x_ly, lx_y = stack(pr.f_y, extra[0]), stack(pr.f_ly, extra[1]), stack(pr.lf_y, extra[2])
        return probe_betas(X, xy, x_ly, lx_y, pr.yy, pr.y_ly, pr.prev_y, self.settings.noise_model, self.settings.bins)

    def _varying(self, n: int, times: np.ndarray) -> np.ndarray:
        """Columns that change as the run grows: the cosine drift, then any noise components."""
        drift = cosine_drift(self.settings.high_pass, times)
        more = self.extra(n) if self.extra is not None else None
        return drift if more is None or more.shape[1] == 0 else np.hstack([drift, more])

    def end_of_run(self) -> list[TrialEstimate]:
        """Every trial re-estimated with the whole run (kept apart from the real-time betas)."""
        return [self.estimate(j, version="endofrun") for j in range(len(self.events))
                if self.events.onset[j] <= (self.n_frames - 1) * self.settings.t_r]
