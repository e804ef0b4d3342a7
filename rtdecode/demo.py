"""``rtdecode demo``: what exists so far, end to end on simulated data.

For now: a simulated scanner writes a run into a watch folder at (sped-up) TR pace while the real
scanner side picks each file up, motion-corrects, masks, stores and publishes it, and a subscriber on
the wire prints what an operator's console would receive. Later issues add the GLM, the decoder,
calibration and the console.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np

from rtdecode.config import config_from_dict, config_to_toml
from rtdecode.live import run_scanner_side
from rtdecode.simulator.scanner import simulate_run, write_run
from rtdecode.transport import Subscriber


def run_demo(out: Path, volumes: int = 60, speedup: float = 4.0, shape: tuple[int, int, int] = (64, 64, 36),
             seed: int = 0, quiet: bool = False) -> dict:
    out = Path(out).resolve()
    watch = out / "scanner-export"
    truth = out / "ground-truth"
    stamp = time.strftime("%Y%m%d%H%M%S")
    cfg = config_from_dict({
        "session": {"root": str(out / "sessions"), "subject": "demo", "session": stamp},
        "scanner": {"watch_dir": str(watch), "tr_s": 1.5, "volumes_per_run": volumes, "missing_timeout_s": 3.0},
        "network": {"events_port": 0},
    })
    watch.mkdir(parents=True, exist_ok=True)
    print(f"1. simulating {volumes} volumes of {'x'.join(map(str, shape))} voxels with known head motion", flush=True)
    run = simulate_run(volumes, shape=shape, voxel_mm=3.0, max_mm=1.5, max_deg=1.5, seed=seed)
    series = int(stamp[-6:])  # a fresh series number each time, as a scanner gives
    writer = threading.Thread(target=write_run, args=(run, watch),
                              kwargs={"series": series, "speedup": speedup, "truth_dir": truth}, daemon=True)
    print(f"2. scanner writing one file per {1.5 / speedup:.2f} s (TR 1.5 s sped up {speedup:g}x) into {watch}", flush=True)
    received: list[str] = []

    def until(side) -> bool:
        if not writer.is_alive() and not writer.ident:
            writer.start()
            _listen(side, received)
        return side.processed >= volumes

    side = run_scanner_side(cfg, idle_timeout=30.0, quiet=quiet, until=until)
    writer.join(timeout=5)
    cfg.session.root.mkdir(parents=True, exist_ok=True)
    (side.folder.path / "config.toml").write_text(config_to_toml(cfg))
    rows, _ = side.runs[series].store.load()
    est = np.array([[float(r[c]) for c in ("trans_x", "trans_y", "trans_z")] for r in rows if r["status"] == "ok"])
    true = run.motion[: len(est), :3]
    err = float(np.median(np.abs(est - true))) if len(est) else float("nan")
    result = {"processed": side.processed, "messages_received": len(received), "median_translation_error_mm": err}
    print(f"3. estimated motion vs ground truth: median translation error {err:.3f} mm", flush=True)
    print(f"4. {len(received)} messages seen on the wire by a console-like subscriber", flush=True)
    return result


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
