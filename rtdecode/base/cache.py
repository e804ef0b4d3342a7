"""A small on-disk cache for derived arrays (the simulator's template and latent basis).

Location: ``$RTDECODE_CACHE`` or ``~/.cache/rtdecode``. Entries are plain .npy files (never pickled),
named by a key that includes everything they were derived from, so a stale entry is never reused.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np


def cache_dir() -> Path:
    return Path(os.environ.get("RTDECODE_CACHE") or Path.home() / ".cache" / "rtdecode")


def cached_arrays(name: str, key: str, build: Callable[[], tuple[np.ndarray, ...]]) -> tuple[np.ndarray, ...]:
    """Arrays stored under ``name``-hash(``key``); built and written on first use."""
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    folder = cache_dir() / f"{name}-{digest}"
    try:
        files = sorted(folder.glob("*.npy"))
        if files:
            return tuple(np.load(f, allow_pickle=False) for f in files)
    except (OSError, ValueError):
        pass  # a damaged entry is rebuilt below
    arrays = build()
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    try:
        tmp.mkdir(parents=True, exist_ok=True)
        for i, a in enumerate(arrays):
            np.save(tmp / f"{i:02d}.npy", a)
        tmp.replace(folder)  # atomic; fails if another process got there first, which is fine
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)  # a read-only home still works, just without the cache
    return arrays
