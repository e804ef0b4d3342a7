"""Reading a run back from its BIDS form, for a session copied without its live record."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np

from rtdecode.base.session import SessionFolder, read_tsv
from rtdecode.bids.names import derivative_func


def finalized_files(folder: SessionFolder, run: int) -> dict | None:
    """The derivative's preprocessed run, mask and confounds of ``run``, or None when not finalised."""
    deriv = derivative_func(folder)
    for space in ("boldref", "mask"):
        base = f"{folder.prefix(run)}_space-{space}"
        files = {"preproc": deriv / f"{base}_desc-preproc_bold.nii.gz",
                 "sidecar": deriv / f"{base}_desc-preproc_bold.json",
                 "mask": deriv / f"{base}_desc-brain_mask.nii.gz",
                 "confounds": deriv / f"{folder.prefix(run)}_desc-confounds_timeseries.tsv"}
        if all(p.exists() for p in files.values()):
            return files
    return None


def load_finalized(folder: SessionFolder, run: int) -> tuple[list[dict[str, str]], np.ndarray] | None:
    """(rows, vectors) as :meth:`RunStore.load` gives them (rotations in degrees, missing volumes as
    'missing' rows without a vector), from the BIDS derivative; None when the run was not finalised."""
    files = finalized_files(folder, run)
    if files is None:
        return None
    missing = set(json.loads(files["sidecar"].read_text()).get("MissingVolumes", []))
    about = files["confounds"].with_name(files["confounds"].name.replace(".tsv", ".json"))
    scale = json.loads(about.read_text()).get("dvars", {}).get("ScaleFactor", 1.0) if about.exists() else 1.0
    mask = np.asarray(nib.load(files["mask"]).dataobj) > 0
    series = np.asarray(nib.load(files["preproc"]).dataobj, np.float32)[mask].T  # (frames, voxels)
    rows, vectors = [], []
    for i, r in enumerate(read_tsv(files["confounds"])):
        if i in missing:
            rows.append({"volume": str(i), "status": "missing"})
            continue
        row = {"volume": str(i), "status": "ok"}
        for c in ("trans_x", "trans_y", "trans_z"):
            row[c] = r[c]
        for c in ("rot_x", "rot_y", "rot_z"):
            row[c] = repr(float(np.rad2deg(float(r[c]))))
        row["framewise_displacement"] = "0" if r["framewise_displacement"] == "n/a" else r["framewise_displacement"]
        row["dvars"] = "0" if r["dvars"] == "n/a" else repr(float(r["dvars"]) / scale)  # the live record's scale
        rows.append(row)
        vectors.append(series[i])
    return rows, np.asarray(vectors, np.float32).reshape(len(vectors), int(mask.sum()))


def load_finalized_mask(folder: SessionFolder, run: int):
    files = finalized_files(folder, run)
    return None if files is None else nib.load(files["mask"])
