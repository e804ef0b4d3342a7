"""``rtdecode bench <stage>``: does this machine keep up with the TR?

Each stage prints a human table, or with ``--json`` one JSON object of its figures. Stages are
registered in :data:`STAGES` by ``@stage``; modules listed in :data:`PLUGINS` add theirs.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

STAGES: dict[str, Callable[..., dict]] = {}


def stage(name: str) -> Callable[[Callable[..., dict]], Callable[..., dict]]:
    def register(fn: Callable[..., dict]) -> Callable[..., dict]:
        STAGES[name] = fn
        return fn

    return register


def summarize(ms: list[float] | np.ndarray) -> dict[str, float]:
    arr = np.asarray(ms, dtype=float)
    return {"median_ms": float(np.median(arr)), "p99_ms": float(np.percentile(arr, 99)),
            "max_ms": float(arr.max()), "n": int(arr.size)}


def roi_mask(reference: np.ndarray, n_voxels: int) -> np.ndarray:
    """A compact posterior ROI of exactly ``n_voxels`` brain voxels (a stand-in for a visual-cortex mask)."""
    from rtdecode.preprocess.pipeline import intensity_mask

    brain = intensity_mask(reference, 0.3)
    ijk = np.argwhere(brain)
    # Closest brain voxels to a point at the back of the head, like an occipital mask.
    centre = np.array([reference.shape[0] / 2, reference.shape[1] * 0.25, reference.shape[2] * 0.45])
    order = np.argsort(np.linalg.norm(ijk - centre, axis=1), kind="stable")[:n_voxels]
    mask = np.zeros_like(brain)
    mask[tuple(ijk[order].T)] = True
    return mask


@stage("preprocess")
def bench_preprocess(volumes: int = 40, shape: tuple[int, int, int] = (100, 100, 52), n_voxels: int = 8627,
                     fmt: str = "mosaic", seed: int = 0) -> dict:
    """File closed -> masked vector for a 2 mm whole-brain volume, with storage."""
    from rtdecode.ingest.reader import read_volume
    from rtdecode.preprocess.pipeline import Mask, RunPreprocessor
    from rtdecode.session import SessionFolder
    from rtdecode.simulator.scanner import WRITERS, simulate_run

    run = simulate_run(volumes, shape=shape, max_mm=3.0, max_deg=3.0, seed=seed)
    read_ms, prep_ms, store_ms, total_ms = [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        folder = SessionFolder(Path(tmp) / "sessions", "01", "01").create()
        store = folder.run_store(1)
        pre = None
        for t, vol in enumerate(run.volumes):
            path = Path(tmp) / f"001_000001_{t:06d}.dcm"
            WRITERS[fmt](path, vol, run.affine, series_number=1, instance=t + 1)
            t0 = time.perf_counter()
            volume = read_volume(path)
            t1 = time.perf_counter()
            if pre is None:
                pre = RunPreprocessor(volume, mask=Mask(roi_mask(volume.data, n_voxels), volume.affine))
            out = pre.process(volume)
            t2 = time.perf_counter()
            store.save_volume(t, volume.data, volume.affine)
            store.append(out.vector, {"volume": t})
            t3 = time.perf_counter()
            if t == 0:
                continue  # the first volume builds the reference: a once-per-run cost, reported apart
            read_ms.append((t1 - t0) * 1e3)
            prep_ms.append((t2 - t1) * 1e3)
            store_ms.append((t3 - t2) * 1e3)
            total_ms.append((t3 - t0) * 1e3)
    return {
        "stage": "preprocess", "shape": list(shape), "n_voxels": n_voxels, "format": fmt,
        "volumes": volumes - 1, **summarize(total_ms),
        "read_median_ms": float(np.median(read_ms)), "motion_mask_median_ms": float(np.median(prep_ms)),
        "store_median_ms": float(np.median(store_ms)),
        "target": "median <= 100 ms, p99 <= 200 ms",
    }


def format_table(result: dict) -> str:
    """A two-column table for people."""
    width = max(len(k) for k in result)
    lines = [f"{'figure':<{width}}  value", f"{'-' * width}  -----"]
    for key, value in result.items():
        text = f"{value:.2f}" if isinstance(value, float) else str(value)
        lines.append(f"{key:<{width}}  {text}")
    return "\n".join(lines)


PLUGINS = ("rtdecode.scanner.bench", "rtdecode.simulator.bench", "rtdecode.glm.bench", "rtdecode.decoder.bench",
           "rtdecode.wire.bench", "gui.bench", "calibration.bench")


def run_stage(name: str, as_json: bool = False, **kwargs) -> dict:
    import importlib

    for module in PLUGINS:
        importlib.import_module(module)  # each registers its stages
    if name not in STAGES:
        raise SystemExit(f"rtdecode bench: unknown stage {name!r}; available: {', '.join(sorted(STAGES))}")
    result = STAGES[name](**{k: v for k, v in kwargs.items() if v is not None})
    print(json.dumps(result) if as_json else format_table(result), flush=True)
    return result
