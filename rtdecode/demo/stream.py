"""Simulated runs written as scanner files into a watch folder, picked up by the real scanner side."""

from __future__ import annotations

import threading
from pathlib import Path

from rtdecode.scanner import ScannerSide
from rtdecode.simulator.scanner import write_run


def stream_runs(side: ScannerSide, visit, runs: list[int], first_series: int, watch: Path, truth: Path,
                speedup: float, idle_timeout: float = 60.0, drop: frozenset[int] = frozenset()) -> list[int]:
    """Write ``visit``'s runs (series numbered from ``first_series``) while ``side`` processes them.

    Each run is built just before it is written (a run holds no volumes in memory), with its truth
    (events, true betas, motion) saved where the scanner side's ``glm.events`` points. Returns the
    series numbers. Stops when every volume is processed, or after ``idle_timeout`` s without a file.
    """
    series = [first_series + i for i in range(len(runs))]
    target = side.processed + (visit.paradigm.volumes - len(drop)) * len(runs)
    failure: list[BaseException] = []

    def write() -> None:
        try:
            for index, number in zip(runs, series, strict=True):
                run = visit.run(index)
                run.save_truth(truth, f"series-{number:03d}")
                write_run(run, watch, series=number, tr_s=visit.paradigm.tr_s, speedup=speedup, truth_dir=truth,
                          drop=drop)
        except BaseException as exc:  # reported by the caller's thread
            failure.append(exc)

    # As an operator does: the scanner side is up, and has looked through what the folder already
    # holds (earlier runs' files), before the scanner starts the next series.
    side.start()
    while side.step(timeout=0.2):
        pass
    writer = threading.Thread(target=write, daemon=True, name="rtdecode-demo-scanner")
    writer.start()
    side.run(until=lambda s: s.processed >= target or (failure and not writer.is_alive()), idle_timeout=idle_timeout)
    writer.join(timeout=10)
    if failure:
        raise RuntimeError(f"the simulated scanner failed: {failure[0]}") from failure[0]
    if side.processed < target:
        raise RuntimeError(f"the scanner side processed {side.processed} of {target} volumes before it went idle "
                           f"({idle_timeout:g} s without a file)")
    return series
