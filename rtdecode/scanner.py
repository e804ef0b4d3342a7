"""The scanner side: watch a folder, read each volume, preprocess it, store it, publish it.

One loop in one thread owns all state, so volumes are handled strictly in order; the watcher's
threads only hand over paths. Nothing received is lost: every volume, its motion and QA are in the
session folder before the next is taken, and a restart resumes each run where it stopped.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from rtdecode.config import SessionConfig
from rtdecode.errors import ConfigError, IngestError, PartialFileError
from rtdecode.glm.runner import TrialBetas
from rtdecode.ingest.naming import compile_pattern, parse_name
from rtdecode.ingest.reader import Volume, read_volume
from rtdecode.preprocess.pipeline import Mask, RunPreprocessor
from rtdecode.protocol import Message
from rtdecode.sequencer import RunSequencer
from rtdecode.session import RunStore, SessionFolder
from rtdecode.watcher import FolderWatcher

log = logging.getLogger(__name__)


@dataclass
class VolumeEvent:
    """What the scanner side reports for each processed volume (also sent on the wire)."""

    run: int
    index: int
    motion: np.ndarray  # mm and degrees
    fd: float
    dvars: float
    tsnr: float
    latency_ms: float
    vector: np.ndarray


@dataclass
class _Run:
    number: int
    series_key: int
    series_uid: str
    store: RunStore
    sequencer: RunSequencer
    preprocessor: RunPreprocessor | None = None
    held: list = field(default_factory=list)  # volumes before the reference volume arrived
    n_ok: int = 0
    ended: bool = False


@dataclass
class _Pending:
    path: Path
    first_seen: float
    retry_at: float


class ScannerSide:
    """Turn the files in ``config.scanner.watch_dir`` into stored, published, masked vectors.

    Args:
        config: validated session configuration.
        publisher: optional :class:`rtdecode.transport.Publisher` for events.
        on_volume: optional callback for each processed volume (live summary).
        on_beta: optional callback for each single-trial beta (estimate, vector as sent).
    """

    def __init__(self, config: SessionConfig, publisher=None, on_volume: Callable[[VolumeEvent], None] | None = None,
                 on_beta: Callable | None = None) -> None:
        self.config = config
        sc = config.scanner
        self.regex = compile_pattern(sc.pattern)
        self.folder = SessionFolder(config.session.root, config.session.subject, config.session.session, config.session.task).create()
        self.publisher = publisher
        self.on_volume = on_volume
        self.beta_sender = None
        if config.network.decoder:
            from rtdecode.reliable import BetaSender

            curve = None
            if config.network.curve_secret is not None:
                from rtdecode.security import client_options

                curve = client_options(config.network.curve_secret, config.network.curve_decoder_key)
            self.beta_sender = BetaSender(config.network.decoder, self.folder.derivatives / "betas_acked.keys",
                                          resend_s=config.network.resend_s, curve=curve,
                                          queued=self.folder.derivatives / "betas_queued.keys")
        self.betas = TrialBetas(config, self.folder, self._send, on_beta,
                                deliver=self.beta_sender.send if self.beta_sender else None)
        self.quarantine = sc.quarantine_dir or (sc.watch_dir / "rtdecode-rejected")
        self.mask = self._load_mask()
        self.session_reference = self._load_session_reference()
        self.runs: dict[int, _Run] = {}
        self.current: _Run | None = None
        self._pending: dict[str, _Pending] = {}
        self._watcher = FolderWatcher(sc.watch_dir, self.regex, sc.mode, sc.poll_interval_s)
        self._stop = threading.Event()
        self._started = False
        self.processed = 0
        self._resume_runs()
        self.control = None  # bound last: a set-up error above leaves no socket behind
        if config.network.control_port >= 0:
            from rtdecode.control import ControlServer

            self.control = ControlServer(f"tcp://{config.network.host}:{config.network.control_port}")

    # -- set-up ---------------------------------------------------------------------------------
    def _load_mask(self) -> Mask | None:
        path = self.config.preprocess.mask
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

    def _load_session_reference(self) -> Volume | None:
        path = self.config.preprocess.session_reference
        if path is None:
            return None
        try:
            return read_volume(path)
        except (IngestError, OSError) as exc:
            raise ConfigError(f"preprocess.session_reference: cannot read {path} ({exc})") from None

    def _resume_runs(self) -> None:
        for row in self.folder.runs():
            number, key = int(row["run"]), int(row["series"])
            run = self._new_run_state(number, key, row.get("series_uid", ""))
            rows, vectors = run.store.load()
            for r in rows:
                idx = int(r["volume"])
                if r["status"] == "ok":
                    run.sequencer.done.add(idx)
                run.sequencer.next_index = max(run.sequencer.next_index, idx + 1)
            run.n_ok = len(vectors)
            ref = run.store.load_reference()
            if ref is not None and run.n_ok:
                boldref, mask_img = ref
                reference = Volume(np.asarray(boldref.dataobj, np.float32), np.asarray(boldref.affine), series=run.series_uid)
                run.preprocessor = self._make_preprocessor(reference, Mask(np.asarray(mask_img.dataobj) > 0, np.asarray(mask_img.affine)))
                params = np.array([[float(r[c]) for c in ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z")] for r in rows if r["status"] == "ok"])
                params[:, 3:] = np.deg2rad(params[:, 3:])
                run.preprocessor.resume(params, vectors)
            run.ended = len(rows) >= self.config.scanner.volumes_per_run
            if run.preprocessor is not None:
                self.betas.resume_run(number, key, rows, vectors)
                if run.ended:
                    self.betas.end_run(number)  # in case the process stopped between the last volume and here
            self.runs[key] = run
            self.current = run
            log.info("resuming run %d (series %d): %d volumes already stored", number, key, run.n_ok)

    def _new_run_state(self, number: int, key: int, uid: str) -> _Run:
        return _Run(number, key, uid, self.folder.run_store(number), RunSequencer(self.config.scanner.missing_timeout_s))

    def _make_preprocessor(self, reference: Volume, mask: Mask | None) -> RunPreprocessor:
        pp = self.config.preprocess
        return RunPreprocessor(reference, mask=mask, session_reference=self.session_reference,
                               mask_threshold=pp.mask_threshold, sample_stride=pp.sample_stride,
                               max_iterations=pp.max_iterations)

    # -- the loop ---------------------------------------------------------------------------------
    def start(self) -> ScannerSide:
        if self._started:  # run() after an explicit start() carries on
            return self
        self._started = True
        self._watcher.start()
        self._status("watching")
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
        finally:
            self.stop()
            if self.control is not None:
                self.control.close()
                self.control = None
            if self.beta_sender is not None:
                # Let the decoder acknowledge what is in flight; anything left is resent on the next start.
                deadline = time.monotonic() + self.config.network.drain_s
                while self.beta_sender.outbox and time.monotonic() < deadline:
                    self.beta_sender.pump(100)
                if self.beta_sender.outbox:
                    log.warning("%d beta(s) not yet acknowledged by the decoder; they are resent on the next start",
                                len(self.beta_sender.outbox))
                self.beta_sender.close()
                self.beta_sender = None

    def step(self, timeout: float) -> bool:
        """Take what arrived within ``timeout`` s; return True if anything was done."""
        did = False
        path = self._watcher.get(timeout)
        while path is not None:
            self._pending.setdefault(path.name, _Pending(path, time.monotonic(), 0.0))
            self._pending[path.name].path = path
            path = self._watcher.get(0)
        now = time.monotonic()
        for name in sorted(self._pending):
            pend = self._pending[name]
            if pend.retry_at <= now:
                did |= self._take(pend, now)
        for run in list(self.runs.values()):
            did |= self._drain(run)
        if self.beta_sender is not None:
            self.beta_sender.pump(0)
        if self.publisher is not None:
            self.publisher.serve()  # replay recent events to a console that just joined
        if self.control is not None:
            did |= self.control.serve(self._command)
        return did

    def _command(self, action: str) -> tuple[bool, str]:
        """An operator command from the console; returns (ok, what happened)."""
        if action == "stop_run":
            run = self.current
            if run is None or run.ended:
                return False, "no run in progress"
            self._end_run(run)
            return True, f"run {run.number} ended by the operator after {run.n_ok} volumes"
        if action == "start_run":
            if self.current is not None and not self.current.ended:
                return False, f"run {self.current.number} is still in progress; stop it first"
            self._status("armed")
            return True, "armed: the next series starts a new run"
        return False, f"unknown command {action!r}; expected start_run or stop_run"

    def _take(self, pend: _Pending, now: float) -> bool:
        path = pend.path
        key = parse_name(self.regex, path.name)
        try:
            before = path.stat()
            volume = read_volume(path, self.config.scanner.format)
            after = path.stat()
            if (before.st_size, before.st_mtime_ns) != (after.st_size, after.st_mtime_ns):
                raise PartialFileError(path, "file changed while it was read")
        except FileNotFoundError:
            del self._pending[path.name]
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
        del self._pending[path.name]
        volume.meta["t_file"] = before.st_mtime
        run = self._run_for(key.run, volume, path)
        if run is None:
            return True
        status = run.sequencer.add(key.volume, volume, now)
        if status == "duplicate":
            # Usually a late modification event for a file already taken; a resent file looks the same.
            log.debug("%s: volume %d of run %d already received; duplicate ignored", path.name, key.volume, run.number)
        elif status == "late":
            self._reject(path, f"volume {key.volume} arrived after it was declared missing")
        return True

    def _run_for(self, series_key: int, volume: Volume, path: Path) -> _Run | None:
        run = self.runs.get(series_key)
        if run is None:
            if self.current is not None and not self.current.ended:
                self._end_run(self.current)
            number = max((r.number for r in self.runs.values()), default=0) + 1
            run = self._new_run_state(number, series_key, volume.series)
            self.folder.add_run(number, series_key, volume.series)
            self.runs[series_key] = run
            self.current = run
            log.info("series %d -> run %d", series_key, number)
            return run
        if run.series_uid and volume.series and volume.series != run.series_uid:
            self._reject(path, f"series changed mid-run: header says {volume.series}, run {run.number} is {run.series_uid}")
            return None
        if run.ended and run is not self.current:
            if parse_name(self.regex, path.name).volume in run.sequencer.done:
                return run  # a duplicate of a finished run: reported as such by the sequencer
            self._reject(path, f"belongs to run {run.number} (series {series_key}), which has ended")
            return None
        return run

    def _drain(self, run: _Run) -> bool:
        did = False
        for delivery in run.sequencer.pop_ready(time.monotonic()):
            did = True
            if delivery.missing:
                log.warning("run %d: volume %d missing after %.1f s; its row is dropped", run.number, delivery.index, self.config.scanner.missing_timeout_s)
                run.store.append_missing(delivery.index)
                self._send(Message("volume_missing", {"run": run.number, "index": delivery.index}))
                self.betas.missing(run.number, delivery.index)
            else:
                self._deliver(run, delivery.index, delivery.item)
        if not run.ended and run.sequencer.next_index >= self.config.scanner.volumes_per_run:
            self._end_run(run)
        return did

    def _deliver(self, run: _Run, index: int, volume: Volume) -> None:
        if run.preprocessor is None:
            if index < self.config.preprocess.reference_volume:
                run.held.append((index, volume))
                return
            try:
                run.preprocessor = self._make_preprocessor(volume, self.mask)
            except IngestError as exc:
                self._reject(Path(volume.source), f"cannot serve as reference: {exc.reason}")
                run.store.append_missing(index)
                return
            pre = run.preprocessor
            run.store.save_reference(volume.data, volume.affine, pre.mask.data, pre.mask.affine)
            self._send(Message("run_started", {"run": run.number, "series": run.series_key, "shape": list(volume.data.shape), "n_voxels": pre.mask.n_voxels}))
            self.betas.start_run(run.number, run.series_key, pre.mask.n_voxels)
            held, run.held = run.held, []
            for i, v in held:
                self._process(run, i, v)
        self._process(run, index, volume)

    def _process(self, run: _Run, index: int, volume: Volume) -> None:
        assert run.preprocessor is not None
        try:
            out = run.preprocessor.process(volume, save_resampled=self.config.preprocess.save_resampled)
        except IngestError as exc:
            self._reject(Path(volume.source), exc.reason)
            run.store.append_missing(index)
            return
        t_done = time.time()
        t_file = float(volume.meta.get("t_file", t_done))
        motion = np.r_[out.params[:3], np.rad2deg(out.params[3:])]
        latency_ms = (t_done - t_file) * 1e3
        run.store.save_volume(index, volume.data, volume.affine)
        row = {"volume": index, "framewise_displacement": out.fd, "dvars": out.dvars, "tsnr": out.tsnr,
               "t_file": f"{t_file:.3f}", "t_done": f"{t_done:.3f}", "latency_ms": latency_ms}
        row.update(dict(zip(("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z"), motion.tolist(), strict=True)))
        run.store.append(out.vector, row)
        run.n_ok += 1
        self.processed += 1
        event = VolumeEvent(run.number, index, motion, out.fd, out.dvars, out.tsnr, latency_ms, out.vector)
        self._send(Message("volume", {"run": run.number, "index": index, "motion": [round(float(m), 5) for m in motion],
                                      "fd": out.fd, "dvars": out.dvars, "tsnr": out.tsnr, "latency_ms": latency_ms,
                                      "fd_alarm": out.fd > self.config.preprocess.fd_threshold_mm}))
        if self.on_volume is not None:
            self.on_volume(event)
        self.betas.volume(run.number, index, out.vector, motion)

    def _end_run(self, run: _Run) -> None:
        run.ended = True
        self.betas.end_run(run.number)
        self._send(Message("run_ended", {"run": run.number, "n_volumes": run.n_ok}))
        log.info("run %d ended: %d volumes stored", run.number, run.n_ok)

    def _reject(self, path: Path, reason: str) -> None:
        self._pending.pop(path.name, None)
        log.error("%s set aside: %s", path.name, reason)
        moved = ""
        try:
            self.quarantine.mkdir(parents=True, exist_ok=True)
            target = self.quarantine / f"{time.strftime('%Y%m%dT%H%M%S')}_{path.name}"
            shutil.move(str(path), target)
            moved = f" (moved to {target})"
        except OSError:
            moved = " (left in place: watch folder not writable)"
        self.folder.reject(path.name, reason + moved)
        self._send(Message("volume_rejected", {"path": path.name, "reason": reason}))

    def _send(self, message: Message) -> None:
        if self.publisher is not None:
            self.publisher.send(message)

    def _status(self, state: str) -> None:
        self._send(Message("status", {"state": state, "service": "scanner"}))
