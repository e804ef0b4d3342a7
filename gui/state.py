"""What the operator console knows, built only from wire messages. No Qt here: plain data, testable.

Messages come from the scanner side's events socket (run_started, volume, volume_missing,
volume_rejected, run_ended, beta, status) and the decoder's results socket (result, heartbeat).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from rtdecode.protocol import Message, decode_png


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

    def apply(self, msg: Message, source: str = "scanner") -> bool:
        """Update from one message; False for a repeat (a late-joiner replay already seen)."""
        seen = self.seen_seq.setdefault(source, set())
        if msg.seq in seen:
            return False
        seen.add(msg.seq)
        self.last_seen[source] = time.time()
        handler = getattr(self, f"_on_{msg.type}", None)
        if handler is not None:
            handler(msg.fields, msg)
        return True

    # -- scanner side ---------------------------------------------------------------------------
    def _on_run_started(self, f: dict, _msg: Message) -> None:
        self.run = int(f["run"])
        self.volume_index.clear()
        for series in (self.motion, self.fd, self.dvars, self.latency_ms, self.missing):
            series.clear()
        self.status = f"run {self.run} started: {f['n_voxels']} voxels"

    def _on_volume(self, f: dict, _msg: Message) -> None:
        self.run = int(f["run"])
        self.volume_index.append(int(f["index"]))
        self.motion.append([float(v) for v in f["motion"]])
        self.fd.append(float(f["fd"]))
        self.dvars.append(float(f["dvars"]))
        self.latency_ms.append(float(f["latency_ms"]))
        total = f" of {self.volumes_expected}" if self.volumes_expected else ""
        self.status = f"run {self.run}: receiving volume {int(f['index']) + 1}{total}"

    def _on_volume_missing(self, f: dict, _msg: Message) -> None:
        self.missing.append(int(f["index"]))
        self.status = f"run {f['run']}: volume {f['index']} missing"

    def _on_volume_rejected(self, f: dict, _msg: Message) -> None:
        self.rejected.append(f"{f['path']}: {f['reason']}")

    def _on_run_ended(self, f: dict, _msg: Message) -> None:
        self.status = f"run {f['run']} ended: {f['n_volumes']} volumes"

    def _on_status(self, f: dict, _msg: Message) -> None:
        if f.get("state") == "glm_error":
            self.status = f"run {f.get('run')}: no betas ({f.get('reason', '')})"

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
        pass  # last_seen is enough: the console shows its age

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
