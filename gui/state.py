"""What the operator console knows, built only from wire messages. No Qt here: plain data, testable.

Messages come from the scanner side's events socket (run_started, volume, volume_missing,
volume_rejected, run_ended, beta, status) and the decoder's results socket (result, heartbeat).
They arrive validated (rtdecode.wire.schema); still, no message can raise out of :meth:`ConsoleState.apply`:
one that a handler cannot use is counted in ``refused`` with its reason, and the console goes on.

Restarts are normal: every sender stamps a boot id, and a new boot id from a source resets that
source's duplicate filter (a restarted process counts ``seq`` from 1 again) and leaves a notice.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from rtdecode.wire.protocol import Message, decode_png

log = logging.getLogger(__name__)
SOURCE_NAMES = {"scanner": "scanner side", "decoder": "decoder"}


@dataclass
class TrialView:
    run: int
    trial: int
    image: str = ""  # the stimulus shown, when the events table names it
    version: str = "realtime"
    top_ids: list[str] = field(default_factory=list)
    top_scores: list[float] = field(default_factory=list)
    reconstruction: np.ndarray | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)
    bad: bool = False


@dataclass
class ConsoleState:
    fd_threshold_mm: float = 0.5
    run: int | None = None
    volumes_expected: int = 0
    volume_index: list[int] = field(default_factory=list)
    motion: list[list[float]] = field(default_factory=list)  # trans x/y/z mm, rot x/y/z degrees
    fd: list[float] = field(default_factory=list)
    dvars: list[float] = field(default_factory=list)
    latency_ms: list[float] = field(default_factory=list)
    missing: list[int] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    trials: dict[tuple[int, int, str], TrialView] = field(default_factory=dict)
    current: tuple[int, int, str] | None = None
    last_seen: dict[str, float] = field(default_factory=dict)  # service -> wall time of its last message
    status: str = "waiting for the scanner"
    seen_seq: dict[str, set[int]] = field(default_factory=dict)
    boots: dict[str, str] = field(default_factory=dict)  # source -> boot id of the process heard from
    restarts: dict[str, int] = field(default_factory=dict)
    refused: int = 0  # messages that reached the state but could not be used (and refused upstream, added by the feed)
    last_refused: str = ""
    notices: deque = field(default_factory=lambda: deque(maxlen=200))  # (wall time, text)
    identity: dict[str, str] = field(default_factory=dict)  # subject, session, session_uid of the session shown
    decoder_queue: int | None = None
    decoder_decoded: int | None = None
    run_counts: dict[int, dict[str, int]] = field(default_factory=dict)  # run -> volumes, missing, rejected

    def apply(self, msg: Message, source: str = "scanner") -> bool:
        """Update from one message; False for a repeat (a late-joiner replay already seen) or a refusal."""
        if msg.boot and self.boots.get(source) != msg.boot:
            if source in self.boots:
                self.restarts[source] = self.restarts.get(source, 0) + 1
                self.notice(f"{SOURCE_NAMES.get(source, source)} restarted")
            self.boots[source] = msg.boot
            self.seen_seq[source] = set()
        seen = self.seen_seq.setdefault(source, set())
        if msg.seq in seen:
            return False
        seen.add(msg.seq)
        self.last_seen[source] = time.time()
        uid = msg.fields.get("session_uid") if isinstance(msg.fields, dict) else None
        if source != "scanner" and uid and self.identity.get("session_uid") not in (None, uid):
            return False  # another participant's result (a decoder serves the whole day): not this session's
        handler = getattr(self, f"_on_{msg.type}", None)
        if handler is not None:
            try:
                handler(msg.fields, msg)
            except Exception as exc:  # a field no handler expected: counted and shown, never fatal
                self.refused += 1
                self.last_refused = f"{msg.type} from {source}: {type(exc).__name__}: {exc}"
                log.warning("console: refused a message: %s", self.last_refused)
                return False
        return True

    def notice(self, text: str) -> None:
        self.notices.append((time.time(), text))
        self.status = text

    # -- scanner side ---------------------------------------------------------------------------
    def _on_run_started(self, f: dict, _msg: Message) -> None:
        self.run = int(f["run"])
        self.volumes_expected = int(f.get("n_volumes", self.volumes_expected) or 0)
        if "session_uid" in f and f["session_uid"] != self.identity.get("session_uid"):
            if self.identity:  # the scanner side now serves another participant: start a clean page
                self.trials.clear()
                self.run_counts.clear()
                self.current = None
            self.identity = {k: f[k] for k in ("subject", "session", "session_uid") if k in f}
            self.notices.append((time.time(), f"session sub-{f.get('subject')} ses-{f.get('session')}"))
        self.volume_index.clear()
        for series in (self.motion, self.fd, self.dvars, self.latency_ms, self.missing):
            series.clear()
        self.status = f"run {self.run} started: {f['n_voxels']} voxels"

    def _count(self, run: int, what: str) -> None:
        counts = self.run_counts.setdefault(run, {"volumes": 0, "missing": 0, "rejected": 0})
        counts[what] += 1

    def _on_volume(self, f: dict, _msg: Message) -> None:
        self._count(int(f["run"]), "volumes")
        self.run = int(f["run"])
        self.volume_index.append(int(f["index"]))
        self.motion.append([float(v) for v in f["motion"]])
        self.fd.append(float(f["fd"]))
        self.dvars.append(float(f["dvars"]))
        self.latency_ms.append(float(f["latency_ms"]))
        total = f" of {self.volumes_expected}" if self.volumes_expected else ""
        self.status = f"run {self.run}: receiving volume {int(f['index']) + 1}{total}"

    def _on_volume_missing(self, f: dict, _msg: Message) -> None:
        self._count(int(f["run"]), "missing")
        self.missing.append(int(f["index"]))
        self.status = f"run {f['run']}: volume {f['index']} missing"

    def _on_volume_rejected(self, f: dict, _msg: Message) -> None:
        self.rejected.append(f"{f['path']}: {f['reason']}")
        if self.run is not None:
            self._count(self.run, "rejected")

    def _on_run_ended(self, f: dict, _msg: Message) -> None:
        why = f" ({f['reason']})" if f.get("reason") else ""
        self.status = f"run {f['run']} ended{why}: {f['n_volumes']} volumes"

    def _on_status(self, f: dict, _msg: Message) -> None:
        state = f.get("state")
        if state == "glm_error":
            self.notice(f"run {f.get('run')}: no betas ({f.get('reason', '')})")
        elif state in ("disarmed", "armed", "waiting_for_start"):
            self.notice({"disarmed": "stopped by the operator: a new series waits for start run",
                         "armed": "armed: the next series starts a new run",
                         "waiting_for_start": "a new series is waiting: press start run"}[state])

    def _on_beta(self, f: dict, _msg: Message) -> None:
        key = (int(f["run"]), int(f["trial"]), str(f.get("version", "realtime")))
        self.trials.setdefault(key, TrialView(key[0], key[1], str(f.get("image", "")), key[2]))

    # -- decoder -----------------------------------------------------------------------------------
    def _on_result(self, f: dict, msg: Message) -> None:
        key = (int(f["run"]), int(f["trial"]), str(f.get("version", "realtime")))
        view = self.trials.setdefault(key, TrialView(key[0], key[1], str(f.get("image", "")), key[2]))
        view.image = view.image or str(f.get("image", ""))
        view.timings_ms.update({k: float(v) for k, v in f.get("timings_ms", {}).items()})
        if f.get("stage") == "retrieval":
            view.top_ids = list(f.get("top_ids", []))
            view.top_scores = [float(s) for s in f.get("top_scores", [])]
            if key[2] == "realtime":
                self.current = key
        elif "reconstruction" in msg.images:
            view.reconstruction = decode_png(msg.images["reconstruction"])

    def _on_heartbeat(self, f: dict, _msg: Message) -> None:
        if f.get("service") == "decoder":
            self.decoder_queue, self.decoder_decoded = f.get("queue"), f.get("decoded")

    # -- views -------------------------------------------------------------------------------------
    @property
    def fd_alarms(self) -> int:
        return sum(v > self.fd_threshold_mm for v in self.fd)

    def heartbeat_age(self, service: str, now: float | None = None) -> float | None:
        last = self.last_seen.get(service)
        return None if last is None else (now or time.time()) - last

    def history(self, n: int = 10) -> list[TrialView]:
        realtime = [v for k, v in sorted(self.trials.items()) if k[2] == "realtime"]
        return realtime[-n:]

    def mark_bad(self, key: tuple[int, int, str], bad: bool = True) -> None:
        self.trials[key].bad = bad
