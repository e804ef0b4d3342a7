"""Per-run quality figures for the console's runs table: pure functions of what the messages carried."""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

import numpy as np


@dataclass
class RunQuality:
    """Everything the console heard about one run, kept after the run ends (plots clear, this does not)."""

    run: int
    expected: int = 0  # volumes the scanner side expects per run (0: not said)
    tr_s: float | None = None
    final_delay_s: float | None = None  # refining: the delay of each trial's last version (run_started)
    index: list[int] = field(default_factory=list)
    motion: list[list[float]] = field(default_factory=list)  # trans x/y/z mm, rot x/y/z degrees
    fd: list[float] = field(default_factory=list)
    alarm: list[bool] = field(default_factory=list)
    dvars: list[float] = field(default_factory=list)
    tsnr: list[float] = field(default_factory=list)
    latency_ms: list[float] = field(default_factory=list)
    read_ms: list[float] = field(default_factory=list)  # of latency: file written -> read (NaN: not said)
    preprocess_ms: list[float] = field(default_factory=list)  # of latency: motion correction and mask
    missing: list[int] = field(default_factory=list)
    rejected: int = 0
    ended: str = ""  # "" while running; else how it ended

    @property
    def received(self) -> int:
        return len(self.index)

    def put(self, index: int, motion: list[float], fd: float, alarm: bool, dvars: float, tsnr: float,
            latency_ms: float, stages: dict[str, float] | None = None) -> bool:
        """Add a volume in index order; a volume already here is replaced (a console that joins late, or
        a restarted sender, gets some events twice). True if it was new."""
        pos = bisect.bisect_left(self.index, index)
        new = pos == len(self.index) or self.index[pos] != index
        stages = stages or {}
        values = (index, motion, fd, alarm, dvars, tsnr, latency_ms, stages.get("read", np.nan),
                  stages.get("preprocess", np.nan))
        series = (self.index, self.motion, self.fd, self.alarm, self.dvars, self.tsnr, self.latency_ms, self.read_ms,
                  self.preprocess_ms)
        for column, value in zip(series, values, strict=True):
            if new:
                column.insert(pos, value)
            elif not (isinstance(value, float) and np.isnan(value)):  # a rebuilt copy does not erase what it lacks
                column[pos] = value
        return new


def episodes(alarm: list[bool]) -> int:
    """Alarm episodes: runs of consecutive alarmed volumes count once (an operator acts per episode)."""
    flags = np.asarray(alarm, bool)
    return int(np.sum(flags & ~np.concatenate([[False], flags[:-1]]))) if len(flags) else 0


def with_gaps(index: list[int], values: np.ndarray, missing: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """x and y with a NaN at every missing volume, so a plot drawn with ``connect="finite"`` breaks there
    instead of drawing straight across the gap."""
    x = np.asarray(index, float)
    y = np.asarray(values, float)
    if not missing or not len(x):
        return x, y
    gap_x = np.asarray(sorted(set(missing)), float)
    gap_y = np.full((len(gap_x),) + y.shape[1:], np.nan)
    xs = np.concatenate([x, gap_x])
    order = np.argsort(xs, kind="stable")
    return xs[order], np.concatenate([y, gap_y])[order]


def hit_rate(hits: list[bool]) -> float | None:
    return float(np.mean(hits)) if hits else None


def summary(q: RunQuality, hits: list[bool]) -> dict[str, str]:
    """One runs-table row: counts, FD, alarm episodes, tSNR, latency, top-1 hit rate."""
    fd = np.asarray(q.fd, float)
    rate = hit_rate(hits)

    def med(v: list[float]) -> str:
        return f"{np.median(v):.0f}" if v else ""

    return {
        "run": str(q.run),
        "volumes": f"{q.received}" + (f"/{q.expected}" if q.expected else ""),
        "missing": str(len(q.missing)), "rejected": str(q.rejected),
        "FD mean": f"{fd.mean():.2f}" if len(fd) else "", "FD max": f"{fd.max():.2f}" if len(fd) else "",
        "alarm episodes": str(episodes(q.alarm)),
        "tSNR": med(q.tsnr), "latency ms": med(q.latency_ms),
        "top-1": "" if rate is None else f"{100 * rate:.0f}% of {len(hits)}",
        "state": q.ended or "running",
    }
