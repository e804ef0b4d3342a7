"""The scanner side's GLM stage: per-run incremental GLMs, session z-scoring, storage and hand-off.

Owned by the scanner side's single loop (no threads here). For each run it looks up the events table
named by ``glm.events``; a run without one is processed for volumes only, with one log line and a
warning (``on_warning``) saying where the table was looked for. Every run of a session gives betas of
one voxel count (the session's voxel space); a run of another count, or saved statistics (calibration
z-scores, a GLM tuning) of another size, is refused in one :class:`VoxelSpaceError` line naming both. Every beta is stored (raw and as sent) before it is handed on, and a
restarted scanner side rebuilds each run's GLM and the session's z-score statistics from the session
folder, so no trial is estimated or sent twice.

It speaks no wire protocol: each beta leaves as a :class:`SentBeta` through ``emit``, and the scanner
side (``rtdecode.scanner``) turns it into a message for the events socket and the decoder.
"""

from __future__ import annotations

import glob
import logging
import re
import string
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rtdecode.base.config import denoise_count, needs_tuning
from rtdecode.base.errors import ConfigError, VoxelSpaceError
from rtdecode.base.events import Events, EventsError, read_events, write_events
from rtdecode.base.session import SessionFolder
from rtdecode.base.settings import SessionConfig
from rtdecode.glm.incremental import GLMSettings, IncrementalGLM, TrialEstimate
from rtdecode.glm.normalize import FixedZScore, NoZScore, RepeatAverager, RunningZScore
from rtdecode.glm.store import BetaStore, betas_model_description
from rtdecode.glm.tuning import GLMTuning
from rtdecode.glm.voxelwise import VoxelwiseGLM, make_glm

log = logging.getLogger(__name__)


def settings_from_config(config: SessionConfig, tuning: GLMTuning | None = None) -> GLMSettings:
    """The GLM's settings; ``denoise = "auto"`` takes the count the tuning chose."""
    g = config.glm
    denoise = denoise_count(g.denoise, tuned_count(tuning, g.denoise_mode, g.delay_s))
    return GLMSettings(t_r=config.scanner.tr_s, hrf_model=g.hrf_model, drift_model=g.drift_model,
                       high_pass=g.high_pass, noise_model=g.noise_model, delay_s=g.delay_s,
                       motion_confounds=g.motion_confounds, motion_min_frames=g.motion_min_frames,
                       hrf=g.hrf, denoise=denoise, denoise_min_frames=g.denoise_min_frames,
                       denoise_mode=g.denoise_mode, refine=g.refine,
                       first_delay_s=g.first_delay_s, final_delay_s=g.final_delay_s)


def tuned_count(tuning: GLMTuning | None, mode: str, delay_s: float | None) -> int | None:
    """``denoise = "auto"``: the tuning's count for this mode and tier (None: end-of-run betas)."""
    if tuning is None:
        return None
    return tuning.components_for(delay_s) if mode == "subtract" else tuning.n_components


def load_tuning(config: SessionConfig) -> GLMTuning | None:
    """The calibration hour's GLM tuning when the settings need one (glm.tuning), else None."""
    g = config.glm
    if not needs_tuning(g.hrf, g.denoise):
        return None
    try:
        return GLMTuning.load(g.tuning)
    except ValueError as exc:
        raise ConfigError(f"glm.tuning: {exc}") from None


def store_name(version: str) -> str:
    """Which store a version lives in: refinements (rtX.X) share one, as rows with their version."""
    return version if version in ("realtime", "endofrun") else "refine"


def events_path(config: SessionConfig, run: int, series: int) -> Path | None:
    if config.glm.events is None:
        return None
    return Path(str(config.glm.events).format(run=run, series=series))


class _Kept:
    """A placeholder left as written when the others are filled in (``{series:03d}`` stays)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __format__(self, spec: str) -> str:
        return "{" + self.name + (f":{spec}" if spec else "") + "}"


def _tables_on_disk(template: str) -> list[dict[str, int]]:
    """The placeholders' values of every file that matches an events template (``{run}``, ``{series}``)."""
    globs, regex, seen = [], [], []
    for literal, name, _spec, _conv in string.Formatter().parse(template):
        globs.append(glob.escape(literal))
        regex.append(re.escape(literal))
        if name:
            globs.append("*")
            regex.append(f"(?P={name})" if name in seen else f"(?P<{name}>[0-9]+)")
            seen.append(name)
    pattern = re.compile("".join(regex))
    found = (pattern.fullmatch(p) for p in glob.glob("".join(globs)))
    return [{k: int(v) for k, v in m.groupdict().items()} for m in found if m]


def events_warnings(config: SessionConfig) -> list[str]:
    """One line per run that can be told before the session to have no events table (so no betas)."""
    g = config.glm
    if not g.enabled:
        return []
    if g.events is None:
        return ["glm.events is not set: every run gives volumes only, no betas"]
    template = str(g.events)
    names = {name for _, name, _, _ in string.Formatter().parse(template) if name}
    if not names:
        return [] if Path(template).exists() else [
            f"glm.events: no events table at {template}: every run gives volumes only, no betas"]
    found = _tables_on_disk(template)
    if "run" in names:
        runs = {t["run"] for t in found}
        return [f"glm.events: run {n} has no events table (expected {template.format(run=n, series=_Kept('series'))}): "
                "it gives volumes only, no betas" for n in range(1, max(runs, default=1) + 1) if n not in runs]
    if not found:  # {series} only: which series the scanner numbers run 1 is not known before the session
        return [f"glm.events: no events table for any series (expected e.g. {template.format(series=1)}): "
                "every run gives volumes only, no betas"]
    return []


class _Normalizer:
    """z-scoring (running over the session, or fixed) then optional repeat averaging."""

    def __init__(self, config: SessionConfig, n_voxels: int) -> None:
        mode = config.glm.zscore
        if mode == "calibration":
            try:
                self.z = FixedZScore.load(config.glm.zscore_stats)
            except ValueError as exc:
                raise ConfigError(f"glm.zscore_stats: {exc}") from None
        else:
            self.z = RunningZScore(n_voxels) if mode == "running" else NoZScore()
        self.average = RepeatAverager() if config.glm.average_repeats else None

    def __call__(self, image: str, beta: np.ndarray) -> tuple[np.ndarray, int]:
        z = self.z(beta)
        return self.average(image, z) if self.average is not None else (z, 1)


@dataclass(frozen=True)
class SentBeta:
    """A beta as the GLM stage hands it on: stored, normalised (and repeat-averaged) as configured."""

    run: int
    trial: int
    image: str
    version: str  # "realtime", "endofrun" or a refinement "rtX.X"
    onset: float
    n_frames: int
    n_repeats: int
    estimate_ms: float
    vector: np.ndarray  # float32, what the decoder receives


class TrialBetas:
    """GLM stage of the scanner side. Call :meth:`volume`, :meth:`missing`, :meth:`end_run`.

    Args:
        emit: called with each stored beta and ``resumed``: False when it was just estimated, True
            when a restart reads it back from the session folder (to re-deliver what was not acknowledged).
        on_error: called with a run and the reason when its events table cannot be used.
        on_warning: called with a run and where its events table was looked for when there is none.
    """

    def __init__(self, config: SessionConfig, folder: SessionFolder, emit: Callable[[SentBeta, bool], None],
                 on_error: Callable[[int, str], None] | None = None,
                 on_warning: Callable[[int, str], None] | None = None) -> None:
        self.config = config
        self.folder = folder
        self.emit = emit
        self.on_error = on_error
        self.on_warning = on_warning
        self.n_voxels: int | None = None  # the session's, from its first run with betas
        self._stats_voxels: int | None = None
        self.tuning = load_tuning(config)
        self.settings = settings_from_config(config, self.tuning)
        self.glms: dict[int, IncrementalGLM | VoxelwiseGLM] = {}
        self.stores: dict[int, dict[str, BetaStore]] = {}
        self._normalizers: dict[str, _Normalizer] = {}
        self._skipped: set[int] = set()

    # -- runs -----------------------------------------------------------------------------------
    def start_run(self, run: int, series: int, n_voxels: int) -> bool:
        """Set up run ``run``'s GLM if its events table exists; False when the run has no betas."""
        if not self.config.glm.enabled or run in self.glms or run in self._skipped:
            return run in self.glms
        path = events_path(self.config, run, series)
        if path is None or not path.exists():
            where = "glm.events is not set" if path is None else f"no events table at {path}"
            log.warning("run %d: %s; volumes only, no betas", run, where)
            self._skipped.add(run)
            if self.on_warning is not None:
                self.on_warning(run, f"{where}; volumes only, no betas")
            return False
        self.check_voxels(run, n_voxels)
        duration = self.config.scanner.volumes_per_run * self.config.scanner.tr_s
        try:
            events = read_events(path, run_duration_s=duration)
        except EventsError as exc:
            log.error("run %d: %s; volumes only, no betas", run, exc)
            self._skipped.add(run)
            if self.on_error is not None:
                self.on_error(run, str(exc))
            return False
        self._open(run, events, n_voxels)
        # The session keeps its own copy, so offline estimates and calibration need nothing else.
        copy = self.folder.path / "func" / f"{self.folder.prefix(run)}_events.tsv"
        if not copy.exists() or _rows(read_events(copy)) != _rows(events):  # a resume keeps the finalised copy
            write_events(copy, events)
        log.info("run %d: %d trials from %s", run, len(events), path)
        return True

    def _open(self, run: int, events: Events, n_voxels: int) -> IncrementalGLM | VoxelwiseGLM:
        try:
            glm = make_glm(events, n_voxels, self.settings, self.config.scanner.volumes_per_run, self.tuning)
        except ValueError as exc:
            raise ConfigError(f"glm.tuning: {exc}") from None
        self.glms[run] = glm
        names = ("realtime", "endofrun", "refine") if self.settings.refine else ("realtime", "endofrun")
        model = betas_model_description(self.settings, self.tuning, self.config.glm.tuning)
        self.stores[run] = {v: BetaStore(self.folder, run, v, model) for v in names}
        self.n_voxels = n_voxels if self.n_voxels is None else self.n_voxels
        return glm

    def check_voxels(self, run: int, n_voxels: int) -> None:
        """Refuse a run whose voxel count is not the session's, the tuning's or the saved z-scores'."""
        if self.n_voxels is not None and n_voxels != self.n_voxels:
            raise VoxelSpaceError(f"run {run} has {n_voxels} voxels, but this session's betas have {self.n_voxels} "
                                  "(a session keeps one voxel space: docs/session-folder.md)")
        if self.tuning is not None and self.tuning.n_voxels != n_voxels:
            raise VoxelSpaceError(f"glm.tuning ({self.config.glm.tuning}) holds {self.tuning.n_voxels} voxels, but "
                                  f"run {run} has {n_voxels}; the tuning and the session need the same mask "
                                  "(preprocess.mask)")
        if self.config.glm.zscore == "calibration":
            if self._stats_voxels is None:
                self._stats_voxels = _Normalizer(self.config, n_voxels).z.n_voxels
            if self._stats_voxels != n_voxels:
                raise VoxelSpaceError(f"glm.zscore_stats ({self.config.glm.zscore_stats}) holds statistics of "
                                      f"{self._stats_voxels} voxels, but run {run} has {n_voxels}; they need the "
                                      "same mask (preprocess.mask)")

    def _normalizer(self, version: str) -> _Normalizer:
        """One per version: a refinement at 4.5 s and one at 15 s have different scales."""
        if version not in self._normalizers:
            self._normalizers[version] = _Normalizer(self.config, self.n_voxels)
        return self._normalizers[version]

    def resume_run(self, run: int, series: int, rows: list[dict[str, str]], vectors: np.ndarray) -> None:
        """Rebuild a run's GLM from its stored volumes and mark the trials already estimated."""
        if vectors.size == 0 or not self.start_run(run, series, vectors.shape[1]):
            return
        glm = self.glms[run]
        k = 0
        for r in rows:
            index = int(r["volume"])
            if r["status"] == "ok":
                motion = [float(r[c]) for c in ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z")]
                glm.add(index, vectors[k], motion)
                k += 1
            else:
                glm.add_missing(index)
        for store in self.stores[run].values():
            stored, raw, sent = store.load()
            for row, beta, vector in zip(stored, raw, sent, strict=True):
                version = row["version"]
                glm.mark(int(row["trial"]), version)
                self._normalizer(version)(row["image"], beta)  # statistics as they were
                # Handed on again: the decoder's channel skips what was already acknowledged.
                self.emit(SentBeta(run, int(row["trial"]), row["image"], version, float(row["onset"]),
                                   int(row["n_frames"]), int(row["n_repeats"]), float(row["estimate_ms"]),
                                   np.asarray(vector, np.float32)), True)

    def release(self, run: int) -> None:
        """Forget an ended run's GLM (its betas are on disk): memory stays flat over a long session."""
        self.glms.pop(run, None)
        self.stores.pop(run, None)

    def abandon(self, run: int) -> None:
        """No more betas for this run (after an error); its volumes are still stored by the caller."""
        self.release(run)
        self._skipped.add(run)

    # -- volumes ----------------------------------------------------------------------------------
    def volume(self, run: int, index: int, vector: np.ndarray, motion: np.ndarray) -> list[TrialEstimate]:
        glm = self.glms.get(run)
        if glm is None:
            return []
        glm.add(index, vector, motion)
        return [self._emit(run, glm.estimate(j, n, version)) for j, n, version in glm.due()]

    def missing(self, run: int, index: int) -> list[TrialEstimate]:
        glm = self.glms.get(run)
        if glm is None:
            return []
        glm.add_missing(index)
        return [self._emit(run, glm.estimate(j, n, version)) for j, n, version in glm.due()]

    def end_run(self, run: int) -> list[TrialEstimate]:
        """Trials whose window never came are estimated now; then every trial again, as 'endofrun'."""
        glm = self.glms.get(run)
        if glm is None or glm.n_frames == 0:
            return []
        # Refining: what came out is each trial's newest version; no late estimate under another name.
        late = [] if self.settings.refine else [j for j in range(len(glm.events)) if j not in glm.done
                                                and glm.events.onset[j] <= (glm.n_frames - 1) * glm.settings.t_r]
        out = [self._emit(run, glm.estimate(j)) for j in late]
        if not self.stores[run]["endofrun"].table.exists():
            out += [self._emit(run, est) for est in glm.end_of_run()]
        return out

    def _emit(self, run: int, est: TrialEstimate) -> TrialEstimate:
        t_ready = time.time()
        sent, n_repeats = self._normalizer(est.version)(est.image, est.beta)
        self.stores[run][store_name(est.version)].append(est, sent, self.settings, {
            "n_repeats": n_repeats, "t_ready": f"{t_ready - est.estimate_ms / 1e3:.3f}", "t_done": f"{time.time():.3f}"})
        self.emit(SentBeta(run, est.trial, est.image, est.version, float(est.onset), int(est.n_frames), n_repeats,
                           float(est.estimate_ms), np.asarray(sent, np.float32)), False)
        return est


def _rows(events: Events) -> list[tuple]:
    return [(round(r["onset"], 3), round(r["duration"], 3), r["image"]) for r in events.rows()]
