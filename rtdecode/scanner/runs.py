"""Run bookkeeping of the scanner side: which series is which run, which runs are open, armed or stopped.

No I/O beyond the session folder's tables and no per-volume work: :class:`RunBook` answers "where does a
file of series S go?" and remembers the operator's decisions across restarts (``operator.tsv``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from rtdecode.preprocess.pipeline import RunPreprocessor
from rtdecode.sequencer import RunSequencer
from rtdecode.session import RunStore, SessionFolder

log = logging.getLogger(__name__)


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
    ended: bool = False
    end_reason: str = ""  # "" while open; "complete", "new series" or "stopped by operator"

    def release(self) -> None:
        """Drop what only an open run needs (reference, QA history, held volumes): ended runs cost ~nothing."""
        self.preprocessor = None
        self.held = []
        self.slices = {}


class RunBook:
    """Runs of one session by scanner series; the current run; whether a new series may start a run.

    ``armed`` starts true, so a scanner that simply starts the next series gets a new run. An operator's
    ``stop_run`` ends the current run and disarms: files of a new series then wait (kept, unread) until
    ``start_run`` arms again, and later files of the stopped series are set aside.
    """

    def __init__(self, folder: SessionFolder, missing_timeout_s: float) -> None:
        self.folder = folder
        self.missing_timeout_s = missing_timeout_s
        self.runs: dict[int, RunState] = {}  # by series key
        self.current: RunState | None = None
        log_rows = folder.operator_log()
        self._stopped_at_start = {int(r["run"]) for r in log_rows if r["action"] == "stop_run" and r["run"].isdigit()}
        actions = [r["action"] for r in log_rows if r["action"] in ("stop_run", "start_run")]
        self.armed = not actions or actions[-1] == "start_run"

    def new_state(self, number: int, key: int, uid: str) -> RunState:
        run = RunState(number, key, uid, self.folder.run_store(number), RunSequencer(self.missing_timeout_s))
        if number in self._stopped_at_start:
            run.ended, run.end_reason = True, "stopped by operator"
        return run

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
