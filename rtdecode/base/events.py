"""Events tables (onset, duration, image): reading, writing and validation with row-level errors."""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rtdecode.base.errors import RtdecodeError

IMAGE_ID = re.compile(r"\A[A-Za-z0-9._-]{1,128}\Z")
REQUIRED = ("onset", "duration", "image")


class EventsError(RtdecodeError):
    """A bad events table; the message names the source, the row (1-based, header excluded) and column."""


@dataclass(frozen=True)
class Events:
    """One run's trials in onset order."""

    onset: np.ndarray  # seconds from the first volume's acquisition
    duration: np.ndarray
    image: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.onset)

    def rows(self) -> list[dict]:
        return [{"trial": i, "onset": float(o), "duration": float(d), "image": im}
                for i, (o, d, im) in enumerate(zip(self.onset, self.duration, self.image, strict=True))]


def events_from_records(records: list[dict], source: str = "events", run_duration_s: float | None = None,
                        allow_overlap: bool = False) -> Events:
    """Validate records (dicts with onset, duration, image) and return them as :class:`Events`."""
    if not records:
        raise EventsError(f"{source}: the events table has no rows")
    missing = [c for c in REQUIRED if c not in records[0]]
    if missing:
        raise EventsError(f"{source}: missing column(s) {', '.join(missing)}; expected columns {', '.join(REQUIRED)}, "
                          f"found {', '.join(map(str, records[0].keys())) or 'none'}")
    onsets, durations, images = [], [], []
    for row, rec in enumerate(records, start=1):
        for col in ("onset", "duration"):
            try:
                value = float(rec[col])
            except (TypeError, ValueError):
                raise EventsError(f"{source}: row {row}, column {col}: expected a number of seconds, got {rec[col]!r}") from None
            if not np.isfinite(value) or value < 0:
                raise EventsError(f"{source}: row {row}, column {col}: expected a finite value >= 0, got {rec[col]!r}")
            (onsets if col == "onset" else durations).append(value)
        image = str(rec["image"]).strip()
        if not image or image.lower() in ("nan", "n/a", "none"):
            raise EventsError(f"{source}: row {row}, column image: expected an image id, got {rec['image']!r}")
        if not IMAGE_ID.fullmatch(image):  # ids travel on the wire and name files: letters, digits, . _ - only
            raise EventsError(f"{source}: row {row}, column image: expected at most 128 letters, digits, '.', '_' "
                              f"or '-', got {image!r}")
        images.append(image)
        if run_duration_s is not None and onsets[-1] >= run_duration_s:
            raise EventsError(f"{source}: row {row}, column onset: {onsets[-1]:g} s is past the end of the run "
                              f"({run_duration_s:g} s)")
    order = np.argsort(onsets, kind="stable")
    if not allow_overlap:
        for a, b in zip(order[:-1], order[1:], strict=True):
            if onsets[a] + durations[a] > onsets[b] + 1e-6:
                raise EventsError(f"{source}: row {b + 1}, column onset: trial starts at {onsets[b]:g} s, before the "
                                  f"trial in row {a + 1} ends ({onsets[a] + durations[a]:g} s); trials must not overlap")
    return Events(np.asarray(onsets)[order], np.asarray(durations)[order], tuple(images[i] for i in order))


def read_events(path: str | Path, run_duration_s: float | None = None, allow_overlap: bool = False) -> Events:
    """Read a BIDS-style tab-separated events file (columns onset, duration, image; others ignored)."""
    path = Path(path)
    try:
        with open(path, newline="") as fh:
            records = list(csv.DictReader(fh, delimiter="\t"))
    except OSError as exc:
        raise EventsError(f"{path}: cannot read the events table ({exc.strerror or exc})") from None
    return events_from_records(records, source=str(path), run_duration_s=run_duration_s, allow_overlap=allow_overlap)


def write_events(path: str | Path, events: Events) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh, delimiter="\t", lineterminator="\n")
        writer.writerow(["onset", "duration", "trial_type", "image", "trial"])  # BIDS columns first
        for r in events.rows():
            writer.writerow([f"{r['onset']:.3f}", f"{r['duration']:.3f}", "stimulus", r["image"], r["trial"]])
    return path
