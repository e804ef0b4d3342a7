"""The console against a real scanner side (files picked up by its watcher, its events and control
sockets): a mark kept for consoles that join after the recent-message window, files set aside after an
operator stop shown as expected, and the alignment tab saying what each run was registered to."""

from __future__ import annotations

import numpy as np
import pytest
from test_scanner_side import PATTERN, _put

from gui.state import ConsoleState
from rtdecode.preprocess.alignment import check_alignment
from rtdecode.preprocess.pipeline import intensity_mask
from rtdecode.scanner.network import REPLAY
from rtdecode.simulator.dicom_writer import write_mosaic
from rtdecode.simulator.scanner import format_name

from conftest import SideThread, make_config

pytest.importorskip("pytestqt")
LONG = REPLAY + 10  # volumes of run 3: more than the recent messages a late joiner is sent


def test_without_a_session_reference_no_registration_is_claimed(small_run):
    ref, affine = small_run.volumes[0], small_run.affine
    mask = intensity_mask(ref, 0.3)
    alone = check_alignment(ref, affine, mask, affine, np.eye(4))
    assert "shift_mm" not in alone.fields() and "registered_to" not in alone.fields()
    onto = check_alignment(ref, affine, mask, affine, np.eye(4), registered_to="run 1's reference")
    assert onto.fields()["registered_to"] == "run 1's reference" and onto.fields()["shift_mm"] == 0


def test_a_late_console_gets_the_mark_the_stop_and_what_each_run_was_registered_to(qtbot, windows, tmp_path,
                                                                                  small_run):
    """Run 1 stopped by the operator after 4 volumes and a mark, two of its files arriving after the
    stop, then runs 2 and 3 (more than the publisher's recent messages after the mark). A console that
    joins at the end shows the mark, the two files as expected (not red errors), run 1 as not registered
    (no session reference: its reference is the session's) and run 2 registered to run 1's reference."""
    from gui.console import ConsoleWindow
    from gui.feed import LiveFeed
    from rtdecode.wire.control import send_command

    cfg = make_config(tmp_path, scanner={"volumes_per_run": 240})
    watch = cfg.scanner.watch_dir
    key = (1, 2, "realtime")
    with SideThread(cfg, n=10_000, timeout=120) as st:
        address = st.side.control.address

        def control(action: str, fields: dict | None = None) -> str:
            reply = send_command(address, action, timeout_ms=5000, fields=fields)
            return "no answer" if reply is None else str(reply.fields["detail"])

        def put(series: int, volumes: range) -> None:
            for t in volumes:  # the simulated run's 12 volumes, over and over, numbered on
                staged = tmp_path / "staged.dcm"
                write_mosaic(staged, small_run.volumes[t % 12], small_run.affine, series_number=series, instance=t + 1)
                _put(watch, format_name(PATTERN, series, t), staged.read_bytes())

        put(6, range(4))
        qtbot.waitUntil(lambda: st.side.processed >= 4, timeout=30_000)
        fields = {"run": 1, "trial": 2, "version": "realtime", "bad": True, "note": "eyes closed"}
        assert control("mark", fields) == "run 1 trial 2 marked bad"
        assert control("stop_run").startswith("run 1 ended")
        put(6, range(4, 6))  # the stopped series goes on at the scanner: set aside, as the operator expects
        qtbot.waitUntil(lambda: len(list(cfg.scanner.quarantine_dir.glob("*"))) >= 2, timeout=30_000)
        assert control("start_run").startswith("armed")
        put(7, range(12))
        qtbot.waitUntil(lambda: st.side.processed >= 16, timeout=30_000)
        put(8, range(LONG))
        qtbot.waitUntil(lambda: st.side.processed >= 16 + LONG, timeout=60_000)
        assert LONG > REPLAY  # the mark is older than the recent messages a late joiner is sent

        late = ConsoleState()
        window = windows(ConsoleWindow(late))
        feed = LiveFeed(late, [window], st.side.publisher.address, None, interval_ms=20)
        try:
            qtbot.waitUntil(lambda: 3 in late.runs and len(late.runs[3].index) == LONG, timeout=30_000)
        finally:
            feed.close()
    window.refresh()
    assert key in late.trials and late.trials[key].bad and late.trials[key].note == "eyes closed"
    aside = [e for e in late.log if e.text.startswith("file set aside") and "run stopped by operator" in e.text]
    assert len(aside) == 2 and {e.severity for e in aside} == {"info"}
    assert late.runs[1].rejected == 2 and late.alignment[1].registered_to == ""
    from gui.panels import registration_text

    assert registration_text(late.alignment[1]).startswith("not registered: no session reference is configured")
    assert late.alignment[2].registered_to == "run 1's reference"
    window.alignment.draw()
    assert "registered to run 1's reference: shift" in window.alignment.figures.text()  # run 3, the current one
