"""Offline mode: the same GLM over every run of a recorded session folder (for calibration)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from rtdecode.base.recorded import MOTION, recorded_runs, recorded_tr, session_folder, session_tr
from rtdecode.base.session import SessionFolder
from rtdecode.glm.incremental import GLMSettings
from rtdecode.glm.tuning import GLMTuning
from rtdecode.glm.voxelwise import make_glm


@dataclass
class SessionBetas:
    betas: np.ndarray  # (n_trials, n_voxels) float32, raw units
    images: list[str]
    runs: np.ndarray  # run number of each trial
    trials: np.ndarray  # trial index within its run


def offline_betas(folder: SessionFolder, settings: GLMSettings, version: str = "endofrun",
                  tuning: GLMTuning | None = None) -> SessionBetas:
    """Betas of every run with an events table: 'endofrun' (whole run) or 'realtime' (replayed at
    ``settings.delay_s``, exactly as the live GLM would have made them). ``tuning``: the calibration
    hour's GLM tuning, for ``settings.hrf = "library"`` or noise components."""
    if version not in ("endofrun", "realtime"):
        raise ValueError(f"version must be 'endofrun' or 'realtime', got {version!r}")
    settings = replace(settings, refine=False, t_r=recorded_tr(folder) or settings.t_r)  # calibrate: the data's TR
    betas, images, runs, trials = [], [], [], []
    for run, events, rows, vectors in recorded_runs(folder):
        glm = make_glm(events, vectors.shape[1], settings, len(rows), tuning)
        k = 0
        estimates = []
        for r in rows:
            if r["status"] == "ok":
                glm.add(int(r["volume"]), vectors[k], [float(r[c]) for c in MOTION])
                k += 1
                if version == "realtime":
                    estimates += [glm.estimate(j) for j in glm.ready()]
            else:
                glm.add_missing(int(r["volume"]))
        if version == "endofrun":
            estimates = glm.end_of_run()
        for est in sorted(estimates, key=lambda e: e.trial):
            betas.append(est.beta)
            images.append(est.image)
            runs.append(run)
            trials.append(est.trial)
    if not betas:
        raise ValueError(f"{folder.path}: no run has both stored volumes and an events table")
    return SessionBetas(np.stack(betas), images, np.asarray(runs), np.asarray(trials))


TRAIN_ON = ("endofrun", "realtime", "both")


def training_betas(folder: SessionFolder, settings: GLMSettings, train_on: str = "endofrun",
                   tuning: GLMTuning | None = None) -> SessionBetas:
    """What calibration trains on: whole-run betas, the real-time betas at ``settings.delay_s`` (what the
    live path will send), or both (each trial twice, one of each)."""
    if train_on not in TRAIN_ON:
        raise ValueError(f"train_on must be one of {TRAIN_ON}, got {train_on!r}")
    if train_on != "both":
        return offline_betas(folder, settings, train_on, tuning)
    a, b = offline_betas(folder, settings, "endofrun", tuning), offline_betas(folder, settings, "realtime", tuning)
    return SessionBetas(np.concatenate([a.betas, b.betas]), a.images + b.images, np.r_[a.runs, b.runs],
                        np.r_[a.trials, b.trials])


def write_offline_betas(session: Path, out: Path, noise_model: str = "ar1", version: str = "endofrun",
                        tr_s: float | None = None, delay_s: float = 7.5, tuning: Path | None = None, hrf: str | None = None,
                        denoise: str = "auto") -> Path:
    """``rtdecode glm``: estimate and write betas.npy + trials.tsv (the simulator's trial-level layout) and
    betas.json naming the model. ``tr_s``: default the TR the session was recorded at, else 1.5 s; one that
    contradicts the recorded TR is refused. ``tuning``: a folder with glm_tuning.npz; with it the HRFs are the
    tuning's (``hrf`` "library", the default) and ``denoise`` "auto" subtracts the count chosen for the
    version's tier (``delay_s`` for realtime, end of run for endofrun)."""
    import json

    from rtdecode.base.config import check_denoise, denoise_count
    from rtdecode.base.errors import ConfigError
    from rtdecode.base.events import EventsError
    from rtdecode.glm.store import betas_model_description

    try:
        folder = session_folder(session)
        tr_s = session_tr(folder, tr_s)
        tuned = GLMTuning.load(tuning) if tuning is not None else None
        if tuned is None and (hrf == "library" or denoise not in ("auto", "off")):
            raise ValueError("--hrf library and --denoise N need --tuning MODEL (a folder with glm_tuning.npz)")
        count = 0 if tuned is None else denoise_count(check_denoise(denoise), tuned.components_for(
            delay_s if version == "realtime" else None))
        settings = GLMSettings(t_r=tr_s, noise_model=noise_model, delay_s=delay_s,
                               hrf=hrf or ("library" if tuned is not None else "glover"), denoise=count)
        result = offline_betas(folder, settings, version, tuned)
    except (ValueError, EventsError) as exc:
        raise ConfigError(f"rtdecode glm: {exc}") from None
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "betas.npy", result.betas)
    with open(out / "trials.tsv", "w") as fh:
        fh.write("trial\trun\timage\n")
        for i, (run, image) in enumerate(zip(result.runs, result.images, strict=True)):
            fh.write(f"{i}\t{run}\t{image}\n")
    (out / "betas.json").write_text(json.dumps({
        "session": str(session), "version": version, "delay_s": delay_s if version == "realtime" else None,
        "n_voxels": int(result.betas.shape[1]), "model": betas_model_description(settings, tuned, tuning)}, indent=2))
    print(f"{len(result.images)} betas from {len(set(result.runs.tolist()))} run(s) of {session} -> {out}")
    return out
