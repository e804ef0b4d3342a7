"""The operator console under pytest-qt (offscreen): fed messages, it shows the right run, plots and trial."""

from __future__ import annotations

import time

import numpy as np
import pytest

from gui.state import ConsoleState
from rtdecode.gallery.builtin import StimulusSet
from rtdecode.wire.protocol import Message, encode_png

pytest.importorskip("pytestqt")


def recorded_session(n_volumes: int = 30) -> tuple[list[tuple[str, Message]], dict[str, np.ndarray]]:
    stimuli = StimulusSet()
    gallery = {stimuli.ids[i]: stimuli.image(i) for i in range(8)}
    msgs: list[tuple[str, Message]] = [("scanner", Message("run_started", {"run": 1, "series": 7, "shape": [40, 46, 36], "n_voxels": 380}))]
    for t in range(n_volumes):
        fd = 0.9 if t == 12 else 0.1
        msgs.append(("scanner", Message("volume", {"run": 1, "index": t, "motion": [0.01 * t, 0, 0, 0, 0.02, 0], "fd": fd,
                                                   "dvars": 20.0 + t % 3, "tsnr": 40.0, "latency_ms": 70.0 + t})))
    msgs.append(("scanner", Message("volume_missing", {"run": 1, "index": n_volumes})))
    for trial in range(3):
        shown = stimuli.ids[trial]
        msgs.append(("scanner", Message("beta", {"run": 1, "trial": trial, "image": shown, "version": "realtime"})))
        top = [shown, *[i for i in stimuli.ids[3:7]]] if trial != 1 else stimuli.ids[3:8]
        msgs.append(("decoder", Message("result", {"run": 1, "trial": trial, "version": "realtime", "image": shown,
                                                   "stage": "retrieval", "top_ids": top, "top_scores": [0.9, 0.5, 0.4, 0.3, 0.2],
                                                   "timings_ms": {"prior_ms": 80.0}})))
        msgs.append(("decoder", Message("result", {"run": 1, "trial": trial, "version": "realtime", "image": shown,
                                                   "stage": "reconstruction"},
                                        images={"reconstruction": encode_png(gallery[shown][::2, ::2])})))
    msgs.append(("decoder", Message("heartbeat", {"service": "decoder"})))
    for seq, (_, m) in enumerate(msgs, start=1):
        m.seq = seq
    return msgs, gallery


def test_console_shows_run_plots_and_the_current_trial(windows, tmp_path):
    from gui.console import ConsoleWindow, DisplayWindow

    msgs, gallery = recorded_session()
    state = ConsoleState(fd_threshold_mm=0.5, volumes_expected=192)
    for source, m in msgs:
        state.apply(m, source)
    assert not state.apply(msgs[5][1], msgs[5][0])  # a replayed message is not applied twice
    window = windows(ConsoleWindow(state, gallery))
    window.refresh()
    assert "1 missing" in window.status.text() and "1 FD alarm" in window.status.text()
    x, y = window.fd_curve.getOriginalDataset()
    assert len(x) == 31 and y[12] == pytest.approx(0.9) and np.isnan(y[30])  # the missing volume breaks the curve
    assert len(window.fd_alarm.getOriginalDataset()[0]) == 1 and window.fd_line.value() == pytest.approx(0.5)
    assert len(window.motion_curves[0].getOriginalDataset()[1]) == 31 and len(window.motion_curves) == 6
    assert state.current == (1, 2, "realtime")
    assert "trial 2" in window.stimulus.caption.text() and not window.reconstruction.picture.pixmap().isNull()
    assert window.retrieved[0].caption.text().endswith("✓")  # trial 2's top hit is its stimulus
    assert window.table.rowCount() == 3 and window.table.item(1, 1).text() == "sim-00001"
    # A trial whose beta came first and its retrieval later: the table row fills in.
    late = [Message("beta", {"run": 1, "trial": 3, "image": "sim-00003", "version": "realtime"}),
            Message("result", {"run": 1, "trial": 3, "version": "realtime", "image": "sim-00003", "stage": "retrieval",
                               "top_ids": ["sim-00004"] * 5, "top_scores": [0.7] * 5})]
    late[0].seq, late[1].seq = 1000, 1001
    state.apply(late[0], "scanner")
    window.refresh()
    assert window.table.rowCount() == 4 and window.table.item(3, 2).text() == "…"
    state.apply(late[1], "decoder")
    window.refresh()
    assert [window.table.item(3, c).text() for c in (2, 3, 4)] == ["sim-00004", "miss", "0.70"]
    window.table.selectRow(1)
    window.mark_selected_bad()
    assert state.trials[(1, 1, "realtime")].bad and window.table.item(1, 8).text() == "bad"
    assert "decoder" in window.lights["decoder"].text()
    shot = window.screenshot(tmp_path / "console.png")
    assert shot.stat().st_size > 10_000
    display = windows(DisplayWindow(state))
    display.refresh()
    assert not display.picture.pixmap().isNull()


def test_bench_console_runs(qtbot):
    from gui.bench import bench_console

    result = bench_console(volumes=50, updates=3, trials=4)
    assert result["updates"] == 3 and 0 < result["median_ms"] <= result["max_ms"]


def test_start_and_stop_a_run_from_the_console(qtbot, windows, tmp_path, small_run):
    from PyQt6 import QtCore

    from gui.console import ConsoleWindow
    from rtdecode.simulator.scanner import SimulatedRun, write_run
    from rtdecode.wire.control import send_command

    from conftest import SideThread, make_config

    cfg = make_config(tmp_path)
    with SideThread(cfg, n=99, timeout=30) as st:
        first = SimulatedRun(small_run.volumes[:5], small_run.affine, small_run.motion[:5])
        write_run(first, cfg.scanner.watch_dir, series=4, speedup=100)
        deadline = time.monotonic() + 20
        while st.side.processed < 5 and time.monotonic() < deadline:
            qtbot.wait(50)
        address = st.side.control.address

        def control(action: str, fields: dict | None = None) -> str:
            reply = send_command(address, action, timeout_ms=5000, fields=fields)
            return "no answer" if reply is None else f"{reply.fields['ok']}: {reply.fields['detail']}"

        asked = []

        def confirm(title: str, text: str) -> bool:
            asked.append(title)
            return len(asked) > 1  # the operator says no to the first question, yes after

        window = windows(ConsoleWindow(ConsoleState(), control=control, confirm=confirm))
        assert window.command("start_run").startswith("False: run 1 is still in progress")
        qtbot.mouseClick(window.stop_button, QtCore.Qt.MouseButton.LeftButton)
        assert asked == ["stop run"] and "still in progress" in window.reply.text()  # declined: nothing sent
        assert not st.side.runs[4].ended
        window.show()
        qtbot.waitUntil(window.isActiveWindow, timeout=5000)  # shortcuts need an active window
        qtbot.keyClick(window, QtCore.Qt.Key.Key_Period, QtCore.Qt.KeyboardModifier.ControlModifier)
        assert asked == ["stop run"] * 2
        assert window.reply.text() == "True: run 1 ended by the operator after 5 volumes"
        assert st.side.runs[4].ended
        assert window.command("start_run") == "True: armed: the next series starts a new run"
        assert window.command("stop_run").startswith("False: no run in progress")
        st.side.stop()


@pytest.mark.slow
def test_screenshots_command_runs_the_real_path(tmp_path):
    from rtdecode.tools.screenshots import make_screenshots

    paths = make_screenshots(tmp_path / "shots", tmp_path / "work", volumes=30)
    assert [p.name for p in paths] == ["console.png", "display.png"] and all(p.stat().st_size > 5000 for p in paths)
    assert len(list((tmp_path / "work" / "decoded").glob("sub-*/ses-*/results.tsv"))) == 1


def test_trial_table_follows_the_newest_trial_unless_scrolled_back(qtbot, windows):
    from gui.console import ConsoleWindow

    state = ConsoleState(fd_threshold_mm=0.5, volumes_expected=192)
    window = windows(ConsoleWindow(state, {}))
    window.resize(1000, 700)
    window.show()
    qtbot.waitExposed(window, timeout=5000)
    seq = iter(range(1, 10_000))

    def add_trials(first: int, n: int) -> None:
        for trial in range(first, first + n):
            m = Message("beta", {"run": 2, "trial": trial, "image": f"sim-{trial:05d}", "version": "realtime"})
            m.seq = next(seq)
            state.apply(m, "scanner")
            r = Message("result", {"run": 2, "trial": trial, "stage": "retrieval", "top_ids": [f"sim-{trial:05d}"],
                                   "top_scores": [0.5]}, seq=next(seq))
            state.apply(r, "decoder")
        window.refresh()

    add_trials(0, 60)
    bar = window.table.verticalScrollBar()
    assert bar.maximum() > 0 and bar.value() == bar.maximum()  # the newest trial is in view
    add_trials(60, 5)
    assert bar.value() == bar.maximum()
    bar.setValue(0)  # the operator scrolls back to look at an early trial
    add_trials(65, 5)
    assert bar.value() == 0 and window.table.rowCount() == 70


def test_dispose_frees_a_shown_console_at_once(qtbot):
    """Windows are freed when the test or the app says so, not by the garbage collector mid-paint."""
    import pyqtgraph as pg
    from PyQt6 import sip

    from gui.console import ConsoleWindow, dispose

    window = ConsoleWindow(ConsoleState())
    window.show()
    qtbot.waitExposed(window, timeout=5000)
    views = window.findChildren(pg.GraphicsView)
    assert views and not sip.isdeleted(window)
    dispose(window)
    assert sip.isdeleted(window) and all(sip.isdeleted(v) for v in views)


def test_a_refined_trial_updates_in_place_and_the_history_keeps_the_newest(windows):
    """Refinements rt4.5, rt6.0 then rt7.5 of one trial: one table row and one current trial, showing the newest
    version and how far into the response it is; a late rt4.5 (a resend) changes nothing; the newest
    reconstruction replaces the older one, and an older one arriving late does not."""
    from gui.console import ConsoleWindow

    stimuli = StimulusSet()
    state = ConsoleState(fd_threshold_mm=0.5, volumes_expected=192)
    seq = iter(range(1, 1000))

    def send(source: str, m: Message) -> None:
        m.seq = next(seq)
        state.apply(m, source)

    send("scanner", Message("run_started", {"run": 1, "series": 7, "shape": [40, 46, 36], "n_voxels": 380,
                                            "final_delay_s": 15.0}))
    picture = {v: encode_png(stimuli.image(i)[::4, ::4]) for i, v in enumerate(("rt4.5", "rt6.0", "rt7.5"))}
    for version in ("rt4.5", "rt6.0", "rt7.5", "rt4.5"):
        top = ["sim-00001"] if version == "rt7.5" else ["sim-00002"]
        send("decoder", Message("result", {"run": 1, "trial": 0, "version": version, "image": "sim-00001",
                                           "stage": "retrieval", "top_ids": top, "top_scores": [0.5]}))
    send("decoder", Message("result", {"run": 1, "trial": 0, "version": "rt6.0", "image": "sim-00001",
                                       "stage": "reconstruction"}, images={"reconstruction": picture["rt6.0"]}))
    send("decoder", Message("result", {"run": 1, "trial": 0, "version": "rt4.5", "image": "sim-00001",
                                       "stage": "reconstruction"}, images={"reconstruction": picture["rt4.5"]}))
    window = windows(ConsoleWindow(state, {}))
    window.refresh()
    view = state.trials[(1, 0, "refine")]
    assert state.current == (1, 0, "refine") and len(state.trials) == 1
    assert view.version == "rt7.5" and view.hit and view.recon_version == "rt6.0"
    assert "rt7.5: 7.5 of 15 s after onset" in window.stimulus.caption.text()
    assert window.reconstruction.caption.text().startswith("rt6.0")
    assert window.table.rowCount() == 1 and window.table.item(0, 5).text() == "rt7.5"
    assert state.hits() == [True] and [v.trial for v in state.history()] == [0]


def test_a_decoder_refusing_betas_shows_on_the_console_once_a_minute():
    """Before, the heartbeat's ``refused`` was dropped: a decoder turning away the next participant's betas
    (another person's model) looked healthy ("queue 0, 152 decoded"); only its own log said so."""
    state = ConsoleState()
    t0 = 1_000_000.0
    for seq, (dt, refused) in enumerate([(0, 0), (1, 0), (2, 3), (4, 5), (6, 7), (70, 9), (71, 9)], start=1):
        state.apply(Message("heartbeat", {"service": "decoder", "queue": 0, "decoded": 12, "refused": refused},
                            seq=seq, time=t0 + dt), "decoder")
    warnings = [e for e in state.log if e.severity == "warning" and "refusing" in e.text]
    assert state.decoder_refused == 9
    assert [e.time - t0 for e in warnings] == [2, 70]
    assert "(9 since it started)" in warnings[-1].text


def test_results_held_for_unnamed_sessions_are_bounded():
    """Results of sessions the scanner side has not named are held for later; a stream of made-up session
    uids must not hold without end: only the HELD_SESSIONS most recently seen are kept."""
    from gui.sessions import HELD_SESSIONS

    state = ConsoleState()
    for i in range(HELD_SESSIONS + 5):
        uid = f"{i:032x}"
        state.apply(Message("result", {"run": 1, "trial": 0, "version": "realtime", "image": "sim-00001",
                                       "stage": "retrieval", "subject": "01", "session": "01", "session_uid": uid},
                            seq=i + 1), "decoder")
    assert list(state.sessions.held) == [f"{i:032x}" for i in range(5, HELD_SESSIONS + 5)]
    assert not state.trials  # nothing shown before the scanner side names a session
