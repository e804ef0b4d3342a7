"""The scanner side: watch a folder, read each volume, preprocess it, store it, publish it.

One loop in one thread owns all state, so volumes are handled strictly in order; the watcher's
threads only hand over paths. Nothing received is lost: every volume, its motion and QA are in the
session folder before the next is taken, and a restart resumes each run where it stopped. Nothing a
file holds stops the loop: any failure to read or use a file sets that file aside with its reason
(``rejected.tsv`` and the quarantine folder); only configuration errors stop the process.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from rtdecode.base.errors import ConfigError
from rtdecode.base.naming import compile_pattern
from rtdecode.base.session import SessionFolder
from rtdecode.base.settings import SessionConfig
from rtdecode.base.storage import (
    FolderLock,
    SpaceWatch,
    is_storage,
    storage_error,
)
from rtdecode.bids import is_finalized
from rtdecode.bids.worker import Finalizer
from rtdecode.glm.runner import SentBeta, TrialBetas
from rtdecode.ingest.watcher import FolderWatcher
from rtdecode.scanner.close import keep_config
from rtdecode.scanner.history import session_events, volume_name
from rtdecode.scanner.intake import Intake, load_mask, load_session_reference, move_aside
from rtdecode.scanner.network import ScannerNetwork
from rtdecode.scanner.runs import CLOSED_AT_SHUTDOWN, RunBook, RunState
from rtdecode.scanner.volumes import VolumeEvent, VolumeStage, open_space
from rtdecode.wire.lifecycle import note_alive, record_start, record_warning
from rtdecode.wire.protocol import Message
from rtdecode.wire.reliable import beta_message

log = logging.getLogger(__name__)

HEARTBEAT_S = 1.0


class ScannerSide:
    """Turn the files in ``config.scanner.watch_dir`` into stored, published, masked vectors.

    Args:
        config: validated session configuration.
        publisher: optional :class:`rtdecode.wire.sockets.Publisher` for events; by default one is bound
            at ``network.host:network.events_port`` (with CURVE when the config has keys).
        on_volume: optional callback for each processed volume (live summary).
        on_beta: optional callback for each single-trial beta (a :class:`rtdecode.glm.runner.SentBeta`).
    """

    _closing = False  # set by shutdown(): the loop's end is the end of the day

    def __init__(self, config: SessionConfig, publisher=None, on_volume: Callable[[VolumeEvent], None] | None = None,
                 on_beta: Callable | None = None) -> None:
        s = config.session
        if not config.scanner.watch_dir.is_dir():  # before the session folder is made: nothing half set up
            raise ConfigError(f"scanner.watch_dir: folder does not exist: {config.scanner.watch_dir} (create it, or "
                              "point it at the folder the scanner exports to)")
        # One writer per session folder, taken before anything is written or bound (rtdecode.base.storage).
        self._lock = FolderLock(SessionFolder(s.root, s.subject, s.session, s.task).path, "rtdecode run").acquire()
        try:
            self._setup(config, publisher, on_volume, on_beta)
        except OSError as exc:
            self._lock.release()
            if is_storage(exc, self._lock.folder):
                raise storage_error(exc, self._lock.folder, "the scanner side") from None
            raise
        except BaseException:
            self._lock.release()
            raise

    def _setup(self, config: SessionConfig, publisher, on_volume: Callable[[VolumeEvent], None] | None,
               on_beta: Callable | None) -> None:
        self.config = config
        sc = config.scanner
        self.regex = compile_pattern(sc.pattern, per_slice=sc.slices_per_volume > 0)
        self.folder = SessionFolder(config.session.root, config.session.subject, config.session.session,
                                    config.session.task).create()
        self.identity = self.folder.identity
        keep_config(self.folder, config)  # for rtdecode session finalize, should this process be killed
        self.quarantine = sc.quarantine_dir or (sc.watch_dir / "rtdecode-rejected")
        mask, reference = load_mask(config), load_session_reference(config)
        voxel_space = open_space(config, self.folder, mask, reference)  # the session's one voxel set, once made
        self.net = ScannerNetwork(config, self.folder, publisher)
        self._on_beta = on_beta
        self.betas = TrialBetas(config, self.folder, self._beta_out, self._glm_error, self._no_betas)
        self._on_volume = on_volume
        self.space = SpaceWatch(self.folder.path, config.session.min_free_gb, config.session.space_check_every,
                                sc.volumes_per_run)
        self.stage = VolumeStage(config, self.betas, mask, reference, self._send, self._reject, self._volume_done,
                                 self.identity, space=voxel_space)
        self.book = RunBook(self.folder, sc.missing_timeout_s)
        self.intake = Intake(config, self.regex, self.book, self.folder.path, self.identity, self._reject,
                             self._end_run, self._status)
        self._watcher = FolderWatcher(sc.watch_dir, self.regex, sc.mode, sc.poll_interval_s)
        self._stop = threading.Event()
        self._started = False
        self._last_beat = 0.0
        self._finalizer = Finalizer(self.folder) if config.session.bids else None
        try:
            self._resume_runs()
            if self.net.publisher is not None:  # a console that joins later hears of this start (wire.lifecycle)
                record_start(self.folder.path, "scanner", self.net.publisher.boot)
            self._publish_history()
        except Exception:
            self.net.close()
            raise
        self.net.bind_control()  # bound last: a set-up error above leaves no socket behind

    # -- views kept for callers ---------------------------------------------------------------------
    @property
    def publisher(self):
        return self.net.publisher

    @property
    def processed(self) -> int:
        return self.stage.processed

    @property
    def runs(self) -> dict[int, RunState]:
        return self.book.runs

    @property
    def current(self) -> RunState | None:
        return self.book.current

    @property
    def control(self):
        return self.net.control

    # -- set-up ---------------------------------------------------------------------------------
    def _resume_runs(self) -> None:
        rows = self.folder.runs()
        for i, row in enumerate(rows):
            run = self.book.resumed_state(row, last=i == len(rows) - 1)
            self.stage.resume(run)
            self.book.add_resumed(run)
            if run.ended and not self.book.recorded(run.number):
                self.book.record_end(run, run.end_reason)  # complete before a crash, or an older session
            log.info("resuming run %d (series %d): %d volumes already stored%s", run.number, run.series_key,
                     run.n_ok, f"; {run.end_reason}" if run.ended else "")
            if run.ended and self._finalizer is not None and not is_finalized(self.folder, run.number):
                self._finalizer.submit(run.number)  # finished before a crash, never written as BIDS

    # -- the loop ---------------------------------------------------------------------------------
    def start(self) -> ScannerSide:
        if self._started:  # run() after an explicit start() carries on
            return self
        self._started = True
        self._watcher.start()
        self._status("watching" if self.book.armed else "disarmed")
        self._space_low(self.space.at_start(), None)
        return self

    def stop(self) -> None:
        self._stop.set()
        self._watcher.stop()

    def run(self, until: Callable[[ScannerSide], bool] | None = None, idle_timeout: float | None = None) -> None:
        """Process files until ``until(self)`` is true, :meth:`stop` is called, or nothing happens for ``idle_timeout`` s."""
        self.start()
        last_activity = time.monotonic()
        try:
            while not self._stop.is_set():
                if until is not None and until(self):
                    break
                if self.step(timeout=0.02):
                    last_activity = time.monotonic()
                elif idle_timeout is not None and time.monotonic() - last_activity > idle_timeout:
                    break
            if self._closing:
                self._close_day()
        except OSError as exc:
            if not is_storage(exc, self.folder.path):
                raise
            # Full or read-only storage: one line, and stop; every row stored so far is whole (a torn
            # last row is cut on the next start), and what was not stored is still in the watch folder.
            failure = storage_error(exc, self.folder.path, "the scanner side")
            log.debug("storage failure", exc_info=True)
            self._send(Message("status", {"state": "storage_error", "service": "scanner",
                                          "reason": str(failure)[:2000], **self.identity}))
            raise failure from None
        finally:
            self.close()

    def close(self) -> None:
        """Stop watching, close the sockets, finish the BIDS copies and let the next writer in."""
        self.stop()
        try:
            self.net.close()
        except OSError as exc:  # the disk filled as the last acknowledgements were recorded: resent next start
            log.warning("betas acknowledged at shutdown not recorded (%s); they are sent again on the next start", exc)
        if self._finalizer is not None:
            self._finalizer.wait()  # a run that just ended is written as BIDS before the process goes
        self._lock.release()

    def step(self, timeout: float) -> bool:
        """Take what arrived within ``timeout`` s; return True if anything was done."""
        did = False
        self.intake.collect(self._watcher, timeout)
        now = time.monotonic()
        did |= self.intake.take_due(now)
        for run in self.book:
            did |= self._drain(run)
        did |= self.net.serve(self._command)
        if now - self._last_beat >= HEARTBEAT_S:  # liveness between runs, and what the sockets refused
            self._last_beat = now
            note_alive(self.folder.path)
            # Whose session: a console still showing the previous participant's clears its page at once.
            self._send(Message("heartbeat", {"service": "scanner", "refused": self.net.refused, **self.identity}))
        return did

    def _command(self, action: str, fields: dict | None = None) -> tuple[bool, str]:
        """An operator command from the console; returns (ok, what happened)."""
        if action == "mark":
            return self._mark(fields or {})
        if action == "stop_run":
            ok, detail, run = self.book.stop()
            if run is not None:
                self._end_run(run, "stopped by operator")
            self._status("disarmed")
            return ok, detail
        if action == "start_run":
            ok, detail = self.book.arm()
            if ok:
                self.intake.waiting_logged.clear()
                self._status("armed")
            return ok, detail
        return False, f"unknown command {action!r}; expected start_run, stop_run or mark"

    def _mark(self, f: dict) -> tuple[bool, str]:
        """A trial marked bad (or the mark removed): written to marks.tsv, then sent to every console."""
        missing = [k for k in ("run", "trial", "version", "bad") if k not in f]
        if missing:
            return False, f"mark: missing field(s) {', '.join(missing)}"
        if int(f["run"]) not in {r.number for r in self.book.runs.values()}:
            return False, f"mark: no run {f['run']} in this session"
        note = " ".join(str(f.get("note", "")).split())
        self.folder.log_mark(int(f["run"]), int(f["trial"]), str(f["version"]), bool(f["bad"]), note)
        self._send(Message("mark", {"run": int(f["run"]), "trial": int(f["trial"]), "version": str(f["version"]),
                                    "bad": bool(f["bad"]), **({"note": note} if note else {})}))
        what = "marked bad" if f["bad"] else "mark removed"
        return True, f"run {f['run']} trial {f['trial']} {what}"

    def _publish_history(self) -> None:
        """After a restart: the session so far, from its folder and in the order it happened (files set
        aside, end reasons, marks included), so consoles that join get all of it."""
        if self.net.publisher is None:
            return
        settings = {"fd_threshold_mm": self.config.preprocess.fd_threshold_mm, "tr_s": self.config.scanner.tr_s,
                    "volumes_per_run": self.config.scanner.volumes_per_run}
        ends = {run.number: run.end_reason if run.ended else None for run in self.book.runs.values()}
        for msg in session_events(self.folder.path, settings, ends):
            self._send(msg if msg.type in ("volume", "volume_missing", "mark") else
                       Message(msg.type, {**msg.fields, **self.identity}, images=msg.images, time=msg.time))

    def _drain(self, run: RunState) -> bool:
        if run.ended:
            return False
        did = False
        for delivery in run.sequencer.pop_ready(time.monotonic()):
            did = True
            if delivery.missing:
                got = self.intake.drop_slices(run, delivery.index, f"{volume_name(delivery.index)} declared missing")
                slices = f" ({got} of {self.config.scanner.slices_per_volume} slices)" if self.config.scanner.slices_per_volume else ""
                log.warning("run %d: %s missing after %.1f s%s; its row is dropped", run.number, volume_name(delivery.index),
                            self.config.scanner.missing_timeout_s, slices)
                self.stage.missing(run, delivery.index)
            else:
                self.stage.deliver(run, delivery.index, delivery.item)
        if not run.ended and run.sequencer.next_index >= self.config.scanner.volumes_per_run:
            self._end_run(run, "complete")
        return did

    def shutdown(self) -> None:
        """The end of the day (Ctrl-C, SIGTERM; safe in a signal handler): :meth:`run` stores what is on disk,
        closes the open run if its series has ended, and returns."""
        self._closing = True
        self._stop.set()

    def _close_day(self) -> None:
        """Close the open run at shutdown when no file of its series comes for ``missing_timeout_s``; a run
        whose files are still arriving stays open for the next start."""
        sc = self.config.scanner
        log.info("stopping: the volumes on disk first (Ctrl-C again to stop at once)")
        self._watcher.scan()
        while self.step(0.02):
            pass  # what is already on disk first
        run = self.book.open_run
        if run is None:
            return
        seen, deadline = run.last_file, time.monotonic() + sc.missing_timeout_s + sc.partial_timeout_s + 1.0
        log.info("run %d: closing unless series %d goes on within %g s", run.number, run.series_key, sc.missing_timeout_s)
        while not run.ended and run.last_file == seen and time.monotonic() < deadline:
            if time.monotonic() - run.last_file >= sc.missing_timeout_s and not self.book.busy(run, self.intake.series()):
                self._end_run(run, CLOSED_AT_SHUTDOWN)
                return
            self.step(0.05)
        if not run.ended:
            text = (f"run {run.number} left open: series {run.series_key} was still arriving; the next start "
                    "resumes it (rtdecode session finalize closes it)")
            log.warning("%s", text)
            when = time.time()  # kept for consoles that join after this process is gone
            record_warning(self.folder.path, "scanner", text, when)
            self._send(Message("status", {"state": "warning", "service": "scanner", "reason": text, **self.identity},
                               time=when))

    def _end_run(self, run: RunState, reason: str) -> None:
        at = time.time()  # run_ends.tsv's time: every console, live, late or replayed, logs the end then
        self.book.record_end(run, reason)
        for index, (volume, _t) in sorted(run.sequencer.take_buffered().items()):
            # Read but not yet in order when the run ended: kept in quarantine with the reason.
            self._reject(Path(volume.source), f"{volume_name(index)} arrived but run {run.number} ended ({reason})")
        for index in sorted(run.slices):
            self.intake.drop_slices(run, index, f"{volume_name(index)} incomplete when run {run.number} ended ({reason})")
        self.stage.end(run, reason, at)
        if self._finalizer is not None:
            self._finalizer.submit(run.number)

    def _reject(self, path: Path, reason: str) -> None:
        self.intake.pending.pop(path.name, None)
        log.error("%s set aside: %s", path.name, reason)
        moved = move_aside(path, self.quarantine)
        self.folder.reject(path.name, reason + moved)
        # Whose session it is: a console opened before the first run names the participant from it.
        self._send(Message("volume_rejected", {"path": path.name[:255], "reason": reason[:2000], **self.identity}))

    def _send(self, message: Message) -> None:
        self.net.publish(message)

    def _volume_done(self, ev: VolumeEvent) -> None:
        """After each stored volume: the free-space look (every few volumes), then the caller's callback."""
        stored = self.folder.path / "func" / f"{self.folder.prefix(ev.run)}_bold" / f"vol-{ev.index:06d}.nii"
        self._space_low(self.space.after_volume(ev.run, ev.index, stored), ev.run)
        if self._on_volume is not None:
            self._on_volume(ev)

    def _space_low(self, line: str | None, run: int | None) -> None:
        if line is not None:
            log.warning("%s", line)
            self._send(Message("status", {"state": "storage_low", "service": "scanner", "reason": line[:2000],
                                          **({"run": run} if run is not None else {}), **self.identity}))

    def _beta_out(self, beta: SentBeta, resumed: bool) -> None:
        """The GLM stage's beta as a message: published when new, and handed to the decoder's channel
        (which skips what the decoder already acknowledged)."""
        message = beta_message(beta.run, beta.trial, beta.vector, self.identity, image=beta.image,
                               version=beta.version, onset=beta.onset, n_frames=beta.n_frames,
                               n_repeats=beta.n_repeats, estimate_ms=round(beta.estimate_ms, 3))
        if not resumed:
            self._send(message)
        if self.net.deliver is not None:
            self.net.deliver(message, resumed=resumed)
        if not resumed and self._on_beta is not None:
            self._on_beta(beta)

    def _no_betas(self, run: int, reason: str) -> None:
        """A run that will give no betas (no events table): a warning every console shows on that run."""
        self._send(Message("status", {"state": "no_betas", "service": "scanner", "run": run, "reason": reason[:2000],
                                      **self.identity}))

    def _glm_error(self, run: int, reason: str) -> None:
        self._send(Message("status", {"state": "glm_error", "service": "scanner", "run": run, "reason": reason,
                                      **self.identity}))

    def _status(self, state: str) -> None:
        self._send(Message("status", {"state": state, "service": "scanner", **self.identity}))
