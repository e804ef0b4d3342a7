"""Issue 28, round 4 (an operator's two-participant day walked from the docs): the next participant's
status line, set-aside lines whose reason shows, the alignment tab and the replay banner at 1366x768."""

from __future__ import annotations

import numpy as np
import pytest

from gui.state import ConsoleState
from rtdecode.wire.protocol import Message, encode_png

from conftest import full_session_window

pytest.importorskip("pytestqt")

TWO = {"subject": "02", "session": "01", "session_uid": "b" * 32}
UID_NAME = "1.3.12.2.1107.5.2.43.167004.30000025120508120345678900000042.dcm"  # a 60+ character export name


def test_a_console_opened_before_the_first_run_names_the_participant():
    """3: a console opened just after `rtdecode run` for participant 2 showed no participant."""
    state = ConsoleState()
    state.apply(Message("heartbeat", {"service": "scanner", "refused": 0, **TWO}, seq=1, boot="1" * 16, time=50.0),
                "scanner")
    assert state.status == "session sub-02 ses-01: waiting for its first run"
    assert state.identity["subject"] == "02"


def test_a_file_set_aside_before_the_first_run_names_the_session_and_its_reason_first():
    """3, 4: the set-aside line came without the session, and its reason after a 60-character name."""
    state = ConsoleState()
    reason = "series 7 was recorded by another session (sub-01 ses-01, run 1): not a run of sub-02 ses-01"
    state.apply(Message("volume_rejected", {"path": UID_NAME, "reason": reason, **TWO}, seq=1, boot="1" * 16,
                        time=60.0), "scanner")
    assert state.identity.get("subject") == "02"  # the line is shown under the session it belongs to
    line = state.log[-1].text
    assert line.startswith(f"file set aside: {reason} (file "), line
    assert "…" in line and UID_NAME[:10] in line and UID_NAME[-12:] in line and len(line) < len(reason) + 60


def test_at_1366x768_the_alignment_mosaics_keep_a_usable_height_and_scroll(qtbot, windows):
    """5: titles clipped, mosaics squeezed to ~30 px strips, no scrollbar."""
    from gui.alignment import MOSAIC_MIN_H

    window = full_session_window(windows, qtbot)
    # A scanner side's mosaic: one wide row of slices (16 slices of 60 x 60), each map as wide.
    wide = encode_png(np.random.default_rng(0).integers(0, 255, (60, 960, 3), dtype=np.uint8))
    window.state.apply(Message("run_started", {"run": 9, "series": 19, "shape": [], "n_voxels": 200}, images={
        "alignment": wide}, seq=10**6, boot="9" * 16, time=1.0), "scanner")
    window.state.apply(Message("qa_map", {"run": 9, "index": 5, "median_tsnr": 40.0}, images={"tsnr": wide},
                               seq=10**6 + 1, boot="9" * 16, time=2.0), "scanner")
    window.refresh()
    window.tabs.setCurrentIndex(3)
    qtbot.wait(50)
    panel = window.alignment
    for label in (panel.mosaic, panel.tsnr):
        assert label.pixmap() is not None and not label.pixmap().isNull()
        assert label.height() >= MOSAIC_MIN_H, (label.height(), MOSAIC_MIN_H)
    area = window.tabs.currentWidget()
    assert panel.height() > area.viewport().height()  # taller than the tab: so it scrolls
    assert area.verticalScrollBar().maximum() > 0


def test_the_replay_banner_is_one_compact_line(qtbot, windows):
    """5: the amber replay banner left the trials table two rows."""
    window = full_session_window(windows, qtbot, replay=True)
    banner = window.banner
    assert banner.isVisible()
    assert banner.height() <= banner.fontMetrics().height() + 6, banner.height()
    window.tabs.setCurrentIndex(0)
    qtbot.wait(50)
    table = window.trials.table
    rows = table.viewport().height() // max(1, table.verticalHeader().defaultSectionSize())
    assert rows >= 3, rows  # 1366 x 768 is tight: 3 rows beside the whole current trial (before: under 2)


def test_end_of_run_estimates_are_listed_and_counted_apart(qtbot, windows):
    """6: the light said '76 decoded' but only the realtime rows were shown; a marked trial is not counted."""
    from gui.console import ConsoleWindow

    state = ConsoleState()
    state.apply(Message("run_started", {"run": 1, "series": 7, "shape": [], "n_voxels": 200, **TWO},
                        seq=1, boot="1" * 16), "scanner")
    seq = 1
    for trial, image in enumerate(("sim-00001", "sim-00002", "sim-00003")):
        seq += 1
        state.apply(Message("trial", {"run": 1, "trial": trial, "image": image, "version": "realtime"}, seq=seq,
                            boot="1" * 16), "scanner")
        for version, top in (("realtime", "sim-00009"), ("endofrun", image)):  # the end of run gets them right
            seq += 1
            state.apply(Message("result", {"run": 1, "trial": trial, "version": version, "image": image,
                                           "stage": "retrieval", "top_ids": [top], "top_scores": [0.5], **TWO},
                                seq=seq, boot="2" * 16), "decoder")
    state.mark_bad((1, 2, "endofrun"))
    window = windows(ConsoleWindow(state))
    window.refresh()
    table = window.trials.table
    shown = [(table.item(r, 0).text(), table.item(r, 5).text()) for r in range(table.rowCount())]
    assert shown == [("1.0", "realtime"), ("1.0", "endofrun"), ("1.1", "realtime"), ("1.1", "endofrun"),
                     ("1.2", "realtime"), ("1.2", "endofrun")], shown
    assert "top-1 0% of 3 trials; end of run 100% of 2" in window.trials.rate.text(), window.trials.rate.text()


def test_a_live_screenshot_waits_for_the_decoders_gallery_and_the_chance_line_says_whose(qtbot):
    """7: top-1 chance used the console's own --gallery count before the decoder's heartbeat came."""
    import threading

    from gui.feed import LiveFeed
    from gui.panels import TrialTable
    from rtdecode.wire.sockets import Publisher

    pub = Publisher("tcp://127.0.0.1:0", replay=20)
    state = ConsoleState(gallery_size=12)  # the console's --gallery
    state.apply(Message("result", {"run": 1, "trial": 0, "image": "a", "stage": "retrieval", "top_ids": ["a"],
                                   "top_scores": [0.5]}, seq=1, boot="3" * 16), "decoder")
    table = TrialTable(state)
    qtbot.addWidget(table)
    table.draw()
    assert "among 12 images of the console's --gallery" in table.rate.text(), table.rate.text()
    feed = LiveFeed(state, [], None, pub.address)
    stop = threading.Event()

    def decoder() -> None:  # its replay at once; its first heartbeat (with the gallery) a while later
        pub.send(Message("result", {"run": 1, "trial": 1, "image": "b", "stage": "retrieval", "top_ids": ["a"],
                                    "top_scores": [0.4]}))
        for _ in range(150):
            pub.serve()
            if stop.wait(0.01):
                return
        while not stop.wait(0.2):
            pub.send(Message("heartbeat", {"service": "decoder", "gallery": 50}))

    sender = threading.Thread(target=decoder, daemon=True)
    sender.start()
    try:
        assert feed.drain(30.0) == []
    finally:
        stop.set()
        sender.join(timeout=10)
        feed.close()
        pub.close()
    assert (state.gallery_size, state.gallery_from) == (50, "decoder")
    table.draw()
    assert table.rate.text().endswith("(chance 2.0% among 50 images)"), table.rate.text()


def test_the_motion_key_is_above_the_traces_and_a_restarts_spike_leaves_the_latency_axis_readable(qtbot, windows):
    """11: legend entries sat under the traces; after a restart one late volume put the latency off scale."""
    from gui.console import ConsoleWindow

    state = ConsoleState()
    state.apply(Message("run_started", {"run": 1, "series": 7, "shape": [], "n_voxels": 200, "tr_s": 1.5, **TWO},
                        seq=1, boot="1" * 16), "scanner")
    for i in range(40):
        latency = 90000.0 if i == 20 else 80.0 + i  # the volume the scanner side read after a 90 s restart
        state.apply(Message("volume", {"run": 1, "index": i, "motion": [0.01 * i] * 6, "fd": 0.1, "dvars": 1.0,
                                       "tsnr": 50.0, "latency_ms": latency}, seq=i + 2, boot="1" * 16), "scanner")
    window = windows(ConsoleWindow(state))
    window.refresh()
    plots = window.plots
    assert plots.translation.legend is None and plots.rotation.legend is None
    assert all(name in plots.rotation.titleLabel.text for name in ("pitch (x)", "roll (y)", "yaw (z)"))
    low, high = plots.latency_plot.viewRange()[1]
    assert low == 0 and 1500 <= high < 5000, (low, high)  # the TR (1500 ms) and the other volumes in view


def test_the_session_line_is_timed_at_the_sessions_start():
    """11: "session sub-01 ses-01" was logged at the first run a late console heard, not the session's start."""
    state = ConsoleState()
    state.apply(Message("run_started", {"run": 1, "series": 7, "shape": [], "n_voxels": 200, **TWO},
                        seq=5, boot="1" * 16, time=2000.0), "scanner")
    state.apply(Message("status", {"state": "started", "service": "scanner", "boot_id": "1" * 16, **TWO},
                        seq=1, boot="1" * 16, time=1000.0), "scanner")
    assert [(e.time, e.text) for e in state.log if e.text.startswith("session")] == [(1000.0, "session sub-02 ses-01")]
