"""Issue 28, round 3, on the console's panels: what a run was matched to, captions and columns at
1366 px, and the decoded count of the session shown."""

from __future__ import annotations

import pytest

from gui.sessions import SessionFilter
from gui.state import ConsoleState
from rtdecode.wire.protocol import Message

from conftest import full_session_window

pytest.importorskip("pytestqt")

ONE = {"subject": "01", "session": "01", "session_uid": "a" * 32}


def test_the_match_figure_names_what_the_run_was_matched_to(qtbot, windows):
    """5: runs 2+ said 'match to the session reference' where, with none configured, it is run 1's."""
    from gui.console import ConsoleWindow

    state = ConsoleState()
    state.apply(Message("run_started", {"run": 2, "series": 8, "shape": [], "n_voxels": 200, "in_brain": 0.97,
                                        "match": 0.93, "shift_mm": 0.4, "rotation_deg": 0.2,
                                        "registered_to": "run 1's reference", **ONE}, seq=1, boot="1" * 16), "scanner")
    window = windows(ConsoleWindow(state))
    window.refresh()
    text = window.alignment.figures.text()
    assert "match to run 1's reference: 0.93" in text and "session reference" not in text, text


def test_at_1366_px_every_top5_caption_and_runs_column_is_in_view(qtbot, windows):
    """6: the captions under the retrieval thumbnails and two runs-table columns were cut at 1366 px."""
    window = full_session_window(windows, qtbot)
    for tile in window.retrieved:
        caption = tile.caption
        assert caption.text().startswith("sim-")
        # Whole and unclipped: one line as wide as its text, all of it inside the visible area.
        assert caption.fontMetrics().horizontalAdvance(caption.text()) <= caption.width(), caption.text()
        assert caption.visibleRegion().boundingRect() == caption.rect(), (caption.text(), caption.visibleRegion())
    window.tabs.setCurrentWidget(window.runs)
    qtbot.wait(50)
    table = window.runs
    right = [table.columnViewportPosition(c) + table.columnWidth(c) for c in range(table.columnCount())]
    assert max(right) <= table.viewport().width(), (right, table.viewport().width())
    state_col = table.COLUMNS.index("state")
    assert table.item(1, state_col).toolTip().startswith("ended (stopped by operator)")  # whole where shortened


def test_decoded_counts_the_session_shown_not_the_decoders_day(qtbot, windows):
    """7: 'N decoded' was the decoder's count over every participant of the day."""
    from gui.console import ConsoleWindow

    state = ConsoleState(sessions=SessionFilter("scanner"))
    state.apply(Message("run_started", {"run": 1, "series": 7, "shape": [], "n_voxels": 200, **ONE},
                        seq=1, boot="1" * 16), "scanner")
    other = {"subject": "02", "session": "01", "session_uid": "b" * 32}
    for seq, (trial, who) in enumerate([(0, ONE), (1, ONE), (0, other), (1, other), (2, other)], start=1):
        state.apply(Message("result", {"run": 1, "trial": trial, "stage": "retrieval", "top_ids": ["sim-00001"],
                                       "top_scores": [0.5], **who}, seq=seq, boot="2" * 16), "decoder")
    state.apply(Message("heartbeat", {"service": "decoder", "queue": 0, "decoded": 57}, seq=9, boot="2" * 16),
                "decoder")
    window = windows(ConsoleWindow(state))
    window.refresh()
    light = window.lights["decoder"].text()
    assert ", 2 decoded" in light and "57" not in light, light
    assert "57 betas decoded since the decoder started" in window.lights["decoder"].toolTip()
