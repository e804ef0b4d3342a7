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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rtdecode.events import Events
from rtdecode.glm.denoise import (
    MAX_COMPONENTS,
    baseline_columns,
    choose_count,
    noise_components,
    repeat_pairs,
    repeat_reliability,
)
from rtdecode.glm.hrf_library import GLOVER_INDEX, choose_members, library_kernel, library_params
from rtdecode.glm.incremental import GLMSettings, IncrementalGLM

FORMAT = 1
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
                "component_scores": self.component_scores.round(5).tolist()}

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        gain = np.zeros(self.n_voxels) if self.hrf_gain is None else self.hrf_gain
        np.savez(folder / "glm_tuning.npz", hrf_index=self.hrf_index.astype(np.int16), library=self.library,
                 pool=self.pool.astype(np.int64), reliability=self.reliability.astype(np.float32),
                 component_scores=self.component_scores, hrf_gain=gain.astype(np.float32))
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
            if fmt == FORMAT:
                with np.load(path, allow_pickle=False) as z:
                    t = cls(z["hrf_index"].astype(int), z["library"].astype(float), z["pool"].astype(int),
                            z["reliability"].astype(float), int(meta["n_components"]),
                            z["component_scores"].astype(float), str(meta.get("source", "")),
                            list(meta.get("notes", [])), z["hrf_gain"].astype(float))
        # np.load of a file that is not a zip raises a ValueError (it refuses the pickle fallback)
        except (OSError, KeyError, TypeError, ValueError, zipfile.BadZipFile) as exc:
            raise ValueError(f"{folder}: glm_tuning.npz/.json unreadable ({type(exc).__name__}: {exc})") from None
        if fmt != FORMAT:
            raise ValueError(f"{meta_path}: format {fmt!r}, this rtdecode reads {FORMAT}")
        n = t.n_voxels
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


def tune(runs: list[TuningRun], tr_s: float, high_pass_hz: float = 0.01, max_components: int = MAX_COMPONENTS,
         motion: bool = True, source: str = "", seed: int = 0) -> GLMTuning:
    """Choose each voxel's HRF, the noise pool and the number of components from calibration runs.

    Every choice is scored by how well single-trial betas (whole-run LSS, OLS) of the same image agree
    across its presentations, which lie in different runs: HRF members per voxel (shrunk towards the
    person's curve, :func:`choose_members`), the pool (voxels whose betas do not repeat, reliability at
    or below 0, and whose mean beta is within ``EVOKED_T`` standard errors of 0), the number of
    components (:func:`choose_count`). Without repeated images nothing
    can be scored: every voxel keeps Glover's neighbour and no components are chosen (said in notes).
    """
    if len(runs) < 2:
        raise ValueError(f"GLM tuning needs at least 2 calibration runs with events, got {len(runs)}")
    params = library_params()
    n_vox = runs[0].data.shape[1]
    images = [img for run in runs for img in run.images]
    pairs = repeat_pairs(images)
    notes: list[str] = []
    settings = GLMSettings(t_r=tr_s, high_pass=high_pass_hz, noise_model="ols", motion_confounds=motion)
    if len(pairs) < 10:
        notes.append(f"only {len(pairs)} pairs of repeated images: HRFs stay Glover's, no noise components")
        return GLMTuning(np.full(n_vox, GLOVER_INDEX), params, np.zeros(0, int), np.zeros(n_vox), 0,
                         np.zeros(1), source, notes, np.zeros(n_vox))
    rng = np.random.default_rng(seed)
    shown = sorted({images[i] for i in pairs[:, 0]})
    half = {img for img, h in zip(shown, rng.permutation(len(shown)) % 2, strict=True) if h}
    in_a = np.array([images[i] in half for i in pairs[:, 0]])
    rel: dict[str, list] = {"a": [], "b": [], "all": [], "evoked_t": []}
    for m in range(len(params)):
        kernel = library_kernel(m, tr_s, params)
        betas = np.concatenate([_run_betas(run, tr_s, settings, kernel) for run in runs])
        for key, sel in (("a", in_a), ("b", ~in_a), ("all", np.ones(len(pairs), bool))):
            rel[key].append(repeat_reliability(betas, pairs[sel]))
        rel["evoked_t"].append(betas.mean(0) / np.maximum(betas.std(0) / np.sqrt(len(betas)), 1e-12))
    rel = {k: np.stack(v) for k, v in rel.items()}  # (members, voxels)
    best, shrink, held = choose_members(rel["a"], rel["b"], rel["all"])
    notes.append(f"HRF choice shrunk {shrink:g} towards the person's curve (held-out reliability "
                 + ", ".join(f"{s:g}: {v:.4f}" for s, v in held.items()) + ")")
    reliability = rel["all"][best, np.arange(n_vox)]
    gain = reliability - rel["all"][GLOVER_INDEX]
    # No task response of either kind: betas that do not repeat, and no mean response to the images.
    pool = np.flatnonzero((reliability <= 0) & (np.abs(rel["evoked_t"][best, np.arange(n_vox)]) < EVOKED_T))
    if len(pool) < MIN_POOL:
        notes.append(f"only {len(pool)} voxels with betas that do not repeat; no noise components")
        return GLMTuning(best, params, pool, reliability, 0, np.zeros(1), source, notes, gain)
    others = np.setdiff1d(np.arange(n_vox), pool)
    scores = []
    for k in range(max_components + 1):
        betas = np.zeros((len(images), len(others)))
        row = 0
        for run in runs:
            comps = None
            if k:
                base = baseline_columns(len(run.rows), tr_s, high_pass_hz, run.rows)
                comps = np.zeros((len(run.rows), k))
                found = noise_components(run.data[:, pool], base, k)
                comps[run.rows, : found.shape[1]] = found
            # Glover's design for every voxel here: the count hardly depends on each voxel's member.
            sub = TuningRun(run.onsets, run.durations, run.data[:, others], run.motion, run.rows, run.images)
            part = _run_betas(sub, tr_s, settings, None, comps)
            betas[row: row + len(part)] = part
            row += len(part)
        scores.append(repeat_reliability(betas, pairs))
    k, mean = choose_count(np.stack(scores), np.clip(reliability[others], 0, None))
    notes.append(f"{k} noise component(s): reliability of the other voxels (weighted by their own) with "
                 f"0..{max_components}: " + ", ".join(f"{v:.4f}" for v in mean))
    return GLMTuning(best, params, pool, reliability, k, mean, source, notes, gain)


def session_runs(folder) -> list[tuple[int, TuningRun]]:
    """Every run of a session folder with stored volumes and an events table, as tuning input."""
    from rtdecode.glm.offline import MOTION, recorded_runs

    out = []
    for run, ev, rows, vectors in recorded_runs(folder):
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


def tune_session(path: str | Path, tr_s: float = 1.5, high_pass_hz: float = 0.01, out: str | Path | None = None,
                 max_components: int = MAX_COMPONENTS) -> GLMTuning:
    """``rtdecode glm-tune``: tune on a recorded session folder; saved into ``out`` when given."""
    from rtdecode.glm.offline import session_folder

    runs = [r for _, r in session_runs(session_folder(path))]
    tuning = tune(runs, tr_s, high_pass_hz, max_components, source=str(path))
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


