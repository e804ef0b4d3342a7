"""One finaliser at a time per dataset root.

Sessions of one subject (or several subjects) share the dataset root: its stimuli/, participants.tsv,
.bidsignore and .finalize-tmp/. Two finalisers (two ``rtdecode run`` processes, or ``rtdecode session
finalize`` beside one) take turns through an exclusive ``flock`` on ``ROOT/.rtdecode-bids.lock``; the
kernel drops it when a holder dies, however it dies. Threads of one process exclude each other too
(each opens its own descriptor).
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path
from types import TracebackType

from rtdecode.base.errors import RtdecodeError

LOCK_NAME = ".rtdecode-bids.lock"


class DatasetBusy(RtdecodeError):
    """Another finaliser held the dataset root for longer than we would wait."""


class DatasetLock:
    """``with DatasetLock(root):`` waits (up to ``timeout_s``) for the root's finaliser lock."""

    def __init__(self, root: str | Path, timeout_s: float = 600.0, poll_s: float = 0.05) -> None:
        self.path = Path(root) / LOCK_NAME
        self.timeout_s = timeout_s
        self.poll_s = poll_s
        self._fd: int | None = None

    def __enter__(self) -> DatasetLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = self.path.read_text(errors="replace").strip()[:200] or "unknown"
                    os.close(fd)
                    raise DatasetBusy(f"{self.path.parent}: another finaliser ({holder}) held the dataset for "
                                      f"{self.timeout_s:g} s; this one gave up (the live record is intact: run "
                                      "rtdecode session finalize again)") from None
                time.sleep(self.poll_s)
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
        self._fd = fd
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock; the file stays (removing it would race)
            self._fd = None
