"""Benchmarks of the scanner side, on volumes they are handed (``rtdecode bench`` asks the simulator).

- ``rtdecode bench preprocess``: file closed -> masked vector, stored: read, motion, mask, storage.
- ``rtdecode bench endurance``: a whole scanner side through a long session, memory measured per run.
  The real :class:`~rtdecode.scanner.ScannerSide` with its watcher: each volume is written into the
  watch folder, read, motion corrected, masked, stored, published; every run has an events table, so
  the GLM estimates AR(1) betas in real time and at the end of the run, and every beta goes over the
  acknowledged channel to a receiver that acknowledges it. RSS is taken at the end of the first and of
  the last run: the difference is what a long day costs in memory.
"""

from __future__ import annotations

import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from rtdecode.base.timing import summarize

MB = 2**20
WriteVolume = Callable[[Path, np.ndarray, np.ndarray, int, int], None]  # (path, data, affine, series, instance)


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


def motion_error(estimated: np.ndarray, truth: np.ndarray) -> dict:
    """How far estimated motion (volumes x 6: mm, radians, relative to the first volume) lies from the
    true motion: per volume the largest of the three translation errors (mm) and of the three rotation
    errors (degrees); their median, 95th percentile and largest over the volumes."""
    diff = np.abs(np.asarray(estimated, float) - np.asarray(truth, float))
    mm, deg = diff[:, :3].max(axis=1), np.rad2deg(diff[:, 3:].max(axis=1))
    return {"motion_error_median_mm": float(np.median(mm)), "motion_error_p95_mm": float(np.percentile(mm, 95)),
            "motion_error_max_mm": float(mm.max()), "motion_error_median_deg": float(np.median(deg)),
            "motion_error_p95_deg": float(np.percentile(deg, 95)), "motion_error_max_deg": float(deg.max())}


def bench_preprocess(volumes: list[np.ndarray], affine: np.ndarray, write: WriteVolume, n_voxels: int = 8627,
                     fmt: str = "mosaic", motion: np.ndarray | None = None) -> dict:
    """File closed -> masked vector for each of ``volumes`` (each written by ``write`` first), with storage.
    ``motion``: the volumes' true motion (volumes x 6, relative to the first); adds the estimate's error."""
    from rtdecode.base.session import SessionFolder
    from rtdecode.ingest.reader import read_volume
    from rtdecode.preprocess.pipeline import Mask, RunPreprocessor

    read_ms, prep_ms, store_ms, total_ms, cpu_ms, params = [], [], [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        folder = SessionFolder(Path(tmp) / "sessions", "01", "01").create()
        store = folder.run_store(1)
        pre = None
        for t, vol in enumerate(volumes):
            path = Path(tmp) / f"001_000001_{t:06d}.dcm"
            write(path, vol, affine, 1, t + 1)
            t0, c0 = time.perf_counter(), time.process_time()
            volume = read_volume(path)
            t1 = time.perf_counter()
            if pre is None:
                pre = RunPreprocessor(volume, mask=Mask(roi_mask(volume.data, n_voxels), volume.affine))
            out = pre.process(volume)
            t2 = time.perf_counter()
            store.save_volume(t, volume.data, volume.affine)
            store.append(out.vector, {"volume": t})
            t3, c3 = time.perf_counter(), time.process_time()
            params.append(out.params)
            if t == 0:
                continue  # the first volume builds the reference: a once-per-run cost, reported apart
            read_ms.append((t1 - t0) * 1e3)
            prep_ms.append((t2 - t1) * 1e3)
            store_ms.append((t3 - t2) * 1e3)
            total_ms.append((t3 - t0) * 1e3)
            cpu_ms.append((c3 - c0) * 1e3)  # this process's CPU time: what other processes' load inflates least
    return {
        "stage": "preprocess", "shape": list(volumes[0].shape), "n_voxels": n_voxels, "format": fmt,
        "volumes": len(volumes) - 1, **summarize(total_ms),
        "read_median_ms": float(np.median(read_ms)), "motion_mask_median_ms": float(np.median(prep_ms)),
        "store_median_ms": float(np.median(store_ms)), "cpu_median_ms": float(np.median(cpu_ms)),
        **(motion_error(params[1:], motion[1 : len(params)]) if motion is not None else {}),
        "target": "median <= 30 ms, read <= 10 ms (quiet machine); within a TR: median <= 100 ms, p99 <= 200 ms",
    }


def _endurance_config(tmp: Path, watch: Path, roi: np.ndarray, affine: np.ndarray, run_volumes: int,
                      decoder: str):
    """The endurance session's configuration, its ROI mask and events table written into ``tmp``."""
    import nibabel as nib

    from rtdecode.base.config import config_from_dict

    nib.save(nib.Nifti1Image(roi.astype(np.uint8), affine), tmp / "roi.nii")
    onsets = np.arange(0, (run_volumes - 10) * 1.5, 4.5)  # a trial every 4.5 s until 15 s before the end
    rows = "\n".join(f"{o:.1f}\t3.0\timg-{i:04d}" for i, o in enumerate(onsets))
    (tmp / "events.tsv").write_text("onset\tduration\timage\n" + rows + "\n")
    return config_from_dict({
        "session": {"root": str(tmp / "sessions"), "subject": "bench"},
        "scanner": {"watch_dir": str(watch), "volumes_per_run": run_volumes, "quarantine_dir": str(tmp / "q"),
                    "pattern": "bench_{run:03d}_{volume:05d}.dcm"},
        "preprocess": {"mask": str(tmp / "roi.nii")},
        "glm": {"events": str(tmp / "events.tsv"), "noise_model": "ar1"},
        "network": {"events_port": 0, "control_port": -1, "decoder": decoder, "resend_s": 5.0},
    })


def _one_volume(side, write: WriteVolume, tmp: Path, watch: Path, data: np.ndarray, affine: np.ndarray, run: int,
                t: int, run_volumes: int) -> float:
    """Volume ``t`` of run ``run`` (from 0) written into the watch folder and stepped through; its ms."""
    name = f"bench_{run + 1:03d}_{t:05d}.dcm"
    staged = tmp / f"{name}.part"
    write(staged, data, affine, run + 1, t + 1)
    staged.replace(watch / name)
    t0 = time.perf_counter()
    target = run * run_volumes + t + 1
    deadline = time.monotonic() + 60
    while side.processed < target:
        side.step(timeout=0.01)
        if time.monotonic() > deadline:
            raise RuntimeError(f"volume {t} of run {run + 1} was not processed within 60 s")
    latency = (time.perf_counter() - t0) * 1e3
    (watch / name).unlink()  # the scanner's folder is not the archive: keep the disk flat
    return latency


def bench_endurance(pool: list[np.ndarray], affine: np.ndarray, write: WriteVolume, volumes: int = 4800,
                    n_voxels: int = 8627, run_volumes: int = 192, seed: int = 0, budget_mb: float = 50.0) -> dict:
    """``volumes`` volumes in runs of ``run_volumes`` (4,800 = 25 runs = 2 h at TR 1.5 s), each one of
    ``pool`` with fresh noise."""
    import psutil

    from rtdecode.scanner import ScannerSide
    from rtdecode.wire.reliable import BetaReceiver, beta_key

    shape = pool[0].shape
    rng = np.random.default_rng(seed)
    proc = psutil.Process()
    n_runs = max(1, volumes // run_volumes)
    receiver = BetaReceiver("tcp://127.0.0.1:0")
    acked = [0]
    stop = threading.Event()

    def decoder_sink() -> None:  # stands in for the decoder: acknowledges every beta it is sent
        while not stop.is_set():
            got = receiver.recv(timeout_ms=50)
            if got is not None:
                receiver.ack(got[0], beta_key(got[1].fields))
                acked[0] += 1

    sink = threading.Thread(target=decoder_sink, daemon=True)
    sink.start()
    latency, rss_end_of_run = [], []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        watch = tmp / "watch"
        watch.mkdir()
        cfg = _endurance_config(tmp, watch, roi_mask(pool[0], n_voxels), affine, run_volumes, receiver.address)
        side = ScannerSide(cfg).start()
        try:
            for run in range(n_runs):
                for t in range(run_volumes):
                    data = pool[t % len(pool)] + rng.normal(0, 5, shape).astype(np.float32)
                    latency.append(_one_volume(side, write, tmp, watch, data, affine, run, t, run_volumes))
                for _ in range(20):  # the end-of-run betas go out with the last volume; let them be acked
                    side.step(timeout=0.01)
                rss_end_of_run.append(proc.memory_info().rss / MB)
        finally:
            side.stop()
            side.net.close()
            stop.set()
            sink.join(timeout=5)
            receiver.close()
    first, last = rss_end_of_run[0], rss_end_of_run[-1]
    w = min(run_volumes, len(latency) // 2)
    start, end = summarize(latency[1:w]), summarize(latency[-w:])
    return {
        "stage": "endurance", "volumes": n_runs * run_volumes, "runs": n_runs, "shape": list(shape),
        "n_voxels": n_voxels, "betas_acknowledged": acked[0],
        "start_median_ms": start["median_ms"], "end_median_ms": end["median_ms"],
        "median_ms": float(np.median(latency)), "p99_ms": float(np.percentile(latency, 99)),
        "rss_first_run_mb": first, "rss_last_run_mb": last, "rss_growth_mb": last - first,
        "target": f"growth <= {budget_mb:g} MB", "within_target": bool(last - first <= budget_mb),
    }
