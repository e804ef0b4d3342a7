"""A recorded session folder read back: opened from its path, its runs with events, its trials.

Below the GLM (offline fits and tuning read the same runs) and evaluation, so none of them imports another
for it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from rtdecode.base.events import Events, read_events
from rtdecode.base.session import SessionFolder

MOTION = ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z")


def session_folder(path: str | Path) -> SessionFolder:
    """A SessionFolder from its path (``.../sub-XX/ses-YY``)."""
    path = Path(path)
    sub, ses = path.parent.name, path.name
    if not (sub.startswith("sub-") and ses.startswith("ses-")):
        raise ValueError(f"{path}: expected a session folder named .../sub-<label>/ses-<label>")
    task = "rt"
    for f in sorted((path / "func").glob("*_events.tsv")):
        task = f.name.split("task-")[1].split("_")[0]
        break
    return SessionFolder(path.parent.parent, sub[4:], ses[4:], task)


def recorded_runs(folder: SessionFolder) -> Iterator[tuple[int, Events, list[dict[str, str]], np.ndarray]]:
    """Each run with an events table and stored volumes: (run, events, confounds rows, ok vectors)."""
    for row in folder.runs():
        run = int(row["run"])
        events_file = folder.path / "func" / f"{folder.prefix(run)}_events.tsv"
        if not events_file.exists():
            continue
        rows, vectors = folder.run_store(run).load()
        if vectors.size:
            yield run, read_events(events_file), rows, vectors


def session_trials(folder: SessionFolder) -> tuple[list[str], list[int]]:
    """The image and run of every trial the offline GLM would estimate (runs with volumes and events)."""
    images, runs = [], []
    for run in folder.runs():
        number = int(run["run"])
        events_file = folder.path / "func" / f"{folder.prefix(number)}_events.tsv"
        if events_file.exists() and folder.run_store(number).vectors.exists():
            ev = read_events(events_file)
            images += list(ev.image)
            runs += [number] * len(ev.image)
    return images, runs


def recorded_tr(folder: SessionFolder) -> float | None:
    """The repetition time (s) the session's runs were recorded or imported at (each run's
    ``desc-acquisition.json``); None when no run says. Runs that disagree are a ValueError naming both."""
    import json

    found: dict[float, str] = {}
    for row in folder.runs():
        path = folder.derivatives / f"{folder.prefix(int(row['run']))}_desc-acquisition.json"
        if path.exists():
            tr = json.loads(path.read_text()).get("tr_s")
            if tr:
                found.setdefault(round(float(tr), 6), path.name)
    if len(found) > 1:
        (a, fa), (b, fb) = sorted(found.items())[:2]
        raise ValueError(f"{fb}: TR {b:g} s, but {fa} says {a:g} s: one session, one TR")
    return next(iter(found), None)


def session_tr(folder: SessionFolder, given: float | None) -> float:
    """The TR to fit ``folder`` at: ``given`` (--tr), else the recorded one, else 1.5 s; a ``given`` TR that
    contradicts the record is a ValueError."""
    recorded = recorded_tr(folder)
    if given is not None and recorded is not None and abs(given - recorded) > 1e-3:
        raise ValueError(f"--tr {given:g}, but {folder.path} was recorded at TR {recorded:g} s "
                         "(derivatives/rtdecode/func/*_desc-acquisition.json): leave --tr out")
    return float(given if given is not None else recorded or 1.5)
