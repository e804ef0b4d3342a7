"""``rtdecode bench endurance``: a whole scanner side through a long session, memory measured per run.

The real :class:`~rtdecode.scanner.ScannerSide` with its watcher: each volume is written as a Siemens
mosaic into the watch folder, read, motion corrected, masked, stored, published; every run has an
events table, so the GLM estimates AR(1) betas in real time and at the end of the run, and every beta
goes over the acknowledged channel to a receiver that acknowledges it. RSS is taken at the end of the
first and of the last run: the difference is what a long day costs in memory.
"""

from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from rtdecode.bench import roi_mask, stage, summarize

MB = 2**20


@stage("endurance")
def bench_endurance(volumes: int = 4800, shape: tuple[int, int, int] = (100, 100, 52), n_voxels: int = 8627,
                    run_volumes: int = 192, seed: int = 0, budget_mb: float = 50.0) -> dict:
    """``volumes`` volumes in runs of ``run_volumes`` (4,800 = 25 runs = 2 h at TR 1.5 s)."""
    import nibabel as nib
    import psutil

    from rtdecode.config import config_from_dict
    from rtdecode.ingest.naming import format_name
    from rtdecode.scanner import ScannerSide
    from rtdecode.simulator.dicom_writer import write_mosaic
    from rtdecode.simulator.scanner import simulate_run
    from rtdecode.wire.reliable import BetaReceiver, beta_key

    pool = simulate_run(16, shape=shape, max_mm=1.0, max_deg=1.0, seed=seed)
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
        nib.save(nib.Nifti1Image(roi_mask(pool.volumes[0], n_voxels).astype(np.uint8), pool.affine), tmp / "roi.nii")
        onsets = np.arange(0, (run_volumes - 10) * 1.5, 4.5)  # a trial every 4.5 s until 15 s before the end
        rows = "\n".join(f"{o:.1f}\t3.0\timg-{i:04d}" for i, o in enumerate(onsets))
        (tmp / "events.tsv").write_text("onset\tduration\timage\n" + rows + "\n")
        cfg = config_from_dict({
            "session": {"root": str(tmp / "sessions"), "subject": "bench"},
            "scanner": {"watch_dir": str(watch), "volumes_per_run": run_volumes, "quarantine_dir": str(tmp / "q")},
            "preprocess": {"mask": str(tmp / "roi.nii")},
            "glm": {"events": str(tmp / "events.tsv"), "noise_model": "ar1"},
            "network": {"events_port": 0, "control_port": -1, "decoder": receiver.address, "resend_s": 5.0},
        })
        side = ScannerSide(cfg).start()
        try:
            for run in range(n_runs):
                for t in range(run_volumes):
                    data = pool.volumes[t % len(pool.volumes)] + rng.normal(0, 5, shape).astype(np.float32)
                    name = format_name(cfg.scanner.pattern, run + 1, t)
                    staged = tmp / f"{name}.part"
                    write_mosaic(staged, data, pool.affine, series_number=run + 1, instance=t + 1)
                    staged.replace(watch / name)
                    t0 = time.perf_counter()
                    target = run * run_volumes + t + 1
                    deadline = time.monotonic() + 60
                    while side.processed < target:
                        side.step(timeout=0.01)
                        if time.monotonic() > deadline:
                            raise RuntimeError(f"volume {t} of run {run + 1} was not processed within 60 s")
                    latency.append((time.perf_counter() - t0) * 1e3)
                    (watch / name).unlink()  # the scanner's folder is not the archive: keep the disk flat
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
