"""``rtdecode demo``: what exists so far, end to end on simulated data.

For now: a simulated subject sees a run of images while a simulated scanner writes the volumes into a
watch folder at (sped-up) TR pace; the real scanner side picks each file up, motion-corrects, masks,
stores and publishes it, and estimates every trial's beta as soon as its response is in; a subscriber
on the wire sees what an operator's console and the decoder would receive. At the end the estimated
motion and betas are compared with the simulator's ground truth. Later issues add the decoder,
calibration and the console.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from rtdecode.config import config_from_dict, config_to_toml
from rtdecode.glm.store import BetaStore
from rtdecode.live import run_scanner_side
from rtdecode.simulator.paradigm import Paradigm
from rtdecode.simulator.scanner import write_run
from rtdecode.simulator.subjects import SubjectSpec
from rtdecode.simulator.visit import Visit
from rtdecode.transport import Subscriber


def run_demo(out: Path, volumes: int = 192, speedup: float = 6.0, shape: tuple[int, int, int] = (64, 64, 36),
             seed: int = 0, quiet: bool = False, trials: int | None = None) -> dict:
    out = Path(out).resolve()
    watch, truth = out / "scanner-export", out / "ground-truth"
    stamp = time.strftime("%Y%m%d%H%M%S")
    series = int(stamp[-6:])  # a fresh series number each time, as a scanner gives
    tr = 1.5
    n_trials = trials if trials is not None else min(63, max(1, int((volumes * tr - 4.5 - 7.5 - 3) // 4) + 1))
    visit = Visit(SubjectSpec(name="demo", n_voxels=2000, seed=1), n_runs=1, n_repeated=0,
                  paradigm=Paradigm(tr_s=tr, volumes=volumes, trials=n_trials), shape=shape, voxel_mm=3.0, seed=seed)
    run = visit.run(0)
    run.save_truth(truth, f"series-{series:03d}")
    visit.save_stimuli(out / "stimuli")
    roi = np.zeros(shape, np.uint8)
    roi.ravel()[run.roi_index] = 1
    watch.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(roi, run.affine), out / "visual-roi.nii")
    cfg = config_from_dict({
        "session": {"root": str(out / "sessions"), "subject": "demo", "session": stamp},
        "scanner": {"watch_dir": str(watch), "tr_s": tr, "volumes_per_run": volumes, "missing_timeout_s": 3.0},
        "preprocess": {"mask": str(out / "visual-roi.nii")},
        "glm": {"events": str(truth / "series-{series:03d}_events.tsv")},
        "network": {"events_port": 0, "control_port": 0},
    })
    print(f"1. simulated subject '{visit.spec.name}': {len(run.roi_index)} visual voxels on a "
          f"{'x'.join(map(str, shape))} grid; {n_trials} images of 3 s every 4 s; known head motion", flush=True)
    writer = threading.Thread(target=write_run, args=(run, watch), kwargs={"series": series, "speedup": speedup},
                              daemon=True)
    print(f"2. scanner writing one file per {tr / speedup:.2f} s (TR {tr:g} s sped up {speedup:g}x) into {watch}",
          flush=True)
    received: list[str] = []

    def until(side) -> bool:
        if not writer.ident:
            writer.start()
            _listen(side, received)
        return side.processed >= volumes

    side = run_scanner_side(cfg, idle_timeout=30.0, quiet=quiet, until=until)
    writer.join(timeout=5)
    (side.folder.path / "config.toml").write_text(config_to_toml(cfg))
    rows, _ = side.runs[series].store.load()
    est = np.array([[float(r[c]) for c in ("trans_x", "trans_y", "trans_z")] for r in rows if r["status"] == "ok"])
    err = float(np.median(np.abs(est - run.motion[: len(est), :3]))) if len(est) else float("nan")
    number = side.runs[series].number
    rt_rows, _, _ = BetaStore(side.folder, number, "realtime").load()
    end_rows, end_raw, _ = BetaStore(side.folder, number, "endofrun").load()
    corr = _truth_correlation(end_rows, end_raw, run.betas)
    est_ms = [float(r["estimate_ms"]) for r in rt_rows]
    result = {"processed": side.processed, "messages_received": len(received), "median_translation_error_mm": err,
              "betas_realtime": len(rt_rows), "betas_endofrun": len(end_rows), "beta_truth_correlation": corr,
              "beta_estimate_median_ms": float(np.median(est_ms)) if est_ms else float("nan")}
    print(f"3. estimated motion vs ground truth: median translation error {err:.3f} mm", flush=True)
    print(f"4. {len(rt_rows)} real-time betas (median {result['beta_estimate_median_ms']:.1f} ms each) and "
          f"{len(end_rows)} end-of-run betas; end-of-run vs true responses: median voxel r = {corr:.2f} "
          f"(simulated single-trial reliability {np.median(run.reliability):.2f})", flush=True)
    print(f"5. {received.count('beta')} beta and {received.count('volume')} volume messages seen on the wire by a "
          f"console-like subscriber; session folder: {side.folder.path}", flush=True)
    return result


def _truth_correlation(rows: list[dict], betas: np.ndarray, truth: np.ndarray) -> float:
    if len(rows) < 3:
        return float("nan")
    trials = np.array([int(r["trial"]) for r in rows])
    est, true = betas, truth[:, trials].T
    est = (est - est.mean(0)) / (est.std(0) + 1e-9)
    true = (true - true.mean(0)) / (true.std(0) + 1e-9)
    return float(np.median((est * true).mean(0)))


def _listen(side, received: list[str]) -> None:
    address = side.publisher.address if side.publisher is not None else None
    if address is None:
        return
    sub = Subscriber(address)

    def loop() -> None:
        while not side._stop.is_set():
            msg = sub.recv(timeout_ms=100)
            if msg is not None:
                received.append(msg.type)
        sub.close()

    threading.Thread(target=loop, daemon=True, name="rtdecode-demo-sub").start()
