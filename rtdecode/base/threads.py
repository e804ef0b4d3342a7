"""Bounded thread pools per process, so the processes of one machine do not oversubscribe its cores.

Each role (scanner side, decoder, console, calibration) runs its torch (intra- and inter-op), OpenMP
and BLAS pools at a set size. With one other busy process on 2 cores, torch's default 2 threads took
the decoder's prior from 24 ms to 1,820 ms per trial: threads that wait for each other on a core that
something else holds (issue 27). The defaults leave a core each to the scanner side and the decoder.

Imports no stage: the CLI calls :func:`limit_threads` before a role's heavy imports where it can,
and it works after them too (threadpoolctl for the BLAS and OpenMP libraries already loaded).
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, fields

from rtdecode.base.errors import ConfigError

log = logging.getLogger(__name__)

# Read once, when a library starts its pool: set before numpy or torch load, and inherited by children.
ENV_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS",
            "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")
MAX_THREADS = 1024


@dataclass
class ThreadsSection:
    """Threads per process (torch intra- and inter-op, OpenMP, BLAS); 0: every core of the machine.

    ``scanner`` is read by ``rtdecode run``; the others are what ``rtdecode demo`` gives its processes,
    and the defaults of ``--threads`` on ``rtdecode decode``, ``console``/``display`` and
    ``calibrate``/``pretrain`` (which do not read the session file).
    """

    scanner: int = 1
    decoder: int = 1
    console: int = 1
    calibration: int = 0

    def check(self, source: str) -> None:
        """One :class:`ConfigError` naming the key when a count is not 0 to MAX_THREADS."""
        for f in fields(self):
            value = getattr(self, f.name)
            if not 0 <= value <= MAX_THREADS:
                raise ConfigError(f"{source}: threads.{f.name} must be 0 (every core) to {MAX_THREADS}, got {value!r}")


DEFAULTS = ThreadsSection()


def cores() -> int:
    """The cores this process may run on (its CPU affinity where the system has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def resolve(n: int) -> int:
    """A thread count as configured (0: every core) as a number of threads."""
    return n if n > 0 else cores()


def thread_env(n: int) -> dict[str, str]:
    """The environment that starts a child process's pools at ``n`` threads (0: every core)."""
    return {name: str(resolve(n)) for name in ENV_VARS}


def limit_threads(n: int, torch: bool | None = None) -> dict[str, int]:
    """Run this process's pools at ``n`` threads (0: every core); returns :func:`thread_counts`.

    Sets the environment (pools not started yet, child processes), limits the BLAS and OpenMP
    libraries already loaded (threadpoolctl) and torch's intra- and inter-op threads: ``torch=True``
    imports torch for it, ``None`` only when something already has.
    """
    n = resolve(n)
    if not 1 <= n <= MAX_THREADS:
        raise ValueError(f"threads must be 0 (every core) to {MAX_THREADS}, got {n}")
    os.environ.update(thread_env(n))
    import numpy  # noqa: F401  (every role uses it: its BLAS starts at the size just set, and is read back)
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=n)  # process-wide for BLAS; OpenMP for this (the working) thread
    if torch or (torch is None and "torch" in sys.modules):
        import torch as _torch

        _torch.set_num_threads(n)
        if _torch.get_num_interop_threads() != n:
            try:
                _torch.set_num_interop_threads(n)
            except RuntimeError:  # settable once, before any inter-op work: the first setting stays
                log.debug("torch inter-op threads stay at %d (already started)", _torch.get_num_interop_threads())
    return thread_counts()


def thread_counts() -> dict[str, int]:
    """The size of each pool of this process now, read back from the libraries themselves."""
    from threadpoolctl import threadpool_info

    counts: dict[str, int] = {}
    for lib in threadpool_info():
        name = lib["internal_api"]  # openblas, mkl, blis, openmp (numpy and scipy may each bring one)
        counts[name] = max(counts.get(name, 0), int(lib["num_threads"]))
    torch = sys.modules.get("torch")
    if torch is not None:
        counts["torch"] = torch.get_num_threads()
        counts["torch_interop"] = torch.get_num_interop_threads()
    return counts


def describe(role: str, counts: dict[str, int]) -> str:
    """One log line: ``threads (decoder): torch 1, torch_interop 1, openblas 1, openmp 1 of 2 cores``."""
    pools = ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "no thread pool loaded"
    return f"threads ({role}): {pools} of {cores()} cores"


def apply_role(role: str, n: int, torch: bool | None = None) -> dict[str, int]:
    """:func:`limit_threads` for ``role`` and its one log line (what a test of each process reads back)."""
    counts = limit_threads(n, torch=torch)
    log.info(describe(role, counts))
    return counts
