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

from rtdecode.base.session import SessionFolder, derivative_func, read_tsv
from rtdecode.bids.confounds import COLUMNS, confound_rows, description, dvars_scale
from rtdecode.bids.dataset import write_atomic
from rtdecode.bids.lock import DatasetLock
from rtdecode.bids.names import bold_path
from rtdecode.bids.sidecars import betas_model, raw_sidecar, spatial_reference


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
    else:
        img.header.set_xyzt_units("mm")
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
    events' ``stim_file``), or None when the image is not at hand (``n/a``). One finaliser at a time
    writes into a dataset root (:class:`~rtdecode.bids.lock.DatasetLock`)."""
    with DatasetLock(folder.root):
        return _finalize(folder, run, tr_s, crash_point, stimuli)


def _finalize(folder: SessionFolder, run: int, tr_s: float | None, crash_point: Callable[[str], None],
              stimuli: Callable[[str], str | None] | None) -> list[Path]:
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
    raw_files = {i: store.raw_dir / f"vol-{i:06d}.nii" for i in ok if (store.raw_dir / f"vol-{i:06d}.nii").exists()}
    if not raw_files:
        raise FinalizeError(f"run {run}: the volumes as received are not in {store.raw_dir}")

    tmp = folder.root / ".finalize-tmp" / f"{folder.prefix(run)}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    bold = bold_path(folder, run)
    saves = ThreadPoolExecutor(max_workers=2)  # zlib lets go of the GIL: the big files compress side by side
    try:
        # -- raw: the volumes as received, missing ones filled and listed
        frames, affine, missing = _raw_frames(raw_files, n)
        jobs = [saves.submit(_save_nifti, frames.T, affine, bold, tmp, tr)]
        staged: list[tuple[Path, Path]] = [(tmp / bold.name, bold)]  # (temporary, final)
        crash_point("bold")
        sidecar = raw_sidecar(folder, run, tr, acquisition, missing, n)
        staged.append((_stage_text(tmp, bold.name.replace(".nii.gz", ".json"), json.dumps(sidecar, indent=1)),
                       bold.with_name(bold.name.replace(".nii.gz", ".json"))))
        staged += _stage_events(folder, run, tmp, stimuli)
        # -- derivative: motion-corrected run in the mask, its reference and mask, confounds, betas
        derivative = _Derivative(folder, run, tmp, ref, tr)
        staged += derivative.stage(rows, vectors, ok, n, saves, jobs, crash_point)
    finally:
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


def _raw_frames(raw_files: dict[int, Path], n: int) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """The run as (t, z, y, x) frames, missing ones filled; int16 when the received pixels are integers."""
    received = sorted(raw_files)
    missing = sorted(set(range(n)) - set(received))
    first = nib.load(raw_files[received[0]])
    # Frames held transposed, (t, z, y, x) in C order, so the 4-D image (x, y, z, t) is already in NIfTI's
    # Fortran order and is written without a reordering copy.
    frames = np.empty((n, *first.shape[::-1]), np.float32)
    for i in received:
        frames[i] = np.asarray(nib.load(raw_files[i]).dataobj, np.float32).T
    integers = _integer_valued(frames[received])
    _fill(frames, missing, received)
    if integers:  # DICOM pixels are integers: int16 holds them in half the bytes; a filled frame is rounded
        for i in missing:
            np.rint(frames[i], out=frames[i])
        frames = frames.astype(np.int16)
    return frames, first.affine, missing


def _stage_events(folder: SessionFolder, run: int, tmp: Path,
                  stimuli: Callable[[str], str | None] | None) -> list[tuple[Path, Path]]:
    events_file = folder.path / "func" / f"{folder.prefix(run)}_events.tsv"
    if not events_file.exists():
        return []
    events = read_tsv(events_file)
    extra = [c for c in (events[0] if events else {}) if c not in ("onset", "duration", "trial_type", "stim_file")]
    for e in events:
        e.setdefault("trial_type", "stimulus")
        e["stim_file"] = (stimuli(e["image"]) if stimuli and e.get("image") else None) or "n/a"
    path = tmp / events_file.name
    _tsv(path, ["onset", "duration", "trial_type", "stim_file", *extra], events)
    return [(path, events_file)]


class _Derivative:
    """The derivative's files of one run, staged in ``tmp``: all on the session mask's grid."""

    def __init__(self, folder: SessionFolder, run: int, tmp: Path, ref: tuple, tr: float) -> None:
        self.folder, self.run, self.tmp, self.tr = folder, run, tmp, tr
        boldref, self.mask_img = ref
        self.mask = np.asarray(self.mask_img.dataobj) > 0
        self.dir = derivative_func(folder)
        self.dir.mkdir(parents=True, exist_ok=True)
        same = self.mask_img.shape == boldref.shape[:3] and np.allclose(self.mask_img.affine, boldref.affine)
        self.base = f"{folder.prefix(run)}_space-{'boldref' if same else 'mask'}"
        self.reference = _reference_image(folder, boldref, self.mask_img)
        dataset = self.dir.parents[2]  # ROOT/derivatives/rtdecode
        self.ref_path = self.dir / f"{self.base}_boldref.nii.gz"
        self.mask_path = self.dir / f"{self.base}_desc-brain_mask.nii.gz"
        self.space = spatial_reference(self.ref_path if self.reference is not None else self.mask_path, dataset)

    def stage(self, rows: list[dict], vectors: np.ndarray, ok: list[int], n: int, saves: ThreadPoolExecutor,
              jobs: list, crash_point: Callable[[str], None]) -> list[tuple[Path, Path]]:
        tmp, mask, affine = self.tmp, self.mask, self.mask_img.affine
        staged = []
        series = np.zeros((n, int(mask.sum())), np.float32)
        series[ok] = vectors  # every processed volume has its vector, even one whose raw file went astray
        not_processed = sorted(set(range(n)) - set(ok))
        _fill(series, not_processed, ok)
        volume = np.zeros((n, *mask.shape[::-1]), np.float32)  # transposed, as the raw frames
        volume.T[mask] = series.T
        preproc = self.dir / f"{self.base}_desc-preproc_bold.nii.gz"
        jobs.append(saves.submit(_save_nifti, volume.T, affine, preproc, tmp, self.tr))
        staged.append((tmp / preproc.name, preproc))
        crash_point("preproc")
        staged.append(self._json(f"{self.base}_desc-preproc_bold.json", {
            "RepetitionTime": self.tr, "TaskName": self.folder.task, "SkullStripped": True,
            "SpatialReference": self.space, "MissingVolumes": not_processed,
            "Description": "motion-corrected at the scanner (rigid, to the session reference) and sampled in the "
                           "brain mask; voxels outside the mask are 0; a missing volume is the mean of its "
                           "neighbours (and flagged in the confounds' motion_outlier columns)"}))
        staged.append((_save_nifti(mask.astype(np.uint8), affine, self.mask_path, tmp), self.mask_path))
        staged.append(self._json(self.mask_path.name.replace(".nii.gz", ".json"), {
            "Type": "Brain", "SpatialReference": self.space,
            "Description": "the session's brain mask, as this run's vectors and betas were sampled in it"}))
        if self.reference is not None:
            data = np.asarray(self.reference.dataobj, np.float32)
            staged.append((_save_nifti(data, self.reference.affine, self.ref_path, tmp), self.ref_path))
        conf = self.dir / f"{self.folder.prefix(self.run)}_desc-confounds_timeseries.tsv"
        table, missing = confound_rows(rows, vectors, n)
        _tsv(tmp / conf.name, [*COLUMNS, *(c for c in (table[0] if table else {}) if c not in COLUMNS)], table)
        staged.append((tmp / conf.name, conf))
        staged.append(self._json(conf.name.replace(".tsv", ".json"), description(missing, dvars_scale(vectors))))
        for betas_tsv in sorted(self.folder.derivatives.glob(f"{self.folder.prefix(self.run)}_desc-*_betas.tsv")):
            staged += self._betas(betas_tsv)
        return staged

    def _json(self, name: str, content: dict) -> tuple[Path, Path]:
        return _stage_text(self.tmp, name, json.dumps(content, indent=1)), self.dir / name

    def _betas(self, table: Path) -> list[tuple[Path, Path]]:
        from rtdecode.glm.store import BetaStore

        version = table.name.split("_desc-")[1].removesuffix("_betas.tsv")
        rows, raw, _sent = BetaStore(self.folder, self.run, version).load()
        if not rows or raw.shape[1] != int(self.mask.sum()):
            return []
        volume = np.zeros((*self.mask.shape, len(rows)), np.float32)
        volume[self.mask] = raw.T
        name = f"{self.base}_desc-{version}_betas"
        image = self.dir / f"{name}.nii.gz"
        listing = self.tmp / f"{name}.tsv"
        _tsv(listing, ("volume", "trial", "image", "version", "onset"), [{"volume": k, **r} for k, r in enumerate(rows)])
        sidecar = self._json(f"{name}.json", {
            "Description": "single-trial betas, one volume per trial (rows of the .tsv beside it), raw units",
            "SpatialReference": self.space, "Model": betas_model(self.folder, self.run, version)})
        return [(_save_nifti(volume, self.mask_img.affine, image, self.tmp), image), (listing, self.dir / listing.name),
                sidecar]


def _reference_image(folder: SessionFolder, boldref: nib.Nifti1Image, mask_img: nib.Nifti1Image):
    """The image the derivative's voxels are aligned to: the session reference every run is registered to
    (else the run's own reference), when it is on the mask's grid; None otherwise."""
    session_ref = folder.derivatives / f"{folder.prefix(0).rsplit('_run-', 1)[0]}_boldref.nii"
    candidates = [nib.load(session_ref)] if session_ref.exists() else []
    for img in [*candidates, boldref]:
        if img.shape[:3] == mask_img.shape and np.allclose(img.affine, mask_img.affine, atol=1e-4):
            return img
    return None


def _stage_text(tmp: Path, name: str, text: str) -> Path:
    path = tmp / name
    write_atomic(path, text + "\n")
    return path
