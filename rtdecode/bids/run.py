"""One run of the live record as BIDS: the 4-D run, its sidecar and events; the derivative's preprocessed
run, mask, fMRIPrep-style confounds and single-trial betas as images.

Every file is written to a temporary folder and renamed into place, so a crash leaves either the whole
file or none. Finalising again rewrites the same files; the live record is read only, never changed.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nibabel as nib
import numpy as np

from rtdecode.bids.dataset import write_atomic
from rtdecode.bids.names import bold_path, derivative_func
from rtdecode.session import SessionFolder, read_tsv

# fMRIPrep's confounds columns, in its units: mm and radians; the first row's FD and DVARS are n/a.
CONFOUNDS = ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z", "framewise_displacement", "dvars", "std_dvars")
ACQUISITION_SECONDS = {"RepetitionTime", "EchoTime"}  # DICOM gives milliseconds; BIDS wants seconds
ACQUISITION_KEEP = ("EchoTime", "FlipAngle", "Manufacturer", "ManufacturerModelName", "SoftwareVersions",
                    "MagneticFieldStrength")


class FinalizeError(ValueError):
    """A run that cannot be finalised (nothing stored, no timing), named with its reason."""


def _fill(frames: np.ndarray, missing: list[int], ok: list[int]) -> None:
    """Missing frames (time on the first axis) become the mean of the nearest received frames around them."""
    ok_arr = np.asarray(ok)
    for i in missing:
        before, after = ok_arr[ok_arr < i], ok_arr[ok_arr > i]
        near = [frames[j] for j in (before[-1:].tolist() + after[:1].tolist())]
        frames[i] = np.mean(near, axis=0) if near else 0


def _integer_valued(frames: np.ndarray) -> bool:
    lo, hi = float(frames.min()), float(frames.max())
    return -32768 <= lo and hi <= 32767 and all(np.array_equal(f, np.rint(f)) for f in frames)


def _save_nifti(data: np.ndarray, affine: np.ndarray, path: Path, tmp: Path, tr_s: float | None = None) -> Path:
    img = nib.Nifti1Image(data, affine)
    if tr_s is not None:
        img.header.set_xyzt_units("mm", "sec")
        zooms = img.header.get_zooms()
        img.header.set_zooms((*zooms[:3], tr_s))
    staged = tmp / path.name
    nib.save(img, staged)
    return staged


def _tr(folder: SessionFolder, run: int, acquisition: dict) -> float:
    if acquisition.get("tr_s"):
        return float(acquisition["tr_s"])
    for version in ("endofrun", "realtime"):
        info = folder.derivatives / f"{folder.prefix(run)}_desc-{version}_betas.json"
        if info.exists():
            return float(json.loads(info.read_text())["glm"]["t_r"])
    tr_ms = acquisition.get("dicom", {}).get("RepetitionTime")
    if tr_ms:
        return float(tr_ms) / 1000.0
    raise FinalizeError(f"run {run}: no repetition time recorded (no {folder.prefix(run)}_desc-acquisition.json, "
                        "no betas); pass --tr")


def _std_dvars(vectors: np.ndarray) -> np.ndarray:
    """DVARS standardised by its expectation under temporal independence with AR(1) (Nichols 2013, as
    fMRIPrep's nipype ComputeDVARS): robust per-voxel SD and lag-1 autocorrelation of the masked series."""
    if len(vectors) < 3:
        return np.full(max(len(vectors) - 1, 0), np.nan)
    x = vectors.astype(np.float64)
    sd = (np.percentile(x, 75, axis=0) - np.percentile(x, 25, axis=0)) / 1.349
    centred = x - x.mean(axis=0)
    denom = (centred * centred).sum(axis=0)
    ar1 = np.divide((centred[1:] * centred[:-1]).sum(axis=0), denom, out=np.zeros(x.shape[1]), where=denom > 0)
    expected = np.mean(sd * np.sqrt(np.maximum(2 * (1 - ar1), 0)))
    dvars = np.sqrt(np.mean(np.diff(x, axis=0) ** 2, axis=1))
    return dvars / expected if expected > 0 else np.full(len(dvars), np.nan)


def _confounds(rows: list[dict], vectors: np.ndarray, n: int) -> list[dict]:
    ok = {int(r["volume"]): r for r in rows if r["status"] == "ok"}
    order = sorted(ok)
    std = dict(zip(order[1:], _std_dvars(vectors), strict=False))
    out = []
    for i in range(n):
        r = ok.get(i)
        if r is None:
            out.append(dict.fromkeys(CONFOUNDS, "n/a"))
            continue
        row = {c: float(r[c]) for c in ("trans_x", "trans_y", "trans_z")}
        row.update({c: float(np.deg2rad(float(r[c]))) for c in ("rot_x", "rot_y", "rot_z")})
        first = i == order[0]
        row["framewise_displacement"] = "n/a" if first else float(r["framewise_displacement"])
        row["dvars"] = "n/a" if first else float(r["dvars"])
        row["std_dvars"] = "n/a" if first or not np.isfinite(std.get(i, np.nan)) else float(std[i])
        out.append(row)
    return out


def _tsv(path: Path, columns: tuple[str, ...] | list[str], rows: list[dict]) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(columns), delimiter="\t", lineterminator="\n", extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({c: ("n/a" if row.get(c) in (None, "") else
                                 f"{row[c]:.6g}" if isinstance(row[c], float) else row[c]) for c in columns})


def finalize_run(folder: SessionFolder, run: int, tr_s: float | None = None,
                 crash_point: Callable[[str], None] = lambda name: None,
                 stimuli: Callable[[str], str | None] | None = None) -> list[Path]:
    """Write run ``run`` of ``folder`` as BIDS (raw and derivative); returns the files written.

    ``stimuli(image_id)`` puts the image into the dataset's ``stimuli/`` and returns its name there (the
    events' ``stim_file``), or None when the image is not at hand (``n/a``)."""
    store = folder.run_store(run)
    rows, vectors = store.load()
    ok = [int(r["volume"]) for r in rows if r["status"] == "ok"]
    if not ok:
        raise FinalizeError(f"run {run}: no volume stored in {store.confounds}")
    n = max(int(r["volume"]) for r in rows) + 1
    acquisition = json.loads(store.acquisition.read_text()) if store.acquisition.exists() else {}
    tr = float(tr_s) if tr_s else _tr(folder, run, acquisition)
    ref = store.load_reference()
    if ref is None:
        raise FinalizeError(f"run {run}: no boldref and mask in {folder.derivatives}")
    boldref, mask_img = ref
    mask = np.asarray(mask_img.dataobj) > 0
    raw_files = {i: store.raw_dir / f"vol-{i:06d}.nii" for i in ok}
    absent = [i for i, p in raw_files.items() if not p.exists()]
    received = [i for i in ok if i not in absent]
    missing = sorted(set(range(n)) - set(received))
    if not received:
        raise FinalizeError(f"run {run}: the volumes as received are not in {store.raw_dir}")

    tmp = folder.root / ".finalize-tmp" / f"{folder.prefix(run)}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    func, deriv = folder.path / "func", derivative_func(folder)
    deriv.mkdir(parents=True, exist_ok=True)
    staged: list[tuple[Path, Path]] = []  # (temporary, final)

    # -- raw: the volumes as received, missing ones filled and listed
    first = nib.load(raw_files[received[0]])
    # Frames held transposed, (t, z, y, x) in C order, so the 4-D image (x, y, z, t) is already in NIfTI's
    # Fortran order and is written without a reordering copy.
    frames = np.empty((n, *first.shape[::-1]), np.float32)
    for i in received:
        frames[i] = np.asarray(nib.load(raw_files[i]).dataobj, np.float32).T
    _fill(frames, missing, received)
    bold = bold_path(folder, run)
    if _integer_valued(frames):  # DICOM pixels are integers: int16 holds them exactly, in half the bytes
        frames = frames.astype(np.int16)
    saves = ThreadPoolExecutor(max_workers=2)  # zlib lets go of the GIL: the big files compress side by side
    jobs = [saves.submit(_save_nifti, frames.T, first.affine, bold, tmp, tr)]
    staged.append((tmp / bold.name, bold))
    crash_point("bold")
    sidecar = {"RepetitionTime": tr, "TaskName": folder.task}
    dicom = acquisition.get("dicom", {})
    for key in ACQUISITION_KEEP:
        if key in dicom:
            sidecar[key] = float(dicom[key]) / 1000.0 if key in ACQUISITION_SECONDS else dicom[key]
    sidecar["MissingVolumes"] = missing  # 0-based; filled with the mean of the nearest received volumes
    sidecar["MissingVolumesFilledWith"] = "mean of the nearest received volumes before and after"
    staged.append((_stage_text(tmp, bold.name.replace(".nii.gz", ".json"), json.dumps(sidecar, indent=1)),
                   bold.with_name(bold.name.replace(".nii.gz", ".json"))))
    events_file = func / f"{folder.prefix(run)}_events.tsv"
    if events_file.exists():
        events = read_tsv(events_file)
        extra = [c for c in (events[0] if events else {}) if c not in ("onset", "duration", "trial_type", "stim_file")]
        for e in events:
            e.setdefault("trial_type", "stimulus")
            e["stim_file"] = (stimuli(e["image"]) if stimuli and e.get("image") else None) or "n/a"
        path = tmp / events_file.name
        _tsv(path, ["onset", "duration", "trial_type", "stim_file", *extra], events)
        staged.append((path, events_file))

    # -- derivative: motion-corrected run in the mask, the mask, confounds, betas
    space = "boldref" if (mask_img.shape == boldref.shape[:3] and np.allclose(mask_img.affine, boldref.affine)) else "mask"
    base = f"{folder.prefix(run)}_space-{space}"
    series = np.zeros((n, int(mask.sum())), np.float32)
    series[ok] = vectors  # every processed volume has its vector, even one whose raw file went astray
    not_processed = sorted(set(range(n)) - set(ok))
    _fill(series, not_processed, ok)
    volume = np.zeros((n, *mask.shape[::-1]), np.float32)  # transposed, as the raw frames
    volume.T[mask] = series.T
    preproc = deriv / f"{base}_desc-preproc_bold.nii.gz"
    jobs.append(saves.submit(_save_nifti, volume.T, mask_img.affine, preproc, tmp, tr))
    staged.append((tmp / preproc.name, preproc))
    crash_point("preproc")
    staged.append((_stage_text(tmp, f"{base}_desc-preproc_bold.json", json.dumps({
        "RepetitionTime": tr, "TaskName": folder.task, "SkullStripped": True, "MissingVolumes": not_processed,
        "Description": "motion-corrected at the scanner (rigid, to the run's reference) and sampled in the brain "
                       "mask; voxels outside the mask are 0"}, indent=1)), preproc.with_suffix("").with_suffix(".json")))
    mask_out = deriv / f"{base}_desc-brain_mask.nii.gz"
    staged.append((_save_nifti(mask.astype(np.uint8), mask_img.affine, mask_out, tmp), mask_out))
    conf = deriv / f"{folder.prefix(run)}_desc-confounds_timeseries.tsv"
    _tsv(tmp / conf.name, CONFOUNDS, _confounds(rows, vectors, n))
    staged.append((tmp / conf.name, conf))
    staged.append((_stage_text(tmp, conf.name.replace(".tsv", ".json"), json.dumps({
        **{c: {"Units": "mm"} for c in ("trans_x", "trans_y", "trans_z")},
        **{c: {"Units": "rad"} for c in ("rot_x", "rot_y", "rot_z")},
        "framewise_displacement": {"Units": "mm", "Description": "Power et al. 2012, 50 mm head radius"},
        "dvars": {"Description": "RMS over the mask of the volume-to-volume difference"},
        "std_dvars": {"Description": "DVARS over its expectation under AR(1) (Nichols 2013)"}}, indent=1)),
        conf.with_name(conf.name.replace(".tsv", ".json"))))
    for betas_tsv in sorted(folder.derivatives.glob(f"{folder.prefix(run)}_desc-*_betas.tsv")):
        staged += _betas(folder, run, betas_tsv, mask, mask_img.affine, base, deriv, tmp)
    saves.shutdown(wait=True)
    for job in jobs:
        job.result()  # a failed write raises here, before anything is renamed
    crash_point("betas")
    # Every file is complete before the first rename; the raw run goes last, so a run whose _bold.nii.gz
    # exists is finalised whole (a crash between renames leaves it to the next finalise).
    staged.sort(key=lambda pair: pair[1] == bold)
    for src, dst in staged:
        os.replace(src, dst)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.parent.rmdir()  # .finalize-tmp, when no other run is being finalised
    except OSError:
        pass
    return [dst for _, dst in staged]


def _stage_text(tmp: Path, name: str, text: str) -> Path:
    path = tmp / name
    write_atomic(path, text + "\n")
    return path


def _betas(folder: SessionFolder, run: int, table: Path, mask: np.ndarray, affine: np.ndarray, base: str,
           deriv: Path, tmp: Path) -> list[tuple[Path, Path]]:
    from rtdecode.glm.store import BetaStore

    version = table.name.split("_desc-")[1].removesuffix("_betas.tsv")
    rows, raw, _sent = BetaStore(folder, run, version).load()
    if not rows or raw.shape[1] != int(mask.sum()):
        return []
    volume = np.zeros((*mask.shape, len(rows)), np.float32)
    volume[mask] = raw.T
    image = deriv / f"{base}_desc-{version}_betas.nii.gz"
    listing = tmp / f"{base}_desc-{version}_betas.tsv"
    _tsv(listing, ("volume", "trial", "image", "version", "onset"),
         [{"volume": k, **r} for k, r in enumerate(rows)])
    return [(_save_nifti(volume, affine, image, tmp), image), (listing, deriv / listing.name)]
