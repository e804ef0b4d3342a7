"""Run bookkeeping of the scanner side: which series is which run, which runs are open, armed or stopped.

No I/O beyond the session folder's tables and no per-volume work: :class:`RunBook` answers "where does a
file of series S go?" and remembers the operator's decisions across restarts (``operator.tsv``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from rtdecode.base.session import RunStore, SessionFolder
from rtdecode.ingest.sequencer import RunSequencer
from rtdecode.preprocess.pipeline import RunPreprocessor

log = logging.getLogger(__name__)

CLOSED_AT_SHUTDOWN = "series ended; closed at shutdown"  # rtdecode run stopped (Ctrl-C, SIGTERM) after its last volume
CLOSED_BY_FINALIZE = "closed by session finalize"  # a run left open (the process killed) closed afterwards


@dataclass
class RunState:
    number: int
    series_key: int
    series_uid: str
    store: RunStore
    sequencer: RunSequencer
    preprocessor: RunPreprocessor | None = None
    held: list = field(default_factory=list)  # volumes before the reference volume arrived
    slices: dict = field(default_factory=dict)  # per-slice exports: volume index -> {file name: Slice}
    n_ok: int = 0
    n_missing: int = 0  # volumes declared missing (the run-end line says how many)
    ended: bool = False
    end_reason: str = ""  # "" while open; "complete", "new series", "stopped by operator", or closed (CLOSED_*)
    last_file: float = field(default_factory=time.monotonic)  # when a file of this run was last read (monotonic s)
    held_back: set = field(default_factory=set)  # newer series told to wait for this run (logged once each)

    def release(self) -> None:
        """Drop what only an open run needs (reference, QA history, held volumes): ended runs cost ~nothing."""
        self.preprocessor = None
        self.held = []
        self.slices = {}


class RunBook:
    """Runs of one session by scanner series; the current run; whether a new series may start a run.

    ``armed`` starts true, so a scanner that simply starts the next series gets a new run. An operator's
    ``stop_run`` ends the current run and disarms: files of a new series then wait (kept, unread) until
    ``start_run`` arms again, and later files of the stopped series are set aside. Every run's end is
    recorded (``run_ends.tsv``), so a restart resumes only the run that was still open.
    """

    def __init__(self, folder: SessionFolder, missing_timeout_s: float) -> None:
        self.folder = folder
        self.missing_timeout_s = missing_timeout_s
        self.runs: dict[int, RunState] = {}  # by series key
        self.current: RunState | None = None
        log_rows = folder.operator_log()
        self._stopped_at_start = {int(r["run"]) for r in log_rows if r["action"] == "stop_run" and r["run"].isdigit()}
        self._ends = folder.run_ends()
        actions = [r["action"] for r in log_rows if r["action"] in ("stop_run", "start_run")]
        self.armed = not actions or actions[-1] == "start_run"
        self._split: set[str] = set()  # acquisitions read as split into a series per volume (their series_uid)

    def new_state(self, number: int, key: int, uid: str) -> RunState:
        run = RunState(number, key, uid, self.folder.run_store(number), RunSequencer(self.missing_timeout_s))
        if number in self._ends:
            run.ended, run.end_reason = True, self._ends[number]
        elif number in self._stopped_at_start:
            run.ended, run.end_reason = True, "stopped by operator"
        return run

    def resumed_state(self, row: dict[str, str], last: bool) -> RunState:
        """A run of ``runs.tsv`` as a restart finds it; a run before the last one ended when the next began
        (sessions recorded before run_ends.tsv say no more)."""
        run = self.new_state(int(row["run"]), int(row["series"]), row.get("series_uid", ""))
        if not run.ended and not last:
            run.ended, run.end_reason = True, "new series"
        return run

    def record_end(self, run: RunState, reason: str) -> None:
        """Write the run's end before anything else is done for it (a crash then resumes it as ended)."""
        self.folder.log_run_end(run.number, reason, run.n_ok)
        self._ends[run.number] = reason

    def recorded(self, number: int) -> bool:
        return number in self._ends

    def busy(self, run: RunState, pending_series: set[int], below: int | None = None) -> bool:
        """Whether files of ``run``'s series wait to be read, or read volumes wait for a gap to be declared.

        For a split acquisition (XA interoperability) every volume has a series number of its own above
        the run's, so a waiting file numbered above it (below ``below``, when given) may be the run's."""
        if run.sequencer.pending or run.series_key in pending_series:
            return True
        return run.series_uid in self._split and any(
            run.series_key < key and (below is None or key < below) for key in pending_series)

    def holds_back(self, series_key: int, now: float, pending_series: set[int]) -> bool:
        """Whether a new series' file waits: the open run first takes every file of its own on disk (after a
        restart or a burst), and a last volume landing up to ``missing_timeout_s`` after its newest one.

        A file still waiting to be read under a series number between the open run's and the new one's
        holds the new series back too: series numbers rise through a session, so it comes first, and in
        an XA interoperability export it may be the open run's own volume (a series of its own, 7003 in
        run 7001), unknown until it can be read. It waits ``partial_timeout_s`` at most."""
        run = self.open_run
        if run is None or self.stray(series_key) is not None:
            return False
        between = any(run.series_key < key < series_key for key in pending_series)
        if not between and not self.busy(run, pending_series, series_key) and now - run.last_file >= self.missing_timeout_s:
            return False
        if series_key not in run.held_back:
            run.held_back.add(series_key)
            log.info("series %d waits until run %d (series %d) has taken its volumes", series_key, run.number,
                     run.series_key)
        return True

    def stray(self, series_key: int) -> str | None:
        """Why a file of a series no run has yet must not start one now; None when it may.

        Series numbers rise through a session: a lower one while a run is open is a stray (a file copied in,
        an older series exported late), never the next run."""
        run = self.open_run
        if run is None or series_key > run.series_key:
            return None
        return (f"series {series_key} is older than series {run.series_key} of run {run.number}, which is in "
                "progress: not a new run (if the scanner restarted its numbering: stop run, then start run)")

    def series_key_of(self, file_series: int, volume: Any) -> int:
        """The series key a read file belongs to: the one its name gives, except for a volume of an acquisition
        split into a series per volume (Siemens XA interoperability, MFSPLIT), which joins the run its
        acquisition already has (same acquisition identity in ``series_uid``, across restarts too). Split
        acquisitions are remembered, so :meth:`busy` knows their runs' volumes come under numbers of their own."""
        if not volume.meta.get("split_series") or not volume.series:
            return file_series
        self._split.add(volume.series)
        if file_series in self.runs:
            return file_series
        return next((r.series_key for r in self.runs.values() if r.series_uid == volume.series), file_series)

    def add_resumed(self, run: RunState) -> None:
        self.runs[run.series_key] = run
        self.current = run

    def open(self, series_key: int, series_uid: str) -> RunState:
        """A new run for a new series (the caller ends the current one first)."""
        number = max((r.number for r in self.runs.values()), default=0) + 1
        run = self.new_state(number, series_key, series_uid)
        self.folder.add_run(number, series_key, series_uid)
        self.runs[series_key] = run
        self.current = run
        log.info("series %d -> run %d", series_key, number)
        return run

    def get(self, series_key: int) -> RunState | None:
        return self.runs.get(series_key)

    @property
    def open_run(self) -> RunState | None:
        run = self.current
        return run if run is not None and not run.ended else None

    def stop(self) -> tuple[bool, str, RunState | None]:
        run = self.open_run
        self.armed = False
        if run is None:
            self.folder.log_operator("stop_run", None, "no run in progress; disarmed")
            return False, "no run in progress (a new series now waits for start run)", None
        detail = f"run {run.number} ended by the operator after {run.n_ok} volumes"
        self.folder.log_operator("stop_run", run.number, detail)  # before the end: a crash now still stops it
        return True, detail, run

    def arm(self) -> tuple[bool, str]:
        run = self.open_run
        if run is not None:
            return False, f"run {run.number} is still in progress; stop it first"
        self.armed = True
        self.folder.log_operator("start_run", None, "armed")
        return True, "armed: the next series starts a new run"

    def __iter__(self):
        return iter(list(self.runs.values()))

    def __len__(self) -> int:
        return len(self.runs)
