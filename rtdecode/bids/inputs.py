"""Recorded runs from elsewhere, read and checked whole before ``rtdecode session import`` writes anything.

A run is a 4-D NIfTI taken as already preprocessed (motion-corrected, every run on one grid, as
fMRIPrep's ``desc-preproc_bold`` is), its BIDS-style events table and optionally its confounds
(fMRIPrep's ``desc-confounds_timeseries.tsv``, or a plain table of six motion columns). Every problem
is one :class:`SessionImportError` naming the file, the field, what was expected and what came.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from rtdecode.base.errors import RtdecodeError
from rtdecode.base.events import Events, EventsError, events_from_records

MOTION = ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z")
ROW = re.compile(r"(\brow )(\d+)")  # an events error's row number
TR_UNITS = {"msec": 1e-3, "usec": 1e-6}  # NIfTI's time units; 'sec' and 'unknown' are taken as seconds


class SessionImportError(RtdecodeError):
    """A run, events table, confounds table or mask that cannot be imported (the message says why)."""


@dataclass
class RunInput:
    """One run as given on the command line, and what was read from its files (data excepted)."""

    bold: Path
    events_file: Path
    confounds_file: Path | None
    shape: tuple[int, ...] = ()
    affine: np.ndarray = field(default_factory=lambda: np.eye(4))
    tr_s: float = 0.0
    events: Events | None = None
    motion: np.ndarray | None = None  # (volumes, 6): mm and degrees, as the live record keeps them
    missing: list[int] = field(default_factory=list)  # 0-based volumes that never arrived (the sidecar's list)
    notes: list[str] = field(default_factory=list)

    @property
    def n_volumes(self) -> int:
        return int(self.shape[3])

    def digests(self) -> dict[str, str]:
        """sha256 of the run's files: how a later import of the same run is recognised."""
        return {"bold_sha256": _sha256(self.bold), "events_sha256": _sha256(self.events_file),
                "confounds_sha256": _sha256(self.confounds_file) if self.confounds_file else "n/a"}

    def load(self) -> np.ndarray:
        """The 4-D data as float32 (x, y, z, t)."""
        try:
            return np.asarray(nib.load(self.bold).dataobj, np.float32)
        except (OSError, EOFError, ValueError, zlib.error) as exc:  # a file cut short, a damaged gzip stream
            raise SessionImportError(f"{self.bold}: its data cannot be read ({type(exc).__name__}: {exc}); expected "
                                     f"{int(np.prod(self.shape))} values") from None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_run(bold: Path, events_file: Path, confounds_file: Path | None, tr_s: float | None,
             image_column: str = "image") -> RunInput:
    """Header, sidecar, events and confounds of one run, each checked against the run's length."""
    run = RunInput(Path(bold), Path(events_file), None if confounds_file is None else Path(confounds_file))
    try:
        img = nib.load(run.bold)
    except FileNotFoundError:
        raise SessionImportError(f"{bold}: no such file (expected a 4-D NIfTI run)") from None
    except Exception as exc:  # nibabel raises several kinds for a file that is not NIfTI
        raise SessionImportError(f"{bold}: not a readable NIfTI image ({exc})") from None
    if len(img.shape) != 4 or img.shape[3] < 2:
        raise SessionImportError(f"{bold}: expected a 4-D run (x, y, z, volumes) of 2 volumes or more, got shape "
                           f"{tuple(img.shape)}")
    run.shape, run.affine = tuple(int(s) for s in img.shape), np.asarray(img.affine, float)
    sidecar = _sidecar(run.bold)
    run.tr_s = _repetition_time(run, img, sidecar, tr_s)
    run.missing = _missing(run, sidecar)
    run.events, skipped = _events(run.events_file, run.n_volumes * run.tr_s, image_column)
    if skipped:
        run.notes.append(f"{run.events_file.name}: {skipped} row(s) with {image_column} n/a (no image shown, e.g. "
                         "fixation) skipped")
    run.motion = (np.zeros((run.n_volumes, 6)) if run.confounds_file is None
                  else read_motion(run.confounds_file, run.n_volumes, set(run.missing), run.bold.name))
    return run


def _sidecar(bold: Path) -> dict:
    """The BIDS sidecar beside the run (same name, .json), or {}."""
    name = bold.name
    stem = name[:-7] if name.endswith(".nii.gz") else name[:-4] if name.endswith(".nii") else None
    path = bold.with_name(f"{stem}.json") if stem else None
    if path is None or not path.exists():
        return {}
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SessionImportError(f"{path}: the run's sidecar is not readable JSON ({exc})") from None
    if not isinstance(info, dict):
        raise SessionImportError(f"{path}: expected a JSON object, got {type(info).__name__}")
    info["_path"] = str(path)
    return info


def _repetition_time(run: RunInput, img, sidecar: dict, tr_s: float | None) -> float:
    """--tr, else the sidecar's RepetitionTime, else the header's; a disagreement is noted, not fatal."""
    zooms = img.header.get_zooms()
    header = float(zooms[3]) * TR_UNITS.get(img.header.get_xyzt_units()[1], 1.0) if zooms[3] > 0 else None
    stated = sidecar.get("RepetitionTime")
    if stated is not None and not (isinstance(stated, (int, float)) and 0 < stated < 100):
        raise SessionImportError(f"{sidecar['_path']}: RepetitionTime: expected seconds (0 to 100), got {stated!r}")
    chosen = tr_s if tr_s is not None else stated if stated is not None else header
    if chosen is None:
        raise SessionImportError(f"{run.bold}: no repetition time in the header (pixdim[4] is 0) nor in a sidecar; "
                           "pass --tr SECONDS")
    for where, value in (("the sidecar's RepetitionTime", stated), ("the header", header)):
        if value is not None and abs(value - chosen) > 1e-3:
            run.notes.append(f"{run.bold.name}: {where} says TR {value:g} s; {chosen:g} s is used")
    return float(chosen)


def _missing(run: RunInput, sidecar: dict) -> list[int]:
    missing = sidecar.get("MissingVolumes", [])
    if not (isinstance(missing, list) and all(isinstance(i, int) and 0 <= i < run.n_volumes for i in missing)):
        raise SessionImportError(f"{sidecar['_path']}: MissingVolumes: expected 0-based volume numbers below "
                           f"{run.n_volumes}, got {missing!r}")
    if len(set(missing)) >= run.n_volumes:
        raise SessionImportError(f"{sidecar['_path']}: MissingVolumes lists every volume of {run.bold.name}")
    return sorted(set(missing))


def _events(path: Path, run_duration_s: float, column: str) -> tuple[Events, int]:
    """The events table in the project's form (onset, duration and the image from ``column``), and how many
    rows were skipped: rows whose ``column`` is BIDS's n/a show no image (fixation, responses)."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            records = list(csv.DictReader(fh, delimiter="\t"))
    except OSError as exc:
        raise SessionImportError(f"{path}: cannot read the events table ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise SessionImportError(f"{path}: expected UTF-8 text, got {exc.reason} at byte {exc.start}") from None
    if records and column not in records[0]:
        raise SessionImportError(f"{path}: no column {column!r} naming each trial's image; found "
                           f"{', '.join(map(str, records[0].keys()))} (choose one with --image-column)")
    rows = [k for k, rec in enumerate(records, start=1) if (rec.get(column) or "").strip() != "n/a"]
    if records and not rows:
        raise SessionImportError(f"{path}: every row's {column} is n/a; expected at least one row naming an image")
    kept = [records[k - 1] for k in rows]
    if column != "image":
        for rec in kept:
            value = rec.get(column) or ""
            # stim_file names a file (stimuli/x.png): its id is the base name without the extension
            rec["image"] = value.rsplit("/", 1)[-1].rsplit(".", 1)[0] if column == "stim_file" else value
    try:
        return events_from_records(kept, source=str(path), run_duration_s=run_duration_s), len(records) - len(kept)
    except EventsError as exc:
        text = str(exc) if column == "image" else str(exc).replace(", column image:", f", column {column}:")
        # the rows kept are numbered from 1 among themselves: the error names the table's own row
        source = str(path) if text.startswith(str(path)) else ""
        text = source + ROW.sub(lambda m: f"{m.group(1)}{rows[int(m.group(2)) - 1]}", text[len(source):])
        raise SessionImportError(text) from None


def read_motion(path: Path, n_volumes: int, missing: set[int], bold_name: str) -> np.ndarray:
    """Six motion columns (mm, degrees) from fMRIPrep's table (trans_* in mm, rot_* in radians, a header
    row) or from a plain table of six numbers a line without a header (SPM's rp_*.txt order: x, y, z in
    mm, then rotations about x, y, z in radians). A missing volume's row may hold n/a."""
    try:
        lines = [ln for ln in path.read_text(encoding="utf-8-sig").splitlines() if ln.strip()]
    except OSError as exc:
        raise SessionImportError(f"{path}: cannot read the confounds table ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise SessionImportError(f"{path}: expected UTF-8 text, got {exc.reason} at byte {exc.start}") from None
    if not lines:
        raise SessionImportError(f"{path}: the confounds table is empty")
    plain = _all_numbers(lines[0].split())
    if plain:
        header, rows = list(MOTION), [ln.split() for ln in lines]
    else:
        header, rows = lines[0].split("\t"), [ln.split("\t") for ln in lines[1:]]
        absent = [c for c in MOTION if c not in header]
        if absent:
            raise SessionImportError(f"{path}: missing column(s) {', '.join(absent)}; expected fMRIPrep's "
                               f"{', '.join(MOTION)} (mm, radians), or six numbers a line without a header")
    if len(rows) != n_volumes:
        raise SessionImportError(f"{path}: {len(rows)} rows, expected one per volume of {bold_name} ({n_volumes})")
    where = [header.index(c) for c in MOTION]
    out = np.zeros((n_volumes, 6))
    for i, cells in enumerate(rows):
        line = i + 1 if plain else i + 2
        if len(cells) != len(header):
            raise SessionImportError(f"{path}: line {line}: expected {len(header)} fields, got {len(cells)}")
        for k, j in enumerate(where):
            text = cells[j].strip()
            if i in missing and text == "n/a":
                continue
            try:
                out[i, k] = float(text)
            except ValueError:
                out[i, k] = np.nan
            if not np.isfinite(out[i, k]):
                raise SessionImportError(f"{path}: line {line}, column {MOTION[k]}: expected a finite number, got {text!r}")
    out[:, 3:] = np.rad2deg(out[:, 3:])  # the live record keeps degrees (docs/session-folder.md)
    return out


def _all_numbers(cells: list[str]) -> bool:
    try:
        return bool(cells) and all(np.isfinite(float(c)) for c in cells)
    except ValueError:
        return False


def check_same_grid(runs: list[RunInput]) -> None:
    """Every run on the first run's grid and TR: they share one voxel space and one design clock."""
    first = runs[0]
    for run in runs[1:]:
        if run.shape[:3] != first.shape[:3]:
            raise SessionImportError(f"{run.bold}: grid {run.shape[:3]}, expected {first.shape[:3]} as {first.bold.name} "
                               "(runs must be registered to one grid before import)")
        if not np.allclose(run.affine, first.affine, atol=1e-3):
            raise SessionImportError(f"{run.bold}: affine differs from {first.bold.name}'s (runs must be registered to "
                               "one grid before import)")
        if abs(run.tr_s - first.tr_s) > 1e-3:
            raise SessionImportError(f"{run.bold}: TR {run.tr_s:g} s, expected {first.tr_s:g} s as {first.bold.name}")


def read_mask(path: Path, shape: tuple[int, ...], affine: np.ndarray) -> np.ndarray:
    """A 3-D mask on the runs' grid (nonzero = in)."""
    try:
        img = nib.load(path)
    except FileNotFoundError:
        raise SessionImportError(f"{path}: no such file (expected a 3-D NIfTI mask)") from None
    except Exception as exc:
        raise SessionImportError(f"{path}: not a readable NIfTI image ({exc})") from None
    data = np.asarray(img.dataobj)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.shape != tuple(shape[:3]) or not np.allclose(img.affine, affine, atol=1e-3):
        raise SessionImportError(f"{path}: grid {data.shape} (affine {np.round(img.affine[:3, 3], 2).tolist()} mm), "
                           f"expected the runs' {tuple(shape[:3])} (affine {np.round(affine[:3, 3], 2).tolist()} mm)")
    mask = data > 0
    if not mask.any():
        raise SessionImportError(f"{path}: the mask selects no voxel")
    return mask
