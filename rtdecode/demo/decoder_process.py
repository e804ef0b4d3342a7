"""The decoder in its own process (``rtdecode decode``), and a listener on its results."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from rtdecode.base.threads import DEFAULTS, thread_env
from rtdecode.wire.sockets import Subscriber


def start_decoder(model: Path, gallery: Path, out: Path, timeout_s: float = 120.0,
                  threads: int = DEFAULTS.decoder, captioner: Path | None = None) -> tuple[subprocess.Popen, dict]:
    """Start ``rtdecode decode`` on free local ports with ``threads`` threads (its environment set before
    torch loads), captioning with ``captioner`` when given; returns the process and its bound addresses."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "decoder.json").unlink(missing_ok=True)
    log = open(out / "decoder.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "rtdecode.cli", "decode", "--model", str(model), "--gallery",
                             str(gallery), "--out", str(out), "--betas", "tcp://127.0.0.1:0", "--results",
                             "tcp://127.0.0.1:0", "--threads", str(threads),
                             *(["--captioner", str(captioner)] if captioner is not None else [])], stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, **thread_env(threads), "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if (out / "decoder.json").exists():
            return proc, json.loads((out / "decoder.json").read_text())
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    proc.kill()
    tail = (out / "decoder.log").read_text(errors="replace")[-2000:]
    raise RuntimeError(f"the decoder did not start within {timeout_s:g} s; its log ({out / 'decoder.log'}) ends:\n{tail}")


def stop_decoder(proc: subprocess.Popen, timeout_s: float = 10.0) -> None:
    proc.terminate()  # everything it made is on disk already
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout_s)


@dataclass
class ResultListener:
    """Subscribes to the decoder's results and notes when each arrived (the demo's latency clock)."""

    address: str
    retrievals: dict = field(default_factory=dict)  # (run, trial, version) -> (time received, fields)
    reconstructions: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._sub = Subscriber(self.address, topics=("result",))
        self._thread = threading.Thread(target=self._loop, daemon=True, name="rtdecode-demo-results")
        self._thread.start()

    def _loop(self) -> None:
        try:
            while not self._stop.is_set():
                msg = self._sub.recv(timeout_ms=100)
                if msg is None:
                    continue
                f = msg.fields
                key = (int(f["run"]), int(f["trial"]), f.get("version", "realtime"))
                # by stage: a caption (or a refined picture) is not the trial's first picture
                book = {"retrieval": self.retrievals, "reconstruction": self.reconstructions}.get(f.get("stage", ""))
                if book is not None:
                    book.setdefault(key, (time.time(), f))
        finally:
            self._sub.close()

    def wait_for(self, count: int, timeout_s: float) -> bool:
        """Until ``count`` reconstructions have arrived (every model the demo trains reconstructs)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if len(self.reconstructions) >= count:
                return True
            time.sleep(0.1)
        return False

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
