"""The console's panels on real sockets: alignment, event log, runs table, labels, the display's silence."""

from __future__ import annotations

import time

import nibabel as nib
import numpy as np
import pytest
from test_scanner_side import PATTERN, _dicom_bytes, _put

from gui.sessions import SessionFilter
from gui.state import ConsoleState
from rtdecode.preprocess.alignment import AlignmentLimits, alignment_warnings, check_alignment
from rtdecode.preprocess.pipeline import intensity_mask
from rtdecode.simulator.scanner import format_name
from rtdecode.wire.protocol import Message

from conftest import SideThread, make_config

pytest.importorskip("pytestqt")


def _translation(mm: float) -> np.ndarray:
    m = np.eye(4)
    m[0, 3] = mm
    return m


def test_alignment_figures_flag_a_mask_off_the_brain_and_a_large_shift(small_run):
    ref, affine = small_run.volumes[0], small_run.affine
    mask = intensity_mask(ref, 0.3)
    good = check_alignment(ref, affine, mask, affine, np.eye(4), session_reference=ref)
    assert good.in_brain > 0.95 and good.match == pytest.approx(1.0) and good.shift_mm == 0
    assert alignment_warnings(good, AlignmentLimits()) == []
    assert good.mosaic.ndim == 3 and (good.mosaic == [255, 40, 40]).all(axis=2).any()  # the outline is drawn
    moved = check_alignment(ref, affine, mask, affine, _translation(25.0), session_reference=ref)
    lines = alignment_warnings(moved, AlignmentLimits())
    assert moved.shift_mm == pytest.approx(25.0) and moved.in_brain < good.in_brain and moved.match < 0.9
    assert any("shift 25.0 mm" in line for line in lines)


def test_the_alignment_panel_warns_when_the_mask_misses_visual_cortex(qtbot, windows, tmp_path, small_run):
    """A mask on a grid 40 mm off the head (a wrong file, a reference from another session): the
    scanner side measures where it landed and the console says so at run start, in red."""
    from gui.console import ConsoleWindow
    from gui.feed import LiveFeed

    ref, affine = small_run.volumes[0], small_run.affine
    off = affine.copy()
    off[0, 3] += 40.0
    nib.save(nib.Nifti1Image(intensity_mask(ref, 0.3).astype(np.uint8), off), tmp_path / "mask.nii.gz")
    cfg = make_config(tmp_path, preprocess={"mask": str(tmp_path / "mask.nii.gz"), "tsnr_map_every": 4})
    state = ConsoleState()
    window = windows(ConsoleWindow(state))
    with SideThread(cfg, n=8, timeout=60) as st:
        feed = LiveFeed(state, [window], st.side.publisher.address, None, interval_ms=20)
        try:
            time.sleep(0.3)
            for t in range(8):
                _put(cfg.scanner.watch_dir, format_name(PATTERN, 3, t), _dicom_bytes(tmp_path, small_run, t, series=3))
            qtbot.waitUntil(lambda: 1 in state.alignment and state.alignment[1].tsnr is not None, timeout=30_000)
        finally:
            feed.close()
    window.refresh()
    view = state.alignment[1]
    assert "on brain" in view.warning and view.figures["in_brain"] < 0.9 and view.mosaic is not None
    assert window.alignment_warning.isVisibleTo(window) and "check the alignment" in window.alignment_warning.text()
    assert window.tabs.tabText(3) == "alignment ⚠" and not window.alignment.mosaic.pixmap().isNull()
    assert any(e.severity == "error" and "alignment" in e.text for e in state.log)
    assert view.tsnr_at in (3, 7) and not window.alignment.tsnr.pixmap().isNull()


def test_the_event_log_keeps_a_rejected_file_a_missing_volume_and_a_restart(qtbot, windows, tmp_path, small_run):
    """On the round-1 main each of these only flashed in the status line and was overwritten a TR later."""
    from gui.console import ConsoleWindow
    from gui.feed import LiveFeed

    cfg = make_config(tmp_path)
    watch = cfg.scanner.watch_dir
    state = ConsoleState()
    window = windows(ConsoleWindow(state))
    for attempt, volumes in enumerate(([0, 1, 2, 4, 5], [6, 7])):
        with SideThread(cfg, n=len(volumes), timeout=60) as st:
            feed = LiveFeed(state, [window], st.side.publisher.address, None, interval_ms=20)
            try:
                time.sleep(0.3)
                for t in volumes:
                    _put(watch, format_name(PATTERN, 5, t), _dicom_bytes(tmp_path, small_run, t, series=5))
                    if t == 0:  # a file that is not a volume, during the run
                        qtbot.waitUntil(lambda: bool(state.volume_index), timeout=30_000)
                        _put(watch, format_name(PATTERN, 5, 99), b"this is not a DICOM file" * 50)
                want = 5 if attempt == 0 else 7
                qtbot.waitUntil(lambda: len(state.volume_index) >= want, timeout=30_000)  # noqa: B023
                if attempt == 0:
                    qtbot.waitUntil(lambda: bool(state.missing), timeout=10_000)
            finally:
                feed.close()
    window.refresh()
    lines = window.log.lines()
    assert any("set aside" in line and "error" in line and format_name(PATTERN, 5, 99) in line for line in lines)
    assert any("volume 4 missing" in line and "warning" in line for line in lines)  # index 3, shown 1-based
    assert any("scanner side restarted" in line for line in lines)
    window.log.filter.setCurrentIndex(2)  # errors only
    assert window.log.lines() and all("  error  " in line for line in window.log.lines())
    x, y = window.plots.fd_curve.getOriginalDataset()
    assert np.isnan(y[list(x).index(4.0)])  # the gap is drawn as a gap, at volume 4 as the log says
    q = state.runs[1]
    assert all(0 <= r and 0 < p for r, p in zip(q.read_ms, q.preprocess_ms, strict=True))  # latency by stage
    assert len(window.plots.preprocess_curve.getOriginalDataset()[0]) == len(window.plots.latency_curve.getOriginalDataset()[0])
    assert window.runs.item(0, window.runs.COLUMNS.index("missing")).text() == "1"
    assert window.runs.item(0, window.runs.COLUMNS.index("rejected")).text() == "1"


def _run(state: ConsoleState, run: int, n: int, seq: int, alarms: tuple[int, ...] = ()) -> int:
    for msg in ([Message("run_started", {"run": run, "series": run, "shape": [4, 4, 4], "n_voxels": 10,
                                          "n_volumes": n, "tr_s": 1.5, "fd_threshold_mm": 0.3})]
                + [Message("volume", {"run": run, "index": t, "motion": [0.0] * 6, "fd": 0.9 if t in alarms else 0.1,
                                      "dvars": 1.0, "tsnr": 50.0 + t, "latency_ms": 80.0, "fd_alarm": t in alarms})
                   for t in range(n)]
                + [Message("run_ended", {"run": run, "n_volumes": n, "reason": "complete"})]):
        seq += 1
        msg.seq = seq
        state.apply(msg, "scanner")
    return seq


def test_runs_table_alarm_episodes_and_truthful_counts(qtbot, windows):
    """Per-run counts (not the session's), alarm episodes (not volumes), the scanner side's threshold."""
    from gui.console import ConsoleWindow

    state = ConsoleState(fd_threshold_mm=0.5)
    seq = _run(state, 1, 20, 0, alarms=(5, 6, 7, 12))
    seq = _run(state, 2, 30, seq)
    for trial, (shown, top) in enumerate([("a", "a"), ("b", "c"), ("c", "c"), ("d", "a")]):
        state.apply(Message("result", {"run": 1, "trial": trial, "image": shown, "stage": "retrieval", "top_ids": [top, "x"],
                                       "top_scores": [0.5, 0.1]}, seq=trial + 1), "decoder")
    window = windows(ConsoleWindow(state))
    window.refresh()
    assert state.fd_threshold_mm == 0.3 and window.plots.fd_line.value() == pytest.approx(0.3)
    rows = {window.runs.item(r, 0).text(): [window.runs.item(r, c).text() for c in range(len(window.runs.COLUMNS))]
            for r in range(window.runs.rowCount())}
    cols = window.runs.COLUMNS
    assert rows["1"][cols.index("volumes")] == "20/20" and rows["2"][cols.index("volumes")] == "30/30"
    assert rows["1"][cols.index("alarm episodes")] == "2" and rows["2"][cols.index("alarm episodes")] == "0"
    assert rows["1"][cols.index("top-1")] == "50% of 4" and rows["1"][cols.index("tSNR")] == "60"
    assert any(e.text == "run 2 ended (complete): 30 volumes of 30" for e in state.log)
    assert "top-1 50% of 4 trials (chance: the decoder" in window.trials.rate.text()
    state.apply(Message("heartbeat", {"service": "decoder", "gallery": 50}, seq=99), "decoder")
    window.refresh()
    assert window.trials.rate.text() == "top-1 50% of 4 trials (chance 2.0% among 50 images)"
    hit_row = window.trials.keys.index((1, 0, "realtime"))
    assert window.table.item(hit_row, 3).text() == "hit" and window.table.item(hit_row + 1, 3).text() == "miss"
    assert window.table.item(hit_row, 3).background().color().name() != window.table.item(hit_row + 1, 3).background().color().name()


def test_captions_say_tier_and_version_and_the_title_the_model(qtbot, windows):
    from gui.console import ConsoleWindow, DisplayWindow
    from rtdecode.wire.protocol import encode_png

    state = ConsoleState()
    picture = np.full((16, 24, 3), 200, np.uint8)
    state.apply(Message("result", {"run": 1, "trial": 0, "image": "a", "stage": "retrieval", "top_ids": ["a"],
                                   "top_scores": [0.9], "tier": "unclip"}, seq=1), "decoder")
    state.apply(Message("result", {"run": 1, "trial": 0, "image": "a", "stage": "reconstruction", "tier": "unclip"},
                        images={"reconstruction": encode_png(picture)}, seq=2), "decoder")
    display = windows(DisplayWindow(state))
    console = windows(ConsoleWindow(state))
    display.refresh()
    console.refresh()
    assert display.silent.text() == "" and display.dim.opacity() == 1.0
    assert console.reconstruction.caption.text().startswith("realtime, unclip, ")
    state.apply(Message("heartbeat", {"service": "decoder", "queue": 0, "decoded": 1, "model": "sub04-model"}, seq=3),
                "decoder")
    console.refresh()
    assert console.windowTitle() == "rtdecode console, model sub04-model"
    # The silence itself: tests/test_console_screens.py, measured to an injected clock.


def test_replay_is_labelled_and_counts_each_run_on_its_own(tmp_path, qtbot, windows):
    """On the round-1 main a replay said 'run 2 ended: 2304 volumes' (the session's total)."""
    from gui.console import ConsoleWindow
    from rtdecode.tools.replay import session_messages

    session = tmp_path / "sub-01" / "ses-01"
    deriv = session / "derivatives" / "rtdecode" / "func"
    deriv.mkdir(parents=True)
    (session / "runs.tsv").write_text("run\tseries\n1\t3\n2\t4\n")
    header = "volume\tstatus\ttrans_x\ttrans_y\ttrans_z\trot_x\trot_y\trot_z\tframewise_displacement\tdvars\ttsnr\tlatency_ms\n"
    for run, n in ((1, 5), (2, 7)):
        body = "".join(f"{t}\tok\t0\t0\t0\t0\t0\t0\t0.1\t1\t40\t70\n" for t in range(n))
        (deriv / f"sub-01_ses-01_task-x_run-{run:02d}_desc-confounds_timeseries.tsv").write_text(header + body)
    state = ConsoleState(replay=True)
    for msg in session_messages(session):
        state.apply(msg, "scanner")
    window = windows(ConsoleWindow(state))
    window.refresh()
    assert any(e.text == "run 2 ended: 7 volumes of 7" for e in state.log)
    assert any(e.text == "run 1 ended: 5 volumes of 5" for e in state.log)
    assert window.banner.isVisibleTo(window) and "[REPLAY]" in window.windowTitle()


def test_layout_is_remembered_and_help_lists_the_shortcuts(qtbot, windows, tmp_path):
    from PyQt6 import QtCore

    from gui.console import ConsoleWindow

    settings = QtCore.QSettings(str(tmp_path / "console.ini"), QtCore.QSettings.Format.IniFormat)
    first = windows(ConsoleWindow(ConsoleState(), settings=settings))
    first.resize(780, 780)  # within the offscreen screen (800 x 800): restoreGeometry keeps windows on screen
    first.show()
    qtbot.waitExposed(first, timeout=5000)
    trial, strip, tabs = first.right_splitter.sizes()
    first.right_splitter.setSizes([trial, strip + 100, tabs - 100])  # the operator drags a splitter
    sizes = first.right_splitter.sizes()
    assert sizes[1] > strip
    first.close()
    again = windows(ConsoleWindow(ConsoleState(), settings=QtCore.QSettings(str(tmp_path / "console.ini"),
                                                                          QtCore.QSettings.Format.IniFormat)))
    again.show()
    qtbot.waitExposed(again, timeout=5000)
    restored = again.right_splitter.sizes()
    size = (again.width() - first.width(), again.height() - first.height())  # window frames differ by a few pixels
    assert max(map(abs, size)) <= 10 and max(abs(a - b) for a, b in zip(restored, sizes, strict=True)) <= 10
    assert restored[1] > strip + 50  # the dragged splitter, not the default split
    assert not again.start_button.isEnabled() and "--control" in again.start_button.toolTip()
    again.toggle_help()
    assert again.help.isVisible() and "Ctrl+B" in again.help.text() and "stop run" in again.help.text()


def _console_until(qtbot, state: ConsoleState, windows_, address: str, done, source: str = "events") -> None:
    """A console (state + live feed) connected to ``address`` until ``done()``."""
    from gui.console import ConsoleWindow
    from gui.feed import LiveFeed

    window = windows_(ConsoleWindow(state))
    args = (address, None) if source == "events" else (None, address)
    feed = LiveFeed(state, [window], *args, interval_ms=20)
    try:
        qtbot.waitUntil(lambda: bool(done()), timeout=30_000)
    finally:
        feed.close()


def test_marks_are_saved_by_the_scanner_side_and_reach_consoles_that_start_later(qtbot, windows, tmp_path, small_run):
    """A mark goes over the control socket into marks.tsv and comes back to every console, also after
    a restart of the scanner side; on the round-1 main it lived in one window's memory."""
    from PyQt6 import QtCore

    from gui.console import ConsoleWindow
    from gui.feed import LiveFeed
    from rtdecode.base.session import SessionFolder
    from rtdecode.wire.control import send_command

    cfg = make_config(tmp_path)
    key = (1, 2, "realtime")
    with SideThread(cfg, n=99, timeout=60) as st:
        for t in range(4):
            _put(cfg.scanner.watch_dir, format_name(PATTERN, 6, t), _dicom_bytes(tmp_path, small_run, t, series=6))
        address = st.side.control.address

        def control(action: str, fields: dict | None = None) -> str:
            reply = send_command(address, action, timeout_ms=5000, fields=fields)
            return "no answer" if reply is None else str(reply.fields["detail"])

        first = ConsoleState()
        window = windows(ConsoleWindow(first, control=control))
        feed = LiveFeed(first, [window], st.side.publisher.address, None, interval_ms=20)
        try:
            qtbot.waitUntil(lambda: len(first.volume_index) == 4, timeout=30_000)
            first.apply(Message("result", {"run": 1, "trial": 2, "image": "a", "stage": "retrieval", "top_ids": ["b"],
                                           "top_scores": [0.2]}, seq=1), "decoder")
            window.refresh()
            window.table.selectRow(window.trials.keys.index(key))
            window.note.setText("eyes closed")
            qtbot.mouseClick(window.mark, QtCore.Qt.MouseButton.LeftButton)
            assert window.reply.text() == "run 1 trial 2 marked bad"
            later = ConsoleState()  # a second console that starts after the mark
            _console_until(qtbot, later, windows, st.side.publisher.address,
                           lambda: key in later.trials and later.trials[key].bad)
            assert later.trials[key].note == "eyes closed" and len(later.volume_index) == 4
        finally:
            feed.close()
        assert control("mark") == "mark: missing field(s) run, trial, version, bad"
        assert control("stop_run").startswith("run 1 ended")
    rows = SessionFolder(cfg.session.root, "01", "01").marks()
    assert [(r["run"], r["trial"], r["bad"], r["note"]) for r in rows] == [("1", "2", "1", "eyes closed")]
    with SideThread(cfg, n=99, timeout=20) as st:  # the scanner side restarted: the session comes back whole
        fresh = ConsoleState()
        _console_until(qtbot, fresh, windows, st.side.publisher.address,
                       lambda: key in fresh.trials and fresh.trials[key].bad and 1 in fresh.runs and fresh.runs[1].ended)
        assert fresh.runs[1].index == [0, 1, 2, 3] and fresh.trials[key].note == "eyes closed"


def test_a_console_that_starts_late_gets_every_decoded_trial_also_after_a_decoder_restart(qtbot, windows, tmp_path, rng):
    """On the round-1 main a console joining late got the last 20 results: earlier trials showed '…'."""
    import threading

    import torch

    from models.folder import write_model_folder
    from models.mindeye2.config import standin_config
    from models.mindeye2.model import MindEye2
    from rtdecode.decoder.core import Decoder
    from rtdecode.decoder.service import DecoderService
    from rtdecode.gallery.builtin import StimulusSet
    from rtdecode.wire.reliable import BetaSender, beta_message

    torch.manual_seed(0)
    folder = write_model_folder(MindEye2(standin_config(["sim01"], [29], hidden=16)), tmp_path / "model", "sim01")
    StimulusSet().save(tmp_path / "gallery", range(8))
    session = {"subject": "01", "session": "01", "session_uid": "c" * 32}
    n = 30
    for attempt in range(2):
        service = DecoderService(Decoder.from_folder(folder, tmp_path / "gallery", cache=tmp_path / "cache"),
                                 tmp_path / "out", "tcp://127.0.0.1:0", "tcp://127.0.0.1:0", heartbeat_s=0.2)
        thread = threading.Thread(target=service.run, daemon=True)
        thread.start()
        try:
            if attempt == 0:
                sender = BetaSender(service.receiver.address, tmp_path / "acked.keys", resend_s=1.0)
                for trial in range(n):
                    sender.send(beta_message(1, trial, rng.normal(size=29), session, image=f"sim-{trial % 8:05d}"))
                deadline = time.monotonic() + 300  # bounded; ~2.5 s a beta with 2 cores shared by 8 test runs
                while sender.outbox and time.monotonic() < deadline:
                    sender.pump(timeout_ms=50)
                sender.close()
                assert not sender.outbox
            late = ConsoleState(sessions=SessionFilter("decoder"))  # results only: the newest result's session
            _console_until(qtbot, late, windows, service.publisher.address,
                           lambda: sum(bool(v.top_ids) for v in late.trials.values()) >= n, source="results")  # noqa: B023
            assert sorted(k[1] for k, v in late.trials.items() if v.top_ids) == list(range(n))
        finally:
            service.stop()
            thread.join(timeout=10)


def test_missing_x11_libraries_are_named_with_the_install_line(capsys):
    from gui.app import main, missing_qt_libraries

    have = {"xcb-cursor": "/usr/lib/libxcb-cursor.so.0"}
    assert missing_qt_libraries("xcb", have.get) == ["libxcb-icccm4", "libxcb-keysyms1"]
    assert missing_qt_libraries("offscreen", have.get) == []
    import os
    old = os.environ.get("QT_QPA_PLATFORM")
    os.environ["QT_QPA_PLATFORM"] = "xcb"
    try:
        import ctypes.util
        if all(ctypes.util.find_library(lib) for lib in ("xcb-cursor", "xcb-icccm", "xcb-keysyms")):
            pytest.skip("this machine has the X11 libraries")
        assert main(["--screenshot", "x.png"]) == 2
    finally:
        os.environ["QT_QPA_PLATFORM"] = old if old is not None else "offscreen"
    err = capsys.readouterr().err
    assert "sudo apt install" in err and err.count("\n") == 1


def test_trial_table_shows_an_evaluation_score_column_only_when_one_arrived(qtbot, windows):
    from gui.console import ConsoleWindow
    from rtdecode.wire.protocol import decode, encode

    state = ConsoleState()
    for trial, shown in enumerate("abc"):
        state.apply(Message("result", {"run": 1, "trial": trial, "image": shown, "stage": "retrieval", "top_ids": [shown],
                                       "top_scores": [0.5]}, seq=trial + 1), "decoder")
    window = windows(ConsoleWindow(state))
    window.refresh()
    assert window.table.columnCount() == len(window.trials.COLUMNS)  # no evaluation: no empty column
    for trial, score in ((0, 0.75), (2, 0.5)):  # as a replay of rtdecode evaluate's trials.csv sends them (wire-checked)
        msg = decode(encode(Message("result", {"run": 1, "trial": trial, "version": "realtime", "image": "abc"[trial],
                                               "stage": "evaluation", "metric": "CLIP", "score": score}, seq=10 + trial)))
        state.apply(msg, "decoder")
    window.refresh()
    last = window.table.columnCount() - 1
    assert window.table.horizontalHeaderItem(last).text() == "eval: CLIP"
    cells = [window.table.item(r, last).text() for r in range(window.table.rowCount())]
    assert cells == ["75%", "", "50%"]
    assert [v.top_ids for v in state.trials.values()] == [["a"], ["b"], ["c"]]  # the retrieval stays as it was
