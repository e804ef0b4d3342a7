"""Finalising runs in a background thread, so the scanner side never waits for a run's BIDS files."""

from __future__ import annotations

import logging
import queue
import threading
from pathlib import Path

from rtdecode.base.session import SessionFolder
from rtdecode.bids.dataset import Stimuli, write_dataset_files
from rtdecode.bids.lock import DatasetBusy
from rtdecode.bids.run import FinalizeError, finalize_run
from rtdecode.bids.sidecars import configured_stimuli

log = logging.getLogger(__name__)


class Finalizer:
    """One worker thread taking run numbers; a failure is one log line, never the scanner side's end."""

    def __init__(self, folder: SessionFolder) -> None:
        self.folder = folder
        self.done: dict[int, str] = {}  # run -> "ok" or the reason it was not finalised
        self._queue: queue.Queue[int | None] = queue.Queue()
        self._thread: threading.Thread | None = None

    def submit(self, run: int) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._work, name="bids-finalize", daemon=True)
            self._thread.start()
        self._queue.put(run)

    def _work(self) -> None:
        while True:
            try:
                run = self._queue.get(timeout=1.0)
            except queue.Empty:
                return  # idle: the thread ends; the next submit starts another
            try:
                stimuli = Stimuli(Path(self.folder.root), configured_stimuli(self.folder))  # non-built-in images too
                written = finalize_run(self.folder, run, stimuli=stimuli)
                write_dataset_files(Path(self.folder.root))
                self.done[run] = "ok"
                log.info("run %d written as BIDS (%d files)", run, len(written))
            except (FinalizeError, DatasetBusy, OSError, ValueError) as exc:
                self.done[run] = str(exc)
                log.error("run %d not written as BIDS: %s (the live record is intact; retry with "
                          "rtdecode session finalize)", run, exc)
            except Exception as exc:  # noqa: BLE001 - never take the scanner side down for its BIDS copy
                self.done[run] = f"{type(exc).__name__}: {exc}"
                log.exception("run %d not written as BIDS", run)
            finally:
                self._queue.task_done()

    def wait(self, timeout: float = 120.0) -> bool:
        """Block until every submitted run is finalised; False if ``timeout`` passed first."""
        finished = threading.Event()
        threading.Thread(target=lambda: (self._queue.join(), finished.set()), daemon=True).start()
        return finished.wait(timeout)
