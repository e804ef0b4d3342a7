"""Fault injection for the crash tests: ``RTDECODE_CRASH_AT=name:n`` SIGKILLs this process the n-th
time it passes the point ``name`` (the decoder's write path, the trainer's steps). Unset (always,
outside those tests), it does nothing."""

from __future__ import annotations

import os
import signal

_COUNTS: dict[str, int] = {}


def crash_point(name: str) -> None:
    spec = os.environ.get("RTDECODE_CRASH_AT")
    if not spec or not spec.startswith(name + ":"):
        return
    _COUNTS[name] = _COUNTS.get(name, 0) + 1
    if _COUNTS[name] == int(spec.split(":", 1)[1]):
        os.kill(os.getpid(), signal.SIGKILL)
