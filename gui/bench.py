"""``rtdecode bench console``: one console update (a new volume, then a redraw) with a long history."""

from __future__ import annotations

import os
import time

import numpy as np


def bench_console(volumes: int = 2000, updates: int = 100, trials: int = 200, seed: int = 0) -> dict:
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PyQt6 import QtWidgets

    from gui.console import ConsoleWindow, dispose
    from gui.state import ConsoleState, TrialView
    from rtdecode.wire.protocol import Message

    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication([])
    rng = np.random.default_rng(seed)
    ids = [f"img-{i:02d}" for i in range(20)]
    # Smooth random pictures: the redraw cost does not depend on what they show.
    gallery = {i: np.repeat(np.repeat(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8), 8, 0), 8, 1) for i in ids}
    state = ConsoleState(volumes_expected=volumes + updates)
    seq = 0

    def volume(t: int) -> Message:
        nonlocal seq
        seq += 1
        m = Message("volume", {"run": 1, "index": t, "motion": rng.normal(0, 0.2, 6).tolist(), "fd": float(abs(rng.normal(0, 0.2))),
                               "dvars": float(rng.normal(20, 2)), "tsnr": 40.0, "latency_ms": float(rng.normal(70, 5))})
        m.seq = seq
        return m

    for t in range(volumes):
        state.apply(volume(t))
    for k in range(trials):
        image = ids[k % 20]
        state.trials[(1, k, "realtime")] = TrialView(1, k, image, top_ids=ids[:5], top_scores=[0.5] * 5,
                                                     reconstruction=gallery[image])
    state.current = (1, trials - 1, "realtime")
    window = ConsoleWindow(state, gallery)
    window.show()
    window.refresh()
    app.processEvents()
    ms = []
    for t in range(volumes, volumes + updates):
        t0 = time.perf_counter()
        state.apply(volume(t))
        window.refresh()
        app.processEvents()  # includes the repaint
        ms.append((time.perf_counter() - t0) * 1e3)
    dispose(window)
    return {"stage": "console", "history_volumes": volumes, "trials": trials, "updates": updates,
            "median_ms": float(np.median(ms)), "p99_ms": float(np.percentile(ms, 99)), "max_ms": float(max(ms))}
