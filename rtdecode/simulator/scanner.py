"""A simulated scanner run: volumes with known head motion written into a folder at TR pace.

This is the scanner-side load generator (and the demo's source of data). Ground truth (motion per
volume) is saved outside the watch folder so that tests can check what the pipeline estimated.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from rtdecode.simulator.bold import save_motion
from rtdecode.simulator.dicom_writer import write_enhanced, write_mosaic, write_nifti
from rtdecode.simulator.phantom import brain_volume

WRITERS = {"mosaic": write_mosaic, "enhanced": write_enhanced}


def format_name(pattern: str, run: int, volume: int, **more: int) -> str:
    """The file name a scanner writes for ``run`` and ``volume`` (and ``slice``, ``instance``) under a
    ``--pattern`` (``*`` left out)."""
    return pattern.replace("*", "").format(run=run, volume=volume, **more)


@dataclass
class SimulatedRun:
    """A run's volumes in memory, with the motion that produced them (mm, radians)."""

    volumes: list[np.ndarray]
    affine: np.ndarray
    motion: np.ndarray  # (n, 6)

    def iter_volumes(self) -> Iterator[np.ndarray]:
        return iter(self.volumes)


class WritableRun(Protocol):
    affine: np.ndarray
    motion: np.ndarray

    def iter_volumes(self) -> Iterator[np.ndarray]: ...


@dataclass
class WriteReport:
    """Where the volumes went and how far behind the TR schedule each was finished (seconds)."""

    paths: list[Path] = field(default_factory=list)
    lag_s: list[float] = field(default_factory=list)

    @property
    def max_lag_s(self) -> float:
        return max(self.lag_s, default=0.0)


def motion_trajectory(n: int, max_mm: float, max_deg: float, rng: np.random.Generator) -> np.ndarray:
    """Slow drift plus occasional jerks, bounded by ``max_mm`` and ``max_deg``; volume 0 is still."""
    steps = rng.normal(0, 1, (n, 6)) * np.r_[[max_mm / 20] * 3, [np.deg2rad(max_deg) / 20] * 3]
    jerks = rng.random(n) < 0.03
    steps[jerks] *= 6
    path = np.cumsum(steps, axis=0)
    path -= path[0]
    limit = np.r_[[max_mm] * 3, [np.deg2rad(max_deg)] * 3]
    return np.clip(path, -limit, limit)


def simulate_run(n_volumes: int, shape: tuple[int, int, int] = (100, 100, 52), voxel_mm: float = 2.0,
                 max_mm: float = 1.5, max_deg: float = 1.5, noise: float = 0.01, seed: int = 0) -> SimulatedRun:
    """Volumes of a brain moving along a random trajectory, with thermal-like noise and slow drift."""
    rng = np.random.default_rng(seed)
    motion = motion_trajectory(n_volumes, max_mm, max_deg, rng)
    volumes = []
    affine = None
    for t in range(n_volumes):
        vol, affine = brain_volume(shape, voxel_mm, params=motion[t])
        drift = 1.0 + 0.002 * np.sin(2 * np.pi * t / max(n_volumes, 2))
        vol = vol * drift + rng.normal(0, noise * 1000, shape).astype(np.float32) + 20.0
        volumes.append(np.clip(vol, 0, 4095).astype(np.float32))
    return SimulatedRun(volumes, affine, motion)


def write_run(run: WritableRun, folder: str | Path, pattern: str = "001_{run:06d}_{volume:06d}.dcm",
              series: int = 1, fmt: str = "mosaic", tr_s: float = 1.5, speedup: float = 1.0,
              chunked: bool = False, truth_dir: str | Path | None = None, drop: frozenset[int] = frozenset(),
              subject: str = "", session: str = "") -> WriteReport:
    """Write each volume as the scanner would, volume t finished by (t + 1) * TR / ``speedup``.
    Volumes in ``drop`` are never written (an export that loses a file): the scanner side must call
    them missing. ``subject`` and ``session`` make the series' SeriesInstanceUID that session's own.

    Volumes are generated just in time (a :class:`~rtdecode.simulator.bold.BoldRun` never holds a
    whole run in memory); the report says how late each file was against that schedule, so a
    simulator that cannot keep up with the TR is seen, not hidden.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if truth_dir is not None:
        save_motion(run.motion, Path(truth_dir) / f"series-{series:03d}_motion_truth.tsv")
    report = WriteReport()
    start = time.monotonic()
    period = tr_s / speedup
    for t, vol in enumerate(run.iter_volumes()):
        if t in drop:
            time.sleep(max(0.0, start + (t + 1) * period - time.monotonic()))
            continue
        name = format_name(pattern, series, t)
        target = folder / name
        tmp = folder.parent / f".{folder.name}.{name}.tmp" if chunked else target
        if fmt == "nifti":
            write_nifti(tmp, vol, run.affine)
        else:
            WRITERS[fmt](tmp, vol, run.affine, series_number=series, instance=t + 1, tr_s=tr_s, subject=subject,
                         session=session)  # the SeriesInstanceUID is the participant's and session's own
        if chunked:
            write_in_chunks(tmp.read_bytes(), target, pause_s=0.02)
            tmp.unlink()
        report.paths.append(target)
        due = start + (t + 1) * period
        report.lag_s.append(max(time.monotonic() - due, 0.0))
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    return report


def write_in_chunks(payload: bytes, target: Path, n_chunks: int = 4, pause_s: float = 0.02) -> None:
    """Write ``payload`` to ``target`` in pieces, as a slow network share would deliver it."""
    size = -(-len(payload) // n_chunks)
    with open(target, "wb") as fh:
        for i in range(0, len(payload), size):
            fh.write(payload[i:i + size])
            fh.flush()
            time.sleep(pause_s)


