"""Betas in the session folder: append-only, one file set per run and version.

derivatives/rtdecode/func/<prefix>_desc-<version>_betas.f32    raw betas, float32 rows in estimate order
                         <prefix>_desc-<version>_zbetas.f32   what the decoder gets (z-scored, maybe averaged)
                         <prefix>_desc-<version>_betas.tsv    one row per beta: trial, image, timing, fit
                         <prefix>_desc-<version>_betas.json   n_voxels, dtype, GLM settings
                         <prefix>_desc-<version>_design/trial-NNN.npy   the design matrix fitted
The TSV row is written last: it is the commit point, and a torn tail is repaired on load.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np

from rtdecode.glm.incremental import GLMSettings, TrialEstimate
from rtdecode.session import SessionFolder, append_tsv, read_tsv, repair_tail

BETA_COLUMNS = ("trial", "image", "onset", "version", "n_frames", "n_used", "noise_model", "rho_median",
                "estimate_ms", "n_repeats", "t_ready", "t_done")


class BetaStore:
    def __init__(self, folder: SessionFolder, run: int, version: str) -> None:
        base = folder.derivatives / f"{folder.prefix(run)}_desc-{version}"
        self.version = version
        self.raw = Path(f"{base}_betas.f32")
        self.sent = Path(f"{base}_zbetas.f32")
        self.table = Path(f"{base}_betas.tsv")
        self.info = Path(f"{base}_betas.json")
        self.design_dir = Path(f"{base}_design")

    def append(self, est: TrialEstimate, sent: np.ndarray, settings: GLMSettings, row: dict) -> None:
        if not self.info.exists():
            self.info.write_text(json.dumps({"n_voxels": int(est.beta.size), "dtype": "<f4",
                                             "glm": dataclasses.asdict(settings)}, indent=2))
        self.design_dir.mkdir(exist_ok=True)
        np.save(self.design_dir / f"trial-{est.trial:03d}.npy", est.design)
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
