"""Betas in the session folder: append-only, one file set per run and version.

derivatives/rtdecode/func/<prefix>_desc-<version>_betas.f32    raw betas, float32 rows in estimate order
                         <prefix>_desc-<version>_zbetas.f32   what the decoder gets (z-scored, maybe averaged)
                         <prefix>_desc-<version>_betas.tsv    one row per beta: trial, image, timing, fit
                         <prefix>_desc-<version>_betas.json   n_voxels, dtype, GLM settings and ``model``
                                                              (:func:`betas_model_description`)
                         <prefix>_desc-<version>_design/trial-NNN.npy   the design matrix fitted
                                   (refinements: trial-NNN_rtX.X.npy, one per version)
The TSV row is written last: it is the commit point, and a torn tail is repaired on load.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np

from rtdecode.base.session import SessionFolder, append_tsv, read_tsv, repair_tail
from rtdecode.glm.incremental import GLMSettings, TrialEstimate

BETA_COLUMNS = ("trial", "image", "onset", "version", "n_frames", "n_used", "noise_model", "rho_median",
                "estimate_ms", "n_repeats", "t_ready", "t_done")


def betas_model_description(settings: GLMSettings, tuning=None, tuning_path: str | Path | None = None) -> dict:
    """What model made a set of betas, for a sidecar: HRF, noise model, noise components and the tuning.

    ``tuning``: the :class:`rtdecode.glm.tuning.GLMTuning` used (None: none), ``tuning_path`` its folder.
    Plain data (JSON-ready); the BIDS betas image's sidecar carries the same dictionary.
    """
    uses_tuning = tuning is not None and (settings.hrf == "library" or settings.denoise > 0)
    if settings.hrf == "library" and tuning is not None:
        delays = tuning.library[np.unique(tuning.hrf_index), 0]
        hrf = {"kind": "library", "description": "one double gamma per voxel, chosen on the calibration hour",
               "members_used": int(len(delays)), "delay_range_s": [float(delays.min()), float(delays.max())]}
    else:
        hrf = {"kind": "glover", "description": "the canonical Glover double gamma in every voxel"}
    noise = {"mode": "none", "count": 0}
    if settings.denoise > 0:
        noise = {"mode": settings.denoise_mode, "count": int(settings.denoise),
                 "description": "the calibration hour's components subtracted from every volume"
                 if settings.denoise_mode == "subtract" else "the current run's components as confounds"}
    return {"hrf": hrf, "noise_model": settings.noise_model, "drift_model": settings.drift_model,
            "high_pass_hz": settings.high_pass, "motion_confounds": settings.motion_confounds,
            "noise_components": noise, "design": "LSS: the trial, all other trials, confounds, drift, constant",
            "tuning": None if not uses_tuning else {
                "folder": None if tuning_path is None else str(tuning_path), "source": tuning.source,
                "runs": list(tuning.runs), "held_out_images": int(tuning.held_out), "criterion": tuning.criterion}}


class BetaStore:
    def __init__(self, folder: SessionFolder, run: int, version: str, model: dict | None = None) -> None:
        base = folder.derivatives / f"{folder.prefix(run)}_desc-{version}"
        self.version = version
        self.model = model
        self.raw = Path(f"{base}_betas.f32")
        self.sent = Path(f"{base}_zbetas.f32")
        self.table = Path(f"{base}_betas.tsv")
        self.info = Path(f"{base}_betas.json")
        self.design_dir = Path(f"{base}_design")

    def append(self, est: TrialEstimate, sent: np.ndarray, settings: GLMSettings, row: dict) -> None:
        if not self.info.exists():
            model = self.model if self.model is not None else betas_model_description(settings)
            self.info.write_text(json.dumps({"n_voxels": int(est.beta.size), "dtype": "<f4",
                                             "glm": dataclasses.asdict(settings), "model": model}, indent=2))
        self.design_dir.mkdir(exist_ok=True)
        # A refined trial has one design per version; a realtime or endofrun trial has one.
        suffix = "" if self.version in ("realtime", "endofrun") else f"_{est.version}"
        np.save(self.design_dir / f"trial-{est.trial:03d}{suffix}.npy", est.design)
        for path, vec in ((self.raw, est.beta), (self.sent, sent)):
            with open(path, "ab") as fh:
                fh.write(np.ascontiguousarray(vec, dtype="<f4").tobytes())
        append_tsv(self.table, BETA_COLUMNS, {
            "trial": est.trial, "image": est.image, "onset": est.onset, "version": est.version,
            "n_frames": est.n_frames, "n_used": est.n_used, "noise_model": est.noise_model,
            "rho_median": est.rho_median, "estimate_ms": est.estimate_ms, **row})

    def load(self) -> tuple[list[dict[str, str]], np.ndarray, np.ndarray]:
        """(rows, raw betas, sent betas); vectors written without their row are dropped."""
        repair_tail(self.table)
        rows = read_tsv(self.table)
        if not self.info.exists():
            return rows, np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32)
        n_vox = json.loads(self.info.read_text())["n_voxels"]
        out = []
        for path in (self.raw, self.sent):
            if path.exists() and path.stat().st_size != len(rows) * 4 * n_vox:
                with open(path, "r+b") as fh:
                    fh.truncate(len(rows) * 4 * n_vox)
                    os.fsync(fh.fileno())
            out.append(np.fromfile(path, "<f4").reshape(-1, n_vox) if path.exists() else np.zeros((0, n_vox), np.float32))
        return rows, out[0], out[1]
