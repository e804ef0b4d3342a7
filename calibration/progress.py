"""A one-line progress display with live loss and ETA (stderr), updated at most once a second."""

from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, label: str = "training", stream=None, every_s: float = 1.0) -> None:
        self.label, self.stream, self.every_s = label, stream or sys.stderr, every_s
        self.start = time.monotonic()
        self.last = 0.0

    def __call__(self, step: int, total: int, loss: float) -> None:
        now = time.monotonic()
        if now - self.last < self.every_s and step < total:
            return
        self.last = now
        rate = step / max(now - self.start, 1e-9)
        eta = (total - step) / rate if rate > 0 else float("inf")
        end = "\n" if step >= total else ""
        self.stream.write(f"\r{self.label}: step {step}/{total} ({step / total:.0%}) loss {loss:.3f} "
                          f"ETA {int(eta // 60)}:{int(eta % 60):02d}{end}")
        self.stream.flush()
