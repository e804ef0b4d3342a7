"""``rtdecode bench console``: one console update (a new volume, a log line, now and then a trial) on a
full session: every panel filled (plots with 2,000 volumes, 200 decoded trials with pictures, the runs
table, the alignment and tSNR mosaics, files set aside, marks) and an event log at its 5,000-line limit."""

from __future__ import annotations

import os
import time

import numpy as np

from rtdecode.wire.protocol import Message, encode_png

UID = "b" * 32


def _picture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Smooth random pictures: the redraw cost does not depend on what they show."""
    small = rng.integers(0, 256, (max(1, h // 8), max(1, w // 8), 3), dtype=np.uint8)
    return np.ascontiguousarray(np.repeat(np.repeat(small, 8, 0), 8, 1)[:h, :w])


def full_session(volumes: int = 2000, trials: int = 200, runs: int = 6, log_lines: int = 5000,
                 seed: int = 0) -> tuple[list[tuple[str, Message]], dict[str, np.ndarray]]:
    """A session's messages as a console open all day hears them, and the gallery they name.

    ``runs - 1`` finished runs of 190 volumes, then the open run with ``volumes`` volumes (every 50th
    with an FD alarm, three missing), ``trials`` trials with retrieval and reconstruction spread over
    the runs, a 2 mm-sized alignment mosaic and tSNR map per run, files set aside (one after an operator
    stop), a mark, heartbeats, and status lines until the event log holds ``log_lines`` lines."""
    rng = np.random.default_rng(seed)
    ids = [f"sim-{i:05d}" for i in range(40)]
    gallery = {i: _picture(rng, 128, 128) for i in ids}
    mosaic = encode_png(_picture(rng, 192, 384))
    out: list[tuple[str, Message]] = []
    who = {"subject": "01", "session": "01", "session_uid": UID}

    def say(source: str, mtype: str, fields: dict, images: dict | None = None) -> None:
        out.append((source, Message(mtype, fields, images=images or {}, seq=len(out) + 1)))

    sizes = [190] * (runs - 1) + [volumes]
    per_run = max(1, trials // runs)
    for run, n in enumerate(sizes, start=1):
        say("scanner", "run_started", {"run": run, "series": run + 2, "shape": [96, 96, 60], "n_voxels": 15724,
                                       "n_volumes": max(sizes), "tr_s": 1.5, "fd_threshold_mm": 0.5, "in_brain": 0.97,
                                       **who}, {"alignment": mosaic})
        for t in range(n):
            if run == runs and t in (300, 301, 900):
                say("scanner", "volume_missing", {"run": run, "index": t})
                continue
            fd = 0.8 if t % 50 == 7 else float(abs(rng.normal(0, 0.1)))
            say("scanner", "volume", {"run": run, "index": t, "motion": rng.normal(0, 0.2, 6).tolist(), "fd": fd,
                                      "fd_alarm": fd > 0.5, "dvars": float(rng.normal(20, 2)), "tsnr": 40.0,
                                      "latency_ms": float(rng.normal(70, 5)),
                                      "stages_ms": {"read": 5.0, "preprocess": 40.0}})
            if t % 96 == 95:
                say("scanner", "qa_map", {"run": run, "index": t, "median_tsnr": 40.0}, {"tsnr": mosaic})
        first = (run - 1) * per_run
        for trial in range(first, min(trials, first + per_run) if run < runs else trials):
            image = ids[trial % len(ids)]
            top = [image, *ids[1:5]] if trial % 3 else ids[5:10]
            say("scanner", "beta", {"run": run, "trial": trial, "image": image, "version": "realtime",
                                    "onset": 4.5 * (trial - first) + 6.0, **who})
            say("decoder", "result", {"run": run, "trial": trial, "version": "realtime", "image": image,
                                      "stage": "retrieval", "top_ids": top, "top_scores": [0.5, 0.4, 0.3, 0.2, 0.1],
                                      "timings_ms": {"prior_ms": 80.0}, "tier": "unclip", **who})
            say("decoder", "result", {"run": run, "trial": trial, "version": "realtime", "image": image,
                                      "stage": "reconstruction", "tier": "unclip", **who},
                {"reconstruction": encode_png(gallery[image])})
        if run < runs:
            reason = "stopped by operator" if run == 2 else "complete"
            say("scanner", "run_ended", {"run": run, "n_volumes": n, "reason": reason})
            if run == 2:
                say("scanner", "volume_rejected", {"run": run, "path": "MR.0004.0191.dcm", "reason": "run stopped by operator"})
    say("scanner", "volume_rejected", {"run": runs, "path": "MR.0008.0099.dcm", "reason": "not a DICOM file"})
    say("scanner", "mark", {"run": 1, "trial": 1, "version": "realtime", "bad": True, "note": "eyes closed"})
    say("decoder", "heartbeat", {"service": "decoder", "queue": 0, "decoded": trials, "model": "sub01-model",
                                 "gallery": len(ids)})
    for k in range(log_lines):  # armed/disarmed lines until the event log is at its limit
        say("scanner", "status", {"state": ("armed", "disarmed")[k % 2]})
    return out, gallery


def bench_console(volumes: int = 2000, updates: int = 100, trials: int = 200, seed: int = 0) -> dict:
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PyQt6 import QtWidgets

    from gui.console import ConsoleWindow, dispose
    from gui.state import ConsoleState

    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication([])
    rng = np.random.default_rng(seed + 1)
    msgs, gallery = full_session(volumes, trials, seed=seed)
    state = ConsoleState()
    for source, msg in msgs:
        state.apply(msg, source)
    run = max(state.runs)
    seq = len(msgs)

    def send(source: str, mtype: str, fields: dict, images: dict | None = None) -> None:
        nonlocal seq
        seq += 1
        state.apply(Message(mtype, fields, images=images or {}, seq=seq), source)

    window = ConsoleWindow(state, gallery)
    window.resize(1366, 728)
    window.show()
    window.tabs.setCurrentWidget(window.log)  # the busiest tab: the log scrolls with every line
    window.refresh()
    app.processEvents()
    ms = []
    for k, t in enumerate(range(volumes, volumes + updates)):
        t0 = time.perf_counter()
        send("scanner", "volume", {"run": run, "index": t, "motion": rng.normal(0, 0.2, 6).tolist(), "fd": 0.8,
                                   "fd_alarm": k % 2 == 0, "dvars": 20.0, "tsnr": 40.0, "latency_ms": 70.0})
        send("scanner", "status", {"state": ("armed", "disarmed")[k % 2]})  # the full log rolls on
        if k % 4 == 3:  # a trial every fourth volume, as at one trial per 4.5 s with a 1.5 s TR
            trial = trials + k
            image = next(iter(gallery))
            send("decoder", "result", {"run": run, "trial": trial, "image": image, "stage": "retrieval",
                                       "top_ids": list(gallery)[:5], "top_scores": [0.5] * 5})
            send("decoder", "result", {"run": run, "trial": trial, "image": image, "stage": "reconstruction"},
                 {"reconstruction": encode_png(gallery[image])})
        window.refresh()
        app.processEvents()  # includes the repaint
        ms.append((time.perf_counter() - t0) * 1e3)
    filled = {"log_lines": len(state.log), "trials": len(state.trials), "runs": len(state.runs)}
    dispose(window)
    return {"stage": "console", "history_volumes": volumes, "trials": trials, "updates": updates, **filled,
            "median_ms": float(np.median(ms)), "p99_ms": float(np.percentile(ms, 99)), "max_ms": float(max(ms))}
