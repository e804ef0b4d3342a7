"""A session folder as BIDS: the finished runs in the form pybids, nilearn, fMRIPrep and GLMsingle read.

The live record (docs/session-folder.md) stays the crash-safe truth while a run is recorded; at the end
of each run, on a restart for runs finished before a crash, or with ``rtdecode session finalize``, each
run is also written as BIDS (:mod:`rtdecode.bids.run`) and the dataset's files are brought up to date
(:mod:`rtdecode.bids.dataset`).
"""

from __future__ import annotations

from pathlib import Path

from rtdecode.base.session import SessionFolder
from rtdecode.bids.dataset import Stimuli, write_dataset_files
from rtdecode.bids.lock import DatasetBusy
from rtdecode.bids.names import bold_path
from rtdecode.bids.run import FinalizeError, finalize_run
from rtdecode.bids.sidecars import configured_stimuli

__all__ = ["FinalizeError", "finalize_run", "finalize_session", "is_finalized", "write_dataset_files"]


def is_finalized(folder: SessionFolder, run: int) -> bool:
    return bold_path(folder, run).exists()


def finalize_session(folder: SessionFolder, runs: list[int] | None = None, tr_s: float | None = None,
                     only_missing: bool = False, gallery: Path | None = None) -> dict[int, list[Path] | str]:
    """Finalise ``runs`` (default: every run in runs.tsv); per run the files written, or why not.
    Shown images go into the dataset's stimuli/: built-in ones painted, others copied from ``gallery``
    (default: the session's ``[session] stimuli``)."""
    stimuli = Stimuli(Path(folder.root), gallery if gallery is not None else configured_stimuli(folder))
    done: dict[int, list[Path] | str] = {}
    for run in runs if runs is not None else [int(r["run"]) for r in folder.runs()]:
        if only_missing and is_finalized(folder, run):
            continue
        try:
            done[run] = finalize_run(folder, run, tr_s, stimuli=stimuli)
        except (FinalizeError, DatasetBusy) as exc:
            done[run] = str(exc)
    write_dataset_files(Path(folder.root))
    return done
