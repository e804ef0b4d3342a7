"""``rtdecode bench simulate``: can the simulator write a 2 mm whole-brain run at real TR pace?"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from rtdecode.base.timing import summarize


def bench_simulate(volumes: int = 192, shape: tuple[int, int, int] = (100, 100, 52), n_voxels: int = 8627,
                   fmt: str = "mosaic", seed: int = 0) -> dict:
    """Per-volume time to synthesise (task, noise, motion) and write one file, against the TR."""
    from rtdecode.simulator.paradigm import Paradigm
    from rtdecode.simulator.scanner import WRITERS, format_name
    from rtdecode.simulator.subjects import SubjectSpec
    from rtdecode.simulator.visit import Visit

    t0 = time.perf_counter()
    visit = Visit(SubjectSpec(n_voxels=n_voxels), n_runs=1, paradigm=Paradigm(volumes=volumes), shape=shape,
                  voxel_mm=2.0, seed=seed)
    run = visit.run(0)
    setup_s = time.perf_counter() - t0
    gen_ms, write_ms, total_ms = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        it = run.iter_volumes()
        for t in range(volumes):
            a = time.perf_counter()
            vol = next(it)
            b = time.perf_counter()
            WRITERS[fmt](Path(tmp) / format_name("001_{run:06d}_{volume:06d}.dcm", 1, t), vol, run.affine,
                         series_number=1, instance=t + 1)
            c = time.perf_counter()
            gen_ms.append((b - a) * 1e3)
            write_ms.append((c - b) * 1e3)
            total_ms.append((c - a) * 1e3)
    total = summarize(total_ms)
    return {
        "stage": "simulate", "volumes": volumes, "shape": "x".join(map(str, shape)), "format": fmt,
        "roi_voxels": int(len(run.roi_index)), "setup_s": setup_s,
        "generate_median_ms": summarize(gen_ms)["median_ms"], "write_median_ms": summarize(write_ms)["median_ms"],
        "median_ms": total["median_ms"], "p99_ms": total["p99_ms"], "max_ms": total["max_ms"],
        "tr_ms": run.tr_s * 1000, "keeps_up": bool(total["max_ms"] < run.tr_s * 1000),
    }
