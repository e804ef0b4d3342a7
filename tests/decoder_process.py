"""A real decoder process for the exactly-once kill test, started from a fork server.

The fork server (multiprocessing's ``forkserver``) imports rtdecode and torch once and runs no torch
op, so each decoder it forks starts in about a second instead of four; the child is an ordinary
process running :func:`rtdecode.decoder.service.run_decoder`, killed for real with SIGKILL by the
``RTDECODE_CRASH_AT`` fault-injection point.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
from pathlib import Path

PRELOAD = ["rtdecode.decoder.service", "rtdecode.decoder.core", "models.clip", "models.folder", "safetensors", "sympy"]


def serve(model: str, gallery: str, out: str, betas: str, crash: str, expected: int, cache: str) -> None:
    """Decode until ``expected`` betas are decoded and reconstructed (or the crash point kills us)."""
    os.environ["RTDECODE_CACHE"] = cache
    if crash:
        os.environ["RTDECODE_CRASH_AT"] = crash
    logging.basicConfig(level=logging.WARNING)
    from rtdecode.decoder.service import run_decoder

    def done(service) -> bool:
        return service.decoded_count() >= expected and not service.queue

    run_decoder(Path(model), Path(out), Path(gallery), betas, "tcp://127.0.0.1:0", until=done)


def context() -> mp.context.BaseContext:
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload([*PRELOAD, __name__])
    return ctx
