"""The scanner side's intake: files that arrived wait here until they are read (whole volumes, or
slices gathered into volumes) and handed to their run's sequencer, or set aside with their reason.

Part of :class:`rtdecode.scanner.side.ScannerSide`'s one loop (one thread): the loop calls
:meth:`Intake.collect` and :meth:`Intake.take_due` each step and owns what happens at a run's end.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from re import Pattern

import nibabel as nib
import numpy as np

from rtdecode.base.errors import ConfigError, IngestError, PartialFileError
from rtdecode.base.naming import parse_name
from rtdecode.base.settings import SessionConfig
from rtdecode.base.storage import unique_path
from rtdecode.ingest.reader import Volume, read_volume
from rtdecode.ingest.slices import Slice, assemble, read_slice
from rtdecode.ingest.watcher import FolderWatcher
from rtdecode.preprocess.pipeline import Mask
from rtdecode.scanner.history import recorded_elsewhere, volume_name
from rtdecode.scanner.runs import RunBook, RunState

log = logging.getLogger("rtdecode.scanner.side")  # the scanner side's one logger: its lines read as before


@dataclass
class Pending:
    """A file seen in the watch folder and not yet taken."""

    path: Path
    first_seen: float
    retry_at: float
    volume: Volume | None = None  # read, and waiting for the open run (a newer series); reused while unchanged
    stamp: tuple[int, int] = (0, 0)  # (size, mtime_ns) of the file as it was read


def load_mask(config: SessionConfig) -> Mask | None:
    """``preprocess.mask`` read as a 3-D mask (None when not set); a bad file is a configuration error."""
    path = config.preprocess.mask
    if path is None:
        return None
    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj) > 0
    except Exception as exc:
        raise ConfigError(f"preprocess.mask: cannot read {path} as NIfTI ({exc})") from None
    if data.ndim != 3 or not data.any():
        raise ConfigError(f"preprocess.mask: expected a 3-D mask with at least one voxel, got shape {data.shape} with {int(data.sum())} voxels")
    return Mask(data, np.asarray(img.affine, float))


def load_session_reference(config: SessionConfig) -> Volume | None:
    """``preprocess.session_reference`` read as a volume (None when not set)."""
    path = config.preprocess.session_reference
    if path is None:
        return None
    try:
        return read_volume(path)
    except (IngestError, OSError) as exc:
        raise ConfigError(f"preprocess.session_reference: cannot read {path} ({exc})") from None


def move_aside(path: Path, quarantine: Path) -> str:
    """Move a file that cannot be used into ``quarantine``; a note of where it went (or why it stayed)."""
    moved = ""
    try:
        if path.exists():
            quarantine.mkdir(parents=True, exist_ok=True)
            target = unique_path(quarantine, path.name)  # two rejections of one name keep two copies
            shutil.move(str(path), target)
            moved = f" (moved to {target})"
    except OSError:
        moved = " (left in place: watch folder not writable)"
    return moved


class Intake:
    """The files that wait: read, placed in their run (opening a new run for a new series), or set aside.

    Args:
        config: the session's settings (``scanner`` section).
        regex: the compiled file-name pattern.
        book: the session's runs.
        folder_path: the session folder (to spot another session's series).
        identity: subject and session, for the messages.
        reject: ``reject(path, reason)`` sets a file aside.
        end_run: ``end_run(run, reason)`` ends a run (a new series ends the open one).
        status: ``status(state)`` publishes the scanner side's state.
    """

    def __init__(self, config: SessionConfig, regex: Pattern, book: RunBook, folder_path: Path, identity: dict,
                 reject: Callable[[Path, str], None], end_run: Callable[[RunState, str], None],
                 status: Callable[[str], None]) -> None:
        self.config, self.regex, self.book = config, regex, book
        self.folder_path, self.identity = folder_path, identity
        self._reject, self._end_run, self._status = reject, end_run, status
        self.pending: dict[str, Pending] = {}
        self.waiting_logged: set[int] = set()  # series waiting for start_run, said once each

    def collect(self, watcher: FolderWatcher, timeout: float) -> None:
        """What the watcher has handed over within ``timeout`` s, kept as pending."""
        path = watcher.get(timeout)
        while path is not None:
            self.pending.setdefault(path.name, Pending(path, time.monotonic(), 0.0))
            self.pending[path.name].path = path
            path = watcher.get(0)

    def take_due(self, now: float) -> bool:
        """Take every pending file whose retry time has come; True if any was done."""
        did = False
        for name in sorted(self.pending):
            pend = self.pending.get(name)
            if pend is not None and pend.retry_at <= now:
                did |= self.take(pend, now)
        return did

    def take(self, pend: Pending, now: float) -> bool:
        """Read one pending file and give it to its run (False: it waits, or it was gone or not ours)."""
        path = pend.path
        key = parse_name(self.regex, path.name)
        if key is None:
            self.pending.pop(path.name, None)
            return False
        run = self.book.get(key.run)
        if run is None and not self.book.armed:
            # A new series while disarmed: the file stays where it is, unread, until start_run.
            if key.run not in self.waiting_logged:
                self.waiting_logged.add(key.run)
                log.warning("series %d: waiting for start run (stopped by the operator)", key.run)
                self._status("waiting_for_start")
            pend.retry_at = now + 0.5
            return False
        sc = self.config.scanner
        try:
            volume, before = self._read(pend)
        except FileNotFoundError:
            self.pending.pop(path.name, None)
            return False
        except PartialFileError as exc:
            if now - pend.first_seen < self.config.scanner.partial_timeout_s:
                pend.retry_at = now + min(0.05, self.config.scanner.poll_interval_s)
                return False
            self._reject(path, f"{exc.reason}; still incomplete after {self.config.scanner.partial_timeout_s:g} s")
            return True
        except IngestError as exc:
            self._reject(path, exc.reason)
            return True
        except Exception as exc:  # a reader bug or an odd file: set aside, never the end of the session
            self._reject(path, f"cannot read: {type(exc).__name__}: {exc}")
            return True
        volume.meta["t_file"] = before.st_mtime
        index = volume.volume if sc.slices_per_volume else key.volume
        if index >= sc.volumes_per_run:  # never a gap of hundreds of "missing" volumes in a run
            self._reject(path, f"volume index {index} is beyond scanner.volumes_per_run ({sc.volumes_per_run}): "
                               f"a run has volumes 0 to {sc.volumes_per_run - 1}")
            return True
        series_key = self.book.series_key_of(key.run, volume)  # an XA split export: its acquisition's run
        run = self.book.get(series_key)
        if run is None and self.book.holds_back(series_key, now, self.series()):
            # A newer series: kept (read, file in place) until the open run has taken its own files.
            pend.volume, pend.stamp, pend.retry_at = volume, (before.st_size, before.st_mtime_ns), now
            return False
        self.pending.pop(path.name, None)
        run = self._run_for(series_key, index, volume, path)
        if run is None:
            return True
        if not run.sequencer.holds(index):
            run.last_file = now
        if sc.slices_per_volume:
            volume = self._gather(run, volume, path, now)
            if volume is None:
                return True
        status = run.sequencer.add(index, volume, now)
        if status == "duplicate":
            # Usually a late modification event for a file already taken; a resent file looks the same.
            log.debug("%s: volume %d of run %d already received; duplicate ignored", path.name, key.volume, run.number)
        elif status == "late":
            self._reject(path, f"{volume_name(key.volume)} arrived after it was declared missing")
        return True

    def _read(self, pend: Pending) -> tuple[Volume, os.stat_result]:
        """The file as a volume (or a slice), and its stat before reading; raises what the readers raise."""
        sc, path = self.config.scanner, pend.path
        before = path.stat()
        if pend.volume is not None and pend.stamp == (before.st_size, before.st_mtime_ns):
            return pend.volume, before
        if sc.slices_per_volume:
            volume = read_slice(path, sc.slices_per_volume, sc.slice_grouping)
        else:
            volume = read_volume(path, sc.format)
        after = path.stat()
        if (before.st_size, before.st_mtime_ns) != (after.st_size, after.st_mtime_ns):
            raise PartialFileError(path, "file changed while it was read")
        if not sc.slices_per_volume and (volume.data.ndim != 3 or min(volume.data.shape) < 2):
            raise IngestError(path, f"not a volume: image of shape {tuple(volume.data.shape)} "
                                    "(a single slice or a 2-D image; one-file-per-slice series are not assembled)")
        return volume, before

    def _gather(self, run: RunState, piece: Slice, path: Path, now: float) -> Volume | None:
        """Keep a slice until its volume has all its slices; then the assembled volume."""
        n, index = self.config.scanner.slices_per_volume, piece.volume
        if run.sequencer.holds(index):
            log.debug("%s: a slice of volume %d of run %d, already assembled; duplicate ignored", path.name, index,
                      run.number)
            return None
        if index < run.sequencer.next_index:
            self._reject(path, f"a slice of {volume_name(index)}, which was declared missing before it was complete")
            return None
        parts = run.slices.setdefault(index, {})
        parts[path.name] = piece
        if len(parts) < n:
            return None
        del run.slices[index]
        try:
            volume = assemble(list(parts.values()))
        except IngestError as exc:
            for part in [parts[k] for k in sorted(parts)]:
                self._reject(Path(part.source), f"{volume_name(index)} not assembled from its {n} slices: {exc.reason}")
            return None
        volume.meta["t_file"] = max(p.meta.get("t_file", 0.0) for p in parts.values())
        return volume

    def drop_slices(self, run: RunState, index: int, why: str) -> int:
        """Set aside the slices of a volume that will not be processed; how many there were."""
        parts = run.slices.pop(index, {})
        for part in [parts[k] for k in sorted(parts)]:
            self._reject(Path(part.source), f"{why} ({len(parts)} of {self.config.scanner.slices_per_volume} slices arrived)")
        return len(parts)

    def _run_for(self, series_key: int, index: int, volume: Volume, path: Path) -> RunState | None:
        """The run a volume belongs to (a new series opens one, ending the open run); None: set aside."""
        run = self.book.get(series_key)
        if run is None:
            stray = self.book.stray(series_key)
            if stray is not None:
                self._reject(path, stray)
                return None
            elsewhere = recorded_elsewhere(self.folder_path, volume.series)
            if elsewhere is not None:  # a previous participant's file left in a shared watch folder
                self._reject(path, f"series {series_key} (SeriesInstanceUID {volume.series}) was recorded by "
                                   f"another session ({elsewhere}): not a run of sub-{self.identity['subject']} "
                                   f"ses-{self.identity['session']}")
                return None
            if self.book.open_run is not None:
                self._end_run(self.book.open_run, "new series")
            return self.book.open(series_key, volume.series)
        if run.series_uid and volume.series and volume.series != run.series_uid:
            self._reject(path, f"series changed mid-run: header says {volume.series}, run {run.number} is {run.series_uid}")
            return None
        if run.ended:
            if index in run.sequencer.done:
                return run  # a duplicate of a finished run: reported as such by the sequencer
            why = "run stopped by operator" if run.end_reason == "stopped by operator" else \
                f"belongs to run {run.number} (series {series_key}), which has ended ({run.end_reason})"
            self._reject(path, why)
            return None
        return run

    def series(self) -> set[int]:
        """The series of the files that wait to be read."""
        keys = (parse_name(self.regex, name) for name in self.pending)
        return {k.run for k in keys if k is not None}
