"""The session folder: a BIDS-like tree written as data arrives and read back by every later stage.

    <root>/sub-XX/ses-YY/
        session.json                        subject, session, task and the session's uid (made once)
        config.toml                         the configuration the session ran with
        marks.tsv                           operator's marks on trials (bad, note; the latest row counts)
        operator.tsv                        operator commands taken (stop_run, start_run), with the run
        runs.tsv                            run number <-> scanner series, start time
        run_ends.tsv                        each run's end: why, and how many volumes it kept
        rejected.tsv                        every file set aside, with the reason
        func/sub-XX_ses-YY_task-T_run-NN_bold/vol-000000.nii
                                            each volume as received (no patient fields)
        derivatives/rtdecode/func/
            ..._run-NN_boldref.nii          the run's reference volume
            ..._run-NN_desc-brain_mask.nii  the mask (on the grid it was defined on)
            ..._run-NN_desc-confounds_timeseries.tsv
                                            one row per volume: motion (mm, deg), FD, DVARS, tSNR,
                                            timing; status 'ok' or 'missing'
            ..._run-NN_desc-masked_bold.f32 masked vectors, float32 rows in volume order
            ..._run-NN_desc-masked_bold.json  n_voxels and dtype of the rows

Every append is flushed before the next volume is taken, so a crash loses at most the volume in
hand; :meth:`RunStore.load` trims a half-written last row and the run resumes where it stopped.
"""

from __future__ import annotations

import json
import os
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

CONFOUND_COLUMNS = (
    "volume", "status", "trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z",
    "framewise_displacement", "dvars", "tsnr", "t_file", "t_done", "latency_ms",
)


def local_stamp() -> str:
    """Now as local ISO time to the millisecond: a console rebuilding the session orders its events by it."""
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(now)) + f".{int(now % 1 * 1000):03d}"


def append_tsv(path: Path, columns: tuple[str, ...], row: dict, fsync: bool = False) -> None:
    """Append one row (and the header to a new file); ``fsync``: on disk before returning."""
    new = not path.exists() or path.stat().st_size == 0
    with open(path, "a", newline="", encoding="utf-8") as fh:
        if new:
            fh.write("\t".join(columns) + "\n")
        fh.write("\t".join(_fmt(row.get(c, "n/a")) for c in columns) + "\n")
        fh.flush()
        if fsync:
            os.fsync(fh.fileno())


# A field is written so it reads back equal: backslash, tab, newline, carriage return and every other
# control, line-separator or lone-surrogate character as an escape (\\, \t, \n, \r, \uXXXX), so a
# row is one line of UTF-8 whatever it holds; nothing is quoted.
_UNSAFE = re.compile(r"[\\\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_ESCAPES = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"}
_ESCAPED = re.compile(r"\\(?:([\\tnr])|u([0-9a-f]{4}))")
_PLAIN = {"\\": "\\", "t": "\t", "n": "\n", "r": "\r"}


def escape_field(text: str) -> str:
    """``text`` as one TSV field (see :func:`unescape_field`)."""
    return _UNSAFE.sub(lambda m: _ESCAPES.get(m[0]) or f"\\u{ord(m[0]):04x}", text)


def unescape_field(field: str) -> str:
    """The text :func:`escape_field` wrote; a backslash before anything else is itself."""
    return _ESCAPED.sub(lambda m: _PLAIN[m[1]] if m[1] else chr(int(m[2], 16)), field)


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return "n/a" if np.isnan(value) else f"{value:.6g}"
    return escape_field(str(value))


def read_tsv(path: Path) -> list[dict[str, str]]:
    """Rows of a TSV written by this module, fields unescaped; a final line cut by a crash is dropped.
    A row with fewer fields than the header has None for the rest (as csv.DictReader)."""
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = text.split("\n")
    if not text.endswith("\n"):
        lines = lines[:-1]  # the last line was being written when the process died
    lines = [ln for ln in lines if ln]
    if not lines:
        return []
    header = lines[0].split("\t")
    rows = []
    for line in lines[1:]:
        cells = [unescape_field(c) for c in line.split("\t")]
        rows.append(dict(zip(header, cells + [None] * (len(header) - len(cells)), strict=False)))
    return rows


def repair_tail(path: Path) -> None:
    """Cut a last line that a crash left without its newline, so the next append starts clean."""
    if not path.exists():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with open(path, "r+b") as fh:
            fh.truncate(data.rfind(b"\n") + 1)


@dataclass
class SessionFolder:
    """Paths of one subject's session."""

    root: Path
    subject: str
    session: str
    task: str = "rt"

    @property
    def path(self) -> Path:
        return Path(self.root) / f"sub-{self.subject}" / f"ses-{self.session}"

    @property
    def derivatives(self) -> Path:
        return self.path / "derivatives" / "rtdecode" / "func"

    def prefix(self, run: int) -> str:
        return f"sub-{self.subject}_ses-{self.session}_task-{self.task}_run-{run:02d}"

    def create(self) -> SessionFolder:
        (self.path / "func").mkdir(parents=True, exist_ok=True)
        self.derivatives.mkdir(parents=True, exist_ok=True)
        if not (self.path / "session.json").exists():
            info = {"subject": self.subject, "session": self.session, "task": self.task, "uid": uuid.uuid4().hex,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
            tmp = self.path / ".session.json.tmp"
            tmp.write_text(json.dumps(info, indent=1))
            tmp.replace(self.path / "session.json")  # one uid per session folder, however often it is opened
        return self

    @property
    def identity(self) -> dict[str, str]:
        """``subject``, ``session`` and ``session_uid`` as every beta and result carries them."""
        info = json.loads((self.path / "session.json").read_text())
        return {"subject": self.subject, "session": self.session, "session_uid": info["uid"]}

    def log_operator(self, action: str, run: int | None, detail: str) -> None:
        append_tsv(self.path / "operator.tsv", ("time", "action", "run", "detail"),
                   {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "action": action, "run": run or "n/a",
                    "detail": detail}, fsync=True)

    def log_mark(self, run: int, trial: int, version: str, bad: bool, note: str) -> None:
        """An operator's mark on a trial (the latest row per trial counts; bad 0 removes a mark)."""
        append_tsv(self.path / "marks.tsv", ("time", "run", "trial", "version", "bad", "note"),
                   {"time": f"{time.time():.3f}", "run": run, "trial": trial, "version": version,
                    "bad": int(bad), "note": " ".join(note.split())}, fsync=True)

    def marks(self) -> list[dict[str, str]]:
        return read_tsv(self.path / "marks.tsv")

    def operator_log(self) -> list[dict[str, str]]:
        return read_tsv(self.path / "operator.tsv")

    def runs(self) -> list[dict[str, str]]:
        return read_tsv(self.path / "runs.tsv")

    def add_run(self, run: int, series_key: int, series_uid: str) -> None:
        append_tsv(
            self.path / "runs.tsv", ("run", "series", "series_uid", "started"),
            {"run": run, "series": series_key, "series_uid": series_uid, "started": local_stamp()},
        )

    def log_run_end(self, run: int, reason: str, n_volumes: int) -> None:
        """A run ended (complete, new series, stopped, closed): written before its end-of-run betas, so a
        restart never takes a closed run up again."""
        append_tsv(self.path / "run_ends.tsv", ("time", "run", "reason", "volumes"),
                   {"time": local_stamp(), "run": run, "reason": reason,
                    "volumes": n_volumes}, fsync=True)

    def run_ends(self) -> dict[int, str]:
        """Run -> why it ended, for the runs that did (the latest row of a run counts)."""
        return {int(r["run"]): r["reason"] for r in read_tsv(self.path / "run_ends.tsv") if r["run"].isdigit()}

    def reject(self, file: str, reason: str) -> None:
        append_tsv(self.path / "rejected.tsv", ("time", "file", "reason"),
                    {"time": local_stamp(), "file": file, "reason": reason})

    def rejected(self) -> list[dict[str, str]]:
        return read_tsv(self.path / "rejected.tsv")

    def run_store(self, run: int) -> RunStore:
        return RunStore(self, run)


class RunStore:
    """Append-only storage of one run's volumes, vectors and confounds."""

    def __init__(self, folder: SessionFolder, run: int) -> None:
        self.folder = folder
        self.run = run
        p = folder.prefix(run)
        self.raw_dir = folder.path / "func" / f"{p}_bold"
        self.boldref = folder.derivatives / f"{p}_boldref.nii"
        self.mask = folder.derivatives / f"{p}_desc-brain_mask.nii"
        self.confounds = folder.derivatives / f"{p}_desc-confounds_timeseries.tsv"
        self.vectors = folder.derivatives / f"{p}_desc-masked_bold.f32"
        self.vectors_json = folder.derivatives / f"{p}_desc-masked_bold.json"
        self.alignment = folder.derivatives / f"{p}_desc-alignment.json"  # figures of the run-start check
        self.alignment_png = folder.derivatives / f"{p}_desc-alignment.png"  # its mosaic
        self.acquisition = folder.derivatives / f"{p}_desc-acquisition.json"  # TR and allow-listed DICOM fields
        self.raw_dir.mkdir(parents=True, exist_ok=True)

    def save_reference(self, data: np.ndarray, affine: np.ndarray, mask: np.ndarray, mask_affine: np.ndarray) -> None:
        nib.save(nib.Nifti1Image(np.asarray(data, np.float32), affine), self.boldref)
        nib.save(nib.Nifti1Image(mask.astype(np.uint8), mask_affine), self.mask)
        self.vectors_json.write_text(json.dumps({"n_voxels": int(mask.sum()), "dtype": "<f4"}))

    def save_acquisition(self, meta: dict, tr_s: float) -> None:
        """The run's timing and the first volume's allow-listed acquisition fields (for the BIDS sidecar)."""
        fields = {k: v for k, v in meta.items() if k != "t_file" and (isinstance(v, (int, float, str)) or (
            isinstance(v, list) and all(isinstance(x, (int, float)) for x in v)))}  # lists: SliceTiming
        tmp = self.acquisition.with_name(f".{self.acquisition.name}.tmp")
        tmp.write_text(json.dumps({"tr_s": float(tr_s), "dicom": fields}, indent=1))
        tmp.replace(self.acquisition)

    def save_volume(self, index: int, data: np.ndarray, affine: np.ndarray) -> None:
        img = nib.Nifti1Image(np.asarray(data, np.float32), affine)
        nib.save(img, self.raw_dir / f"vol-{index:06d}.nii")

    def append(self, vector: np.ndarray, row: dict) -> None:
        """Store one processed volume: vector first, then its confounds row (the commit point)."""
        with open(self.vectors, "ab") as fh:
            fh.write(np.ascontiguousarray(vector, dtype="<f4").tobytes())
            fh.flush()
        append_tsv(self.confounds, CONFOUND_COLUMNS, {**row, "status": "ok"})

    def append_missing(self, index: int) -> None:
        append_tsv(self.confounds, CONFOUND_COLUMNS, {"volume": index, "status": "missing"})

    def load(self) -> tuple[list[dict[str, str]], np.ndarray]:
        """Rows of the confounds table and the matching (n_ok, n_voxels) vectors; repairs a torn tail.
        A session copied without its live record is read from its BIDS derivative (written by rtdecode.bids)."""
        if not self.confounds.exists():
            finalized = load_finalized(self.folder, self.run)
            if finalized is not None:
                return finalized
        repair_tail(self.confounds)
        rows = read_tsv(self.confounds)
        if not self.vectors_json.exists():
            return rows, np.zeros((0, 0), np.float32)
        n_vox = json.loads(self.vectors_json.read_text())["n_voxels"]
        n_ok = sum(r["status"] == "ok" for r in rows)
        row_bytes = 4 * n_vox
        if self.vectors.exists() and self.vectors.stat().st_size != n_ok * row_bytes:
            # A vector written without its confounds row (crash between the two): drop it.
            with open(self.vectors, "r+b") as fh:
                fh.truncate(n_ok * row_bytes)
                fh.flush()
                os.fsync(fh.fileno())
        vectors = np.fromfile(self.vectors, dtype="<f4").reshape(-1, n_vox) if self.vectors.exists() else np.zeros((0, n_vox), np.float32)
        return rows, vectors

    def load_reference(self) -> tuple[nib.Nifti1Image, nib.Nifti1Image] | None:
        if not (self.boldref.exists() and self.mask.exists()):
            return None
        return nib.load(self.boldref), nib.load(self.mask)


# A run read back from its BIDS derivative (rtdecode.bids writes it), for a session copied without
# its live record. Kept here, below rtdecode.bids, because RunStore.load falls back on it.
DERIVATIVE = "rtdecode"


def derivative_func(folder: SessionFolder) -> Path:
    """``ROOT/derivatives/rtdecode/sub-XX/ses-YY/func``."""
    return Path(folder.root) / "derivatives" / DERIVATIVE / f"sub-{folder.subject}" / f"ses-{folder.session}" / "func"


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


def load_finalized_mask(folder: SessionFolder, run: int) -> nib.Nifti1Image | None:
    """The brain mask of ``run``'s BIDS derivative, or None when the run was not finalised."""
    files = finalized_files(folder, run)
    return None if files is None else nib.load(files["mask"])
