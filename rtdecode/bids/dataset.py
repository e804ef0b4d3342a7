"""The dataset-level files of a finalised session: descriptions, participants, sessions, .bidsignore.

The dataset root is ``session.root`` (it holds ``sub-XX/``). Derivatives go to
``ROOT/derivatives/rtdecode/`` as BIDS places them. The live record inside each session folder
(per-volume files, ``.f32`` rows, ledgers, ``derivatives/`` inside ``ses-YY/``) stays where it is and
is listed in ``.bidsignore``.
"""

from __future__ import annotations

import json
import os
import shutil
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from rtdecode.base.ids import IMAGE_ID
from rtdecode.base.session import DERIVATIVE

BIDS_VERSION = "1.9.0"

# The live record: kept as the crash-safe truth, ignored by BIDS tools (gitignore-style patterns).
BIDSIGNORE = """# rtdecode's live record (docs/session-folder.md): crash-safe, append-only, not BIDS
# (folders without a trailing slash: the schema validator 3.x matches a folder's own path)
sub-*/ses-*/session.json
sub-*/ses-*/operator.tsv
sub-*/ses-*/runs.tsv
sub-*/ses-*/run_ends.tsv
sub-*/ses-*/starts.tsv
sub-*/ses-*/rejected.tsv
sub-*/ses-*/marks.tsv
sub-*/ses-*/config.toml
sub-*/ses-*/derivatives
sub-*/ses-*/func/*_bold
.finalize-tmp
.rtdecode-bids.lock
"""

# The derivative's files BIDS has no name for yet (confounds as fMRIPrep writes them, single-trial betas,
# the reference image of space-boldref): listed, so the validator checks everything else.
DERIVATIVE_BIDSIGNORE = """# rtdecode derivative files without a BIDS name yet (docs/session-folder.md)
*_desc-confounds_timeseries.tsv
*_desc-confounds_timeseries.json
*_betas.nii.gz
*_betas.tsv
*_betas.json
*_boldref.nii.gz
"""

def rtdecode_version() -> str:
    try:
        return version("rtdecode")
    except PackageNotFoundError:  # running from a checkout without an install
        return "unknown"


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)


def _write_if_changed(path: Path, text: str) -> None:
    if not path.exists() or path.read_text() != text:
        write_atomic(path, text)


def write_dataset_files(root: Path) -> list[Path]:
    """dataset_description.json, participants.tsv, each subject's sessions.tsv, .bidsignore, and the
    derivative's dataset_description.json, .bidsignore and README; rewritten only when their content
    changes, by one finaliser at a time."""
    from rtdecode.bids.lock import DatasetLock

    with DatasetLock(root):
        return _write_dataset_files(Path(root))


def _write_dataset_files(root: Path) -> list[Path]:
    written = []
    desc = root / "dataset_description.json"
    if not desc.exists():  # a lab's own description (Name, Authors, ...) is never overwritten
        _write_if_changed(desc, json.dumps({
            "Name": "rtdecode real-time fMRI sessions", "BIDSVersion": BIDS_VERSION, "DatasetType": "raw",
            "GeneratedBy": [{"Name": "rtdecode", "Version": rtdecode_version()}]}, indent=1) + "\n")
    written.append(desc)
    subjects = sorted(p.name for p in root.glob("sub-*") if p.is_dir())
    _write_if_changed(root / "participants.tsv", "participant_id\n" + "".join(f"{s}\n" for s in subjects))
    written.append(root / "participants.tsv")
    for sub in subjects:
        sessions = sorted(p.name for p in (root / sub).glob("ses-*") if p.is_dir())
        path = root / sub / f"{sub}_sessions.tsv"
        _write_if_changed(path, "session_id\n" + "".join(f"{s}\n" for s in sessions))
        written.append(path)
    for task in sorted({p.name.split("task-")[1].split("_")[0] for p in root.glob("sub-*/ses-*/func/*_events.tsv")}):
        _write_if_changed(root / f"task-{task}_events.json", json.dumps({
            "trial_type": {"Description": "one condition: an image shown"},
            "stim_file": {"Description": "the image shown, in stimuli/ (n/a: not in the dataset)"},
            "image": {"Description": "the image's id in the gallery the decoder retrieves from"},
            "trial": {"Description": "trial number within the run, from 0 (rtdecode's betas and results use it)"}},
            indent=1) + "\n")
        written.append(root / f"task-{task}_events.json")
    readme = root / "README"
    if not readme.exists():
        _write_if_changed(readme, "Real-time fMRI sessions recorded by rtdecode. Each run's volumes are as the scanner "
                                  "exported them; derivatives/rtdecode holds what was computed at the scanner.\n")
    written.append(readme)
    ignore = root / ".bidsignore"
    existing = ignore.read_text() if ignore.exists() else ""
    if BIDSIGNORE not in existing:
        _write_if_changed(ignore, existing + ("\n" if existing and not existing.endswith("\n") else "") + BIDSIGNORE)
    written.append(ignore)
    deriv = root / "derivatives" / DERIVATIVE
    deriv.mkdir(parents=True, exist_ok=True)
    _write_if_changed(deriv / ".bidsignore", DERIVATIVE_BIDSIGNORE)
    _write_if_changed(deriv / "README", "What rtdecode computed at the scanner for the raw dataset two folders up "
                                        "(docs/session-folder.md): motion-corrected runs, confounds, single-trial "
                                        "betas.\n")
    written += [deriv / ".bidsignore", deriv / "README"]
    _write_if_changed(deriv / "dataset_description.json", json.dumps({
        "Name": "rtdecode: motion-corrected runs, confounds and single-trial betas as estimated at the scanner",
        "BIDSVersion": BIDS_VERSION, "DatasetType": "derivative", "SourceDatasets": [{"URL": "../../"}],
        "GeneratedBy": [{"Name": "rtdecode", "Version": rtdecode_version(),
                         "Description": "real-time preprocessing and single-trial GLM (docs/glm.md)"}]}, indent=1) + "\n")
    written.append(deriv / "dataset_description.json")
    return written


class Stimuli:
    """The shown images in ``ROOT/stimuli/``: built-in ids are painted, others copied from ``gallery``."""

    def __init__(self, root: Path, gallery: Path | None = None) -> None:
        from rtdecode.gallery.folder import gallery_files

        self.folder = Path(root) / "stimuli"
        self.files = gallery_files(gallery) if gallery else {}  # id -> file, listed once

    def __call__(self, image: str) -> str | None:
        from rtdecode.gallery.builtin import StimulusSet, index_of
        from rtdecode.gallery.folder import SUFFIXES

        if not IMAGE_ID.fullmatch(image):  # an id from an events table becomes a file name only when it is a plain one
            return None
        for suffix in SUFFIXES:  # already there
            if (self.folder / f"{image}{suffix}").exists():
                return f"{image}{suffix}"
        self.folder.mkdir(parents=True, exist_ok=True)
        source = self.files.get(image)  # a listed file, never a path built from the id
        if source is not None:
            tmp = self.folder / f".{source.name}.{os.getpid()}.tmp"  # never a temp name another process shares
            shutil.copyfile(source, tmp)
            tmp.replace(self.folder / source.name)
            return source.name
        try:
            index = index_of(image)
        except ValueError:
            return None
        from PIL import Image

        tmp = self.folder / f".{image}.png.{os.getpid()}.tmp"
        Image.fromarray(StimulusSet().image(index)).save(tmp, format="PNG")
        tmp.replace(self.folder / f"{image}.png")
        return f"{image}.png"
