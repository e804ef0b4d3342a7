"""``rtdecode session import``: recorded runs from elsewhere written into a session folder as the scanner
side leaves a live run, so ``rtdecode glm``, ``glm-tune`` and ``calibrate`` read them the same way.

The runs are taken as already preprocessed: each volume's voxels inside the session's mask become the
run's masked vectors unchanged, and the confounds table's motion becomes the live record's motion
columns (the GLM's motion regressors). Nothing is motion-corrected or resampled here.

Everything is read and checked before the first byte is written (:func:`plan_import`). Importing again
resumes: ``imported.tsv`` keeps each run's sha256 (run, events, confounds), written before the run's
files; a run counts as imported once its ``runs.tsv`` row, written last, is there. A run imported before
is skipped and named; a run an interrupted import left half-written is written again under its number.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from rtdecode.base.events import write_events
from rtdecode.base.recorded import recorded_tr
from rtdecode.base.session import SessionFolder, append_tsv, read_tsv
from rtdecode.bids.inputs import MOTION, RunInput, SessionImportError, check_same_grid, read_mask
from rtdecode.ingest.reader import Volume
from rtdecode.preprocess.pipeline import Mask, intensity_mask
from rtdecode.preprocess.qa import RunningQA, framewise_displacement
from rtdecode.preprocess.space import SpaceFiles, VoxelSpace

LEDGER = "imported.tsv"
LEDGER_COLUMNS = ("time", "run", "bold", "bold_sha256", "events_sha256", "confounds_sha256", "volumes", "tr_s")
SERIES = 0  # an imported run came from no scanner series
MASK_THRESHOLD = 0.3  # as preprocess.mask_threshold's default


@dataclass
class ImportPlan:
    """What an import will do: each run's number (None: imported before, as ``skipped`` says) and the mask."""

    runs: list[RunInput]
    numbers: list[int | None]
    digests: list[dict[str, str]]
    mask: np.ndarray
    mask_origin: str
    new_space: bool
    skipped: dict[int, int] = field(default_factory=dict)  # index in runs -> its run number in the folder

    @property
    def notes(self) -> list[str]:
        return [n for r in self.runs for n in r.notes]


def session_space(folder: SessionFolder) -> SpaceFiles:
    """Where the session's voxel space is kept (as the scanner side keeps it)."""
    return SpaceFiles(folder.derivatives, f"sub-{folder.subject}_ses-{folder.session}_task-{folder.task}")


def plan_import(folder: SessionFolder, runs: list[RunInput], mask_path: Path | None) -> ImportPlan:
    """Check the runs against each other, the mask and the session folder, read every run's data once
    (finite inside the mask) and decide each run's number; raises :class:`SessionImportError`."""
    check_same_grid(runs)
    first = runs[0]
    _check_session_tr(folder, first)
    mask, origin, new_space = _mask(folder, first, mask_path)
    digests = []
    for run in runs:
        data = run.load()
        if mask is None:  # no mask given nor stored: the first run's own, as the scanner side makes one
            mean = received_mean(data, run.missing)
            mask = intensity_mask(np.nan_to_num(mean), MASK_THRESHOLD) & _finite(data, run.missing)
            origin = f"intensity mask ({MASK_THRESHOLD} x the 98th percentile) of {run.bold.name}'s mean"
        _check_finite(run, data[mask])
        digests.append(run.digests())
    plan = ImportPlan(runs, [], digests, mask, origin, new_space)
    _number_runs(folder, plan)
    return plan


def _check_session_tr(folder: SessionFolder, first: RunInput) -> None:
    """A session has one TR (every offline fit reads it): runs at another TR than the session's recorded
    one are refused before anything is written."""
    if not folder.path.exists():
        return
    try:
        recorded = recorded_tr(folder)
    except ValueError as exc:  # a session already holding two TRs (imported before this check existed)
        raise SessionImportError(f"{folder.path}: {exc}") from None
    if recorded is not None and abs(first.tr_s - recorded) > 1e-3:
        raise SessionImportError(f"{first.bold}: TR {first.tr_s:g} s, but the session {folder.path} was recorded at "
                                 f"TR {recorded:g} s: one session, one TR (import it into a new session folder)")


def received_mean(data: np.ndarray, missing: list[int]) -> np.ndarray:
    """The mean image of the volumes that arrived (a missing one may hold anything), without copying the run."""
    received = [t for t in range(data.shape[3]) if t not in missing]
    total = np.zeros(data.shape[:3])
    for t in received:
        total += data[..., t]
    return (total / len(received)).astype(np.float32)


def _finite(data: np.ndarray, missing: list[int]) -> np.ndarray:
    """Voxels finite in every volume that arrived."""
    out = np.ones(data.shape[:3], bool)
    for t in range(data.shape[3]):
        if t not in missing:
            out &= np.isfinite(data[..., t])
    return out


def _mask(folder: SessionFolder, first: RunInput, mask_path: Path | None) -> tuple[np.ndarray | None, str, bool]:
    """(mask, where it came from, whether the session's space is new): the stored one wins; --mask must
    then be the same voxels."""
    given = None if mask_path is None else read_mask(mask_path, first.shape, first.affine)
    stored = _stored_mask(folder)
    if stored is None:
        return given, "" if given is None else f"--mask {mask_path.name}", True
    mask, where = stored
    data = np.asarray(mask.data, bool)
    if data.shape != first.shape[:3] or not np.allclose(mask.affine, first.affine, atol=1e-3):
        raise SessionImportError(f"{first.bold}: grid {first.shape[:3]}, but the session's voxel space ({where}) is on "
                                 f"{data.shape}{'' if data.shape != first.shape[:3] else ' with another affine'}: a "
                                 "session keeps one voxel space")
    if given is not None and not np.array_equal(given, data):
        raise SessionImportError(f"{mask_path}: selects {int(given.sum())} voxels, but the session's voxel space "
                                 f"({where}) has {int(data.sum())} others; give that mask or none")
    return data, f"the session's voxel space, {where.name}", False


def _stored_mask(folder: SessionFolder) -> tuple[Mask, Path] | None:
    """The session's voxel space; for a session whose runs began before it was stored, its first run's mask
    (as the scanner side takes it up again)."""
    if not folder.path.exists():
        return None
    space = session_space(folder).load()
    if space is not None:
        return space.mask, session_space(folder).mask
    for row in sorted(folder.runs(), key=lambda r: int(r["run"])):
        path = folder.derivatives / f"{folder.prefix(int(row['run']))}_desc-brain_mask.nii"
        if path.exists():
            img = nib.load(path)
            return Mask(np.asarray(img.dataobj) > 0, np.asarray(img.affine, float)), path
    return None


def _check_finite(run: RunInput, masked: np.ndarray) -> None:
    bad = ~np.isfinite(masked)
    bad[:, run.missing] = False
    if bad.any():
        volume = int(np.argwhere(bad.any(axis=0))[0, 0])
        raise SessionImportError(f"{run.bold}: volume {volume} (0-based): {int(bad[:, volume].sum())} voxel(s) inside "
                                 "the mask are NaN or infinite; expected finite values (or list the volume in the "
                                 "sidecar's MissingVolumes)")


def _number_runs(folder: SessionFolder, plan: ImportPlan) -> None:
    """Imported before (same files) -> skipped; same run with other events or confounds -> refused; new runs
    get the numbers after the folder's last run, reusing a number an interrupted import left behind."""
    committed = {int(r["run"]) for r in folder.runs()} if folder.path.exists() else set()
    ledger = read_tsv(folder.path / LEDGER)
    done = {r["bold_sha256"]: r for r in ledger if int(r["run"]) in committed}
    interrupted = {int(r["run"]) for r in ledger if int(r["run"]) not in committed}
    seen: dict[str, Path] = {}
    following = max(committed | {0}) + 1
    for i, (run, digest) in enumerate(zip(plan.runs, plan.digests, strict=True)):
        if digest["bold_sha256"] in seen:
            raise SessionImportError(f"{run.bold}: the same data as {seen[digest['bold_sha256']]}, given twice")
        seen[digest["bold_sha256"]] = run.bold
        before = done.get(digest["bold_sha256"])
        if before is not None:
            for key, what in (("events_sha256", "events table"), ("confounds_sha256", "confounds table")):
                if before[key] != digest[key]:
                    given = run.events_file if key == "events_sha256" else run.confounds_file or "none given"
                    raise SessionImportError(
                        f"{run.bold}: imported before as run {before['run']} with another {what} (now: {given}); "
                        "a run is imported once: import into a new session folder to change it")
            plan.numbers.append(None)
            plan.skipped[i] = int(before["run"])
            continue
        number = following
        following += 1
        store_files = [p for p in _run_files(folder, number) if p.exists()]
        if store_files and number not in interrupted:
            raise SessionImportError(f"{store_files[0]}: run {number} has stored files but no row in runs.tsv, and no "
                                     "import started it; not overwriting (move them away first)")
        plan.numbers.append(number)


def _run_files(folder: SessionFolder, number: int) -> list[Path]:
    p = folder.prefix(number)
    return [folder.derivatives / f"{p}_desc-confounds_timeseries.tsv", folder.derivatives / f"{p}_desc-masked_bold.f32"]


def write_import(folder: SessionFolder, plan: ImportPlan,
                 crash_point: Callable[[str], None] = lambda name: None) -> list[int]:
    """Write the planned runs; returns their numbers. ``crash_point`` lets tests stop it part-way."""
    folder.create()
    affine = plan.runs[0].affine
    if plan.new_space:
        first = plan.runs[0]
        ref = received_mean(first.load(), first.missing)
        session_space(folder).save(VoxelSpace(Volume(ref.astype(np.float32), affine), Mask(plan.mask, affine),
                                              {"reference": f"mean of {first.bold.name} (imported)",
                                               "mask": plan.mask_origin}))
    written = []
    for run, number, digest in zip(plan.runs, plan.numbers, plan.digests, strict=True):
        if number is None:
            continue
        append_tsv(folder.path / LEDGER, LEDGER_COLUMNS, {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "run": number, "bold": run.bold.name, **digest,
            "volumes": run.n_volumes, "tr_s": run.tr_s}, fsync=True)  # before its files: a crash is resumed
        _write_run(folder, number, run, plan.mask, crash_point)
        folder.log_run_end(number, "imported", run.n_volumes - len(run.missing))
        crash_point("commit")
        folder.add_run(number, SERIES, "imported")  # the commit: from here on the run is read
        written.append(number)
    return written


def _write_run(folder: SessionFolder, number: int, run: RunInput, mask: np.ndarray,
               crash_point: Callable[[str], None]) -> None:
    """The run's live record: reference and mask, masked vectors and confounds rows, acquisition, events."""
    for path in _run_files(folder, number):
        path.unlink(missing_ok=True)  # what an interrupted import of this number left
    store = folder.run_store(number)
    data = run.load()
    store.save_reference(received_mean(data, run.missing), run.affine, mask, run.affine)
    store.save_acquisition({"imported_from": run.bold.name}, run.tr_s)
    vectors = np.ascontiguousarray(data[mask].T)  # (volumes, voxels), the mask's voxel order
    del data
    qa, previous = RunningQA(vectors.shape[1]), None
    for t in range(run.n_volumes):
        if t in run.missing:
            store.append_missing(t)
            continue
        params = np.r_[run.motion[t, :3], np.deg2rad(run.motion[t, 3:])]
        dvars, tsnr = qa.update(vectors[t])
        row = {"volume": t, **dict(zip(MOTION, map(float, run.motion[t]), strict=True)),
               "framewise_displacement": framewise_displacement(params, previous), "dvars": dvars, "tsnr": tsnr,
               "t_file": "", "t_done": "", "latency_ms": ""}  # not received live: no times
        store.append(vectors[t], row)
        previous = params
        crash_point("volume")
    write_events(folder.path / "func" / f"{folder.prefix(number)}_events.tsv", run.events)
