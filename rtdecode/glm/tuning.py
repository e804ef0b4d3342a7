"""What the calibration hour teaches the real-time GLM: each voxel's HRF, the noise pool, how many
noise components. :func:`tune` is pure (runs in, tuning out); :func:`tune_session` reads a session
folder; :class:`GLMTuning` is saved into the calibrated model's folder beside its weights.

glm_tuning.npz    hrf_index (voxels,), library (members, 4), pool (indices), reliability (voxels,: each
                  voxel's repeat reliability under its member), hrf_gain, component_scores (counts,)
glm_tuning.json   n_voxels, n_components, the fractions per member, the source session, the version
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rtdecode.base.events import Events
from rtdecode.base.recorded import MOTION, recorded_runs, session_folder, session_tr
from rtdecode.glm.criteria import MIN_PAIRS, EncodingCriterion, RepeatCriterion
from rtdecode.glm.denoise import (
    MAX_COMPONENTS,
    NoiseSubtraction,
    baseline_columns,
    choose_count,
    learn_subtraction,
    noise_components,
    subtraction_scores,
)
from rtdecode.glm.design import frame_times, trial_regressors
from rtdecode.glm.hrf_library import (
    GLOVER_INDEX,
    VoxelGrid,
    choose_members,
    library_kernel,
    library_params,
)
from rtdecode.glm.incremental import GLMSettings, IncrementalGLM

FORMAT = 2  # 2: the noise subtraction (issue 32); format 1 files are still read
MIN_POOL = 30  # fewer pool voxels than this and the components are mostly one voxel's noise
EVOKED_T = 2.0  # a pool voxel's mean beta over the calibration trials is within this many standard errors of 0


@dataclass
class TuningRun:
    """One calibration run as the tuning needs it (rows used only)."""

    onsets: np.ndarray
    durations: np.ndarray
    data: np.ndarray  # (frames used, voxels) float32
    motion: np.ndarray  # (frames used, 6)
    rows: np.ndarray  # (frames,) bool: which frames are in ``data``
    images: tuple[str, ...] = ()  # what each trial showed (repeats make the component count's criterion)


@dataclass
class GLMTuning:
    hrf_index: np.ndarray
    library: np.ndarray
    pool: np.ndarray
    reliability: np.ndarray  # each voxel's beta reliability across repeats under its chosen member
    n_components: int
    component_scores: np.ndarray
    source: str = ""
    notes: list[str] = field(default_factory=list)
    hrf_gain: np.ndarray | None = None  # held-out gain of each voxel's choice over Glover (share of variance)
    runs: list[int] = field(default_factory=list)  # the session's runs it was tuned on ([]: not recorded)
    held_out: int = 0  # how many images were left out of every criterion
    subtraction: NoiseSubtraction | None = None  # the hour's noise, subtracted from each volume (denoise_mode)
    tier_delay_s: float = 7.5  # the fast tier the subtraction's count was chosen for
    fast_components: int = 0  # components to subtract for betas at tier_delay_s ...
    end_components: int = 0  # ... and for end-of-run betas
    # The HRF choice's evidence, the criterion per (member, voxel) on each half of the evidence and on all of
    # it ("a", "b", "all"); kept in memory for checks, not saved.
    evidence: dict | None = field(default=None, repr=False)
    criterion: str = ""  # what scored the choices (rtdecode.glm.criteria); "" when nothing could

    def components_for(self, delay_s: float | None) -> int:
        """How many components to subtract for betas ``delay_s`` after onset (None: end of run)."""
        return self.end_components if delay_s is None or delay_s > 2 * self.tier_delay_s else self.fast_components

    @property
    def n_voxels(self) -> int:
        return len(self.hrf_index)

    def summary(self) -> dict:
        counts = np.bincount(self.hrf_index, minlength=len(self.library))
        return {"format": FORMAT, "n_voxels": self.n_voxels, "n_components": self.n_components,
                "pool_voxels": int(len(self.pool)), "source": self.source, "notes": self.notes,
                "member_delays_s": self.library[:, 0].round(3).tolist(),
                "member_fraction": (counts / max(self.n_voxels, 1)).round(4).tolist(),
                "median_reliability": float(np.median(self.reliability)),
                "component_scores": self.component_scores.round(5).tolist(), "runs": list(self.runs),
                "held_out_images": int(self.held_out), "subtraction": self.subtraction is not None,
                "tier_delay_s": self.tier_delay_s, "fast_components": self.fast_components,
                "end_components": self.end_components, "criterion": self.criterion}

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        gain = np.zeros(self.n_voxels) if self.hrf_gain is None else self.hrf_gain
        sub = self.subtraction
        extra = {} if sub is None else {f"sub_{k}": getattr(sub, k).astype(np.float32)
                                        for k in ("center", "scale", "patterns", "loadings")}
        np.savez(folder / "glm_tuning.npz", hrf_index=self.hrf_index.astype(np.int16), library=self.library,
                 pool=self.pool.astype(np.int64), reliability=self.reliability.astype(np.float32),
                 component_scores=self.component_scores, hrf_gain=gain.astype(np.float32), **extra)
        (folder / "glm_tuning.json").write_text(json.dumps(self.summary(), indent=2))
        return folder / "glm_tuning.npz"

    @classmethod
    def load(cls, folder: str | Path) -> GLMTuning:
        folder = Path(folder)
        path, meta_path = folder / "glm_tuning.npz", folder / "glm_tuning.json"
        if not path.exists() or not meta_path.exists():
            raise ValueError(f"{folder}: no GLM tuning (glm_tuning.npz and .json); make one with "
                             "`rtdecode glm-tune SESSION --out FOLDER` or `rtdecode calibrate --glm-hrf library`")
        try:
            meta = json.loads(meta_path.read_text())
            if not isinstance(meta, dict):
                raise ValueError(f"expected a JSON object, got {type(meta).__name__}")
            fmt = meta.get("format")
            if fmt in (1, FORMAT):
                with np.load(path, allow_pickle=False) as z:
                    t = cls(z["hrf_index"].astype(int), z["library"].astype(float), z["pool"].astype(int),
                            z["reliability"].astype(float), int(meta["n_components"]),
                            z["component_scores"].astype(float), str(meta.get("source", "")),
                            list(meta.get("notes", [])), z["hrf_gain"].astype(float),
                            [int(r) for r in meta.get("runs", [])], int(meta.get("held_out_images", 0)))
                    if meta.get("subtraction"):
                        t.subtraction = NoiseSubtraction(t.pool, *(z[f"sub_{k}"].astype(float) for k in
                                                                   ("center", "scale", "patterns", "loadings")))
                        t.tier_delay_s = float(meta["tier_delay_s"])
                        t.fast_components, t.end_components = int(meta["fast_components"]), int(meta["end_components"])
                    t.criterion = str(meta.get("criterion", ""))
        # np.load of a file that is not a zip raises a ValueError (it refuses the pickle fallback)
        except (OSError, KeyError, TypeError, ValueError, zipfile.BadZipFile) as exc:
            raise ValueError(f"{folder}: glm_tuning.npz/.json unreadable ({type(exc).__name__}: {exc})") from None
        if fmt not in (1, FORMAT):
            raise ValueError(f"{meta_path}: format {fmt!r}, this rtdecode reads 1 and {FORMAT}")
        n = t.n_voxels
        sub = t.subtraction
        if sub is not None and (sub.center.shape != (len(t.pool),) or sub.scale.shape != (len(t.pool),)
                                or sub.patterns.shape[0] != len(t.pool)
                                or sub.loadings.shape != (sub.patterns.shape[1], n)):
            raise ValueError(f"{path}: the noise subtraction's arrays disagree with the pool ({len(t.pool)}) or n_voxels ({n})")
        if meta.get("n_voxels") != n or len(t.reliability) != n or (len(t.pool) and (t.pool.min() < 0 or t.pool.max() >= n)) \
                or t.hrf_index.min(initial=0) < 0 or t.hrf_index.max(initial=0) >= len(t.library):
            raise ValueError(f"{path}: arrays disagree with each other or with n_voxels {meta.get('n_voxels')}")
        return t


def _run_betas(run: TuningRun, tr_s: float, settings: GLMSettings, kernel: np.ndarray | None,
               components: np.ndarray | None = None) -> np.ndarray:
    """Whole-run single-trial betas (LSS, OLS) of one run under one HRF, optionally with noise components."""
    n = len(run.rows)
    extra = None if components is None else (lambda frames: components[:frames])
    glm = IncrementalGLM(Events(run.onsets, run.durations, tuple(run.images) or ("",) * len(run.onsets)),
                         run.data.shape[1], settings, n, kernel, extra)
    for t, k in enumerate(np.flatnonzero(run.rows)):
        glm.add(int(k), run.data[t], run.motion[t])
    for k in np.flatnonzero(~run.rows):
        glm.add_missing(int(k))
    return np.stack([e.beta for e in glm.end_of_run()])


Features = Callable[[list[str]], np.ndarray]
CRITERIA = ("encoding", "repeats")  # what scores the tuning when both could: rtdecode.glm.criteria


def _criterion(runs: list[TuningRun], held_out: frozenset[str] | set[str], features: Features | None,
               seed: int, prefer: str) -> tuple[RepeatCriterion | EncodingCriterion, np.ndarray, list[str]]:
    """What scores the tuning: the encoding score when image ``features`` are given (``prefer`` "encoding") or
    when training images do not repeat, else repeat reliability (held-out images' features are never asked
    for); with the mask of scored trials and the notes."""
    if prefer not in CRITERIA:
        raise ValueError(f"GLM tuning criterion: expected one of {CRITERIA}, got {prefer!r}")
    shown = [img for run in runs for img in run.images]
    scored = np.array([img not in held_out for img in shown], bool)
    images = [img if keep else f"held-out trial {i}" for i, (img, keep) in enumerate(zip(shown, scored, strict=True))]
    notes: list[str] = [f"{int((~scored).sum())} trial(s) of {len(set(shown) & set(held_out))} held-out image(s) "
                        "left out of every criterion"] if (~scored).any() else []
    criterion: RepeatCriterion | EncodingCriterion = RepeatCriterion(images, seed)
    complete = all(len(run.images) == len(run.onsets) for run in runs)
    if (prefer == "encoding" or not criterion.usable) and features is not None and complete:
        trial_runs = np.concatenate([np.full(len(run.images), k) for k, run in enumerate(runs)])
        wanted = [img for img, keep in zip(shown, scored, strict=True) if keep]
        if len(set(trial_runs[scored].tolist())) >= 2:
            try:
                found = np.asarray(features(wanted))
            except (KeyError, ValueError) as exc:  # e.g. a recorded session's own image ids: no tokens for them
                if criterion.usable:
                    notes.append(f"no image features ({exc}): scored by repeat reliability instead")
                    return criterion, scored, notes
                raise ValueError(f"{len(criterion.pairs)} pair(s) of repeated training images found, at least "
                                 f"{MIN_PAIRS} needed to tune by repeat reliability, and no image features ({exc}): "
                                 "hold out fewer repeated images, or give the images' features (--images DIR)"
                                 ) from None
            criterion = EncodingCriterion(found, trial_runs, scored)
    return criterion, scored, notes


def tune(runs: list[TuningRun], tr_s: float, high_pass_hz: float = 0.01, max_components: int = MAX_COMPONENTS,
         motion: bool = True, source: str = "", seed: int = 0, held_out: frozenset[str] | set[str] = frozenset(),
         grid: VoxelGrid | None = None, tier_delay_s: float = 7.5, features: Features | None = None,
         criterion: str = "encoding") -> GLMTuning:
    """Choose each voxel's HRF, the noise pool and the number of components from calibration runs.

    Every choice is scored by one criterion (:mod:`rtdecode.glm.criteria`) on single-trial betas (whole-run
    LSS, OLS): how well a ridge map from the images' ``features`` (image ids -> (n, ...) array) fitted on
    the other runs predicts them, when features are given (``criterion`` "encoding": it uses every
    training trial and finds late voxels, docs/glm.md); else, or with ``criterion`` "repeats" where
    training images repeat, how well betas of the same image agree across its presentations. It chooses HRF members per voxel (pooled over neighbours on
    ``grid``, else shrunk towards the person's curve: :func:`choose_members`), the pool (voxels whose
    betas score at or below 0 and whose mean beta is within ``EVOKED_T`` standard errors of 0) and the
    number of components (:func:`choose_count`). Trials of ``held_out`` images stay in the design (they
    were shown) but their betas score nothing and teach the encoding map nothing: the tuning sees training
    data only. With neither criterion usable every voxel keeps Glover's neighbour and no components are
    chosen (said in notes).
    """
    if len(runs) < 2:
        raise ValueError(f"GLM tuning needs at least 2 calibration runs with events, got {len(runs)}")
    params = library_params()
    n_vox = runs[0].data.shape[1]
    criterion, scored, notes = _criterion(runs, held_out, features, seed, criterion)
    settings = GLMSettings(t_r=tr_s, high_pass=high_pass_hz, noise_model="ols", motion_confounds=motion)
    if not criterion.usable:
        notes.append(f"only {len(criterion.pairs)} pairs of repeated training images (held-out images do not count)"
                     " and no image features: HRFs stay Glover's, no noise components")
        return GLMTuning(np.full(n_vox, GLOVER_INDEX), params, np.zeros(0, int), np.zeros(n_vox), 0,
                         np.zeros(1), source, notes, np.zeros(n_vox))
    rel: dict[str, list] = {"a": [None] * len(params), "b": [None] * len(params), "all": [None] * len(params),
                            "evoked_t": [None] * len(params)}
    # Glover's member first: the encoding criterion fixes its ridge penalty on the first betas it scores.
    for m in [GLOVER_INDEX] + [m for m in range(len(params)) if m != GLOVER_INDEX]:
        betas = np.concatenate([_run_betas(run, tr_s, settings, library_kernel(m, tr_s, params)) for run in runs])
        rel["a"][m], rel["b"][m], rel["all"][m] = criterion.halves(betas)
        ev = betas[scored]
        rel["evoked_t"][m] = ev.mean(0) / np.maximum(ev.std(0) / np.sqrt(len(ev)), 1e-12)
    rel = {k: np.stack(v) for k, v in rel.items()}  # (members, voxels)
    notes.append(f"scored by {criterion.describe()}")
    best, how, held = choose_members(rel["a"], rel["b"], rel["all"], grid)
    notes.append(f"HRF choice {how} (held-out score "
                 + ", ".join(f"{s:g}: {v:.4f}" for s, v in held.items()) + ")")
    reliability = rel["all"][best, np.arange(n_vox)]
    gain = reliability - rel["all"][GLOVER_INDEX]
    # No task response of either kind: betas the criterion finds nothing in, and no mean response to the images.
    # The encoding score is judged at Glover's member: each voxel's best of 21 members is biased upwards (median
    # +0.06 for voxels without a response in tests/test_glm_tuning.py's visit), which would empty the pool.
    at = np.full(n_vox, GLOVER_INDEX) if isinstance(criterion, EncodingCriterion) else best
    pool = np.flatnonzero((rel["all"][at, np.arange(n_vox)] <= 0)
                          & (np.abs(rel["evoked_t"][at, np.arange(n_vox)]) < EVOKED_T))
    tuning = GLMTuning(best, params, pool, reliability, 0, np.zeros(1), source, notes, gain)
    tuning.evidence, tuning.criterion = {key: rel[key] for key in ("a", "b", "all")}, criterion.name
    if len(pool) < MIN_POOL:
        notes.append(f"only {len(pool)} voxels whose betas score at or below 0; no noise components")
        return tuning
    others = np.setdiff1d(np.arange(n_vox), pool)
    weights = np.clip(reliability[others], 0, None)
    tuning.n_components, tuning.component_scores = _regress_count(runs, pool, others, weights, criterion, settings,
                                                                 max_components)
    notes.append(f"{tuning.n_components} noise component(s) as regressors: score of the other voxels (weighted by "
                 f"their own) with 0..{max_components}: " + ", ".join(f"{v:.4f}" for v in tuning.component_scores))
    _tune_subtraction(tuning, runs, others, weights, criterion.score, settings, max_components, tier_delay_s)
    return tuning


def _regress_count(runs: list[TuningRun], pool: np.ndarray, others: np.ndarray, weights: np.ndarray, criterion,
                   settings: GLMSettings, max_components: int) -> tuple[int, np.ndarray]:
    """Issue 20's count: components of each run's pool re-fitted as regressors, scored on the other voxels."""
    scores = []
    for k in range(max_components + 1):
        parts = []
        for run in runs:
            comps = None
            if k:
                base = baseline_columns(len(run.rows), settings.t_r, settings.high_pass, run.rows)
                comps = np.zeros((len(run.rows), k))
                found = noise_components(run.data[:, pool], base, k)
                comps[run.rows, : found.shape[1]] = found
            # Glover's design for every voxel here: the count hardly depends on each voxel's member.
            sub = TuningRun(run.onsets, run.durations, run.data[:, others], run.motion, run.rows, run.images)
            parts.append(_run_betas(sub, settings.t_r, settings, None, comps))
        scores.append(criterion.score(np.concatenate(parts)))
    return choose_count(np.stack(scores), weights)


def _tune_subtraction(tuning: GLMTuning, runs: list[TuningRun], others: np.ndarray, weights: np.ndarray,
                      score, settings: GLMSettings, max_components: int, tier_delay_s: float) -> None:
    """Learn the pool's noise on the whole hour and how many components to subtract, for the fast tier
    (``tier_delay_s`` after onset) and for end-of-run betas, each by the criterion (``score``) on its own betas."""
    learn = []
    for run in runs:
        base = baseline_columns(len(run.rows), settings.t_r, settings.high_pass, run.rows)
        task = trial_regressors(run.onsets, run.durations, frame_times(len(run.rows), settings.t_r), settings.t_r)
        learn.append((run.data, base, task.sum(1, keepdims=True)[run.rows]))
    tuning.subtraction = learn_subtraction(learn, tuning.pool, max_components)
    fast, end = subtraction_scores(runs, tuning.subtraction, others, score, settings, tier_delay_s)
    (k_fast, s_fast), (k_end, s_end) = choose_count(fast, weights), choose_count(end, weights)
    tuning.tier_delay_s, tuning.fast_components, tuning.end_components = tier_delay_s, k_fast, k_end
    for name, k, sc in ((f"fast tier ({tier_delay_s:g} s)", k_fast, s_fast), ("end of run", k_end, s_end)):
        tuning.notes.append(f"{name}: subtract {k} component(s) (score with 0..{len(sc) - 1}: "
                            + ", ".join(f"{v:.4f}" for v in sc) + ")")


def session_runs(folder, runs: list[int] | None = None) -> list[tuple[int, TuningRun]]:
    """Every run of a session folder with stored volumes and an events table (those in ``runs`` when
    given; a run asked for that has none is a ValueError naming it), as tuning input."""
    out = []
    found = list(recorded_runs(folder))
    missing = sorted(set(runs or []) - {run for run, *_ in found})
    if missing:
        raise ValueError(f"{folder.path}: run(s) {missing} asked for, but only runs {[r for r, *_ in found]} have "
                         "stored volumes and an events table")
    for run, ev, rows, vectors in found:
        if runs is not None and run not in runs:
            continue
        ok = [r for r in rows if r["status"] == "ok"]  # in the order their vectors were stored
        order = np.array([int(r["volume"]) for r in ok])
        present = np.zeros(max(int(r["volume"]) for r in rows) + 1, bool)
        present[order] = True
        data = np.zeros((len(present), vectors.shape[1]), np.float32)
        data[order] = vectors
        motion = np.zeros((len(present), 6))
        motion[order] = [[float(r[c]) for c in MOTION] for r in ok]
        out.append((run, TuningRun(ev.onset, ev.duration, data[present], motion[present], present, tuple(ev.image))))
    return out


def session_grid(folder, run: int, n_voxels: int) -> VoxelGrid | None:
    """Where the session's voxels lie, from a run's stored mask (None when it has none or another count)."""
    store = folder.run_store(run)
    if not store.mask.exists():
        return None
    import nibabel as nib

    img = nib.load(store.mask)
    mask = np.asarray(img.dataobj) > 0
    return VoxelGrid.from_mask(mask, img.affine) if int(mask.sum()) == n_voxels else None


def tune_session(path: str | Path, tr_s: float | None = None, high_pass_hz: float = 0.01, out: str | Path | None = None,
                 max_components: int = MAX_COMPONENTS, runs: list[int] | None = None,
                 held_out: set[str] | frozenset[str] = frozenset(), features: Features | None = None) -> GLMTuning:
    """``rtdecode glm-tune``: tune on a recorded session folder's ``runs`` (default all), leaving
    ``held_out`` images out of every criterion; ``features``: image ids -> features, for the encoding
    criterion when training images do not repeat (:func:`tune`); saved into ``out`` when given. ``tr_s``:
    default the TR the session was recorded or imported at, else 1.5 s."""
    folder = session_folder(path)
    tr_s = session_tr(folder, tr_s)
    chosen = session_runs(folder, runs)
    data = [r for _, r in chosen]
    grid = session_grid(folder, chosen[0][0], data[0].data.shape[1]) if chosen else None
    tuning = tune(data, tr_s, high_pass_hz, max_components, source=str(path), held_out=frozenset(held_out), grid=grid,
                  features=features)
    tuning.runs = [run for run, _ in chosen]
    tuning.held_out = len(set(held_out))
    if out is not None:
        tuning.save(out)
    return tuning


def describe(tuning: GLMTuning) -> str:
    """One paragraph for the operator: what was chosen."""
    frac = np.bincount(tuning.hrf_index, minlength=len(tuning.library)) / max(tuning.n_voxels, 1)
    delays = tuning.library[:, 0]
    mean_delay = float(np.sum(frac * delays))
    glover = float(frac[GLOVER_INDEX])
    return (f"GLM tuning of {tuning.n_voxels} voxels: mean HRF delay {mean_delay:.2f} s "
            f"({glover:.0%} chose the Glover-like member {delays[GLOVER_INDEX]:g} s); noise pool "
            f"{len(tuning.pool)} voxels; {tuning.n_components} noise component(s)"
            + ("; " + "; ".join(tuning.notes) if tuning.notes else ""))


