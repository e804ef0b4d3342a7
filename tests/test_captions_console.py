"""The console and the display show each trial's caption beside its picture, and the refined picture
replaces the first one (a replayed first picture does not bring it back)."""

from __future__ import annotations

import numpy as np

from gui.state import ConsoleState
from rtdecode.wire.protocol import Message, encode_png

CAPTION = "a house with a red roof on a green field under a grey sky"


def _results() -> list[Message]:
    first = np.zeros((24, 40, 3), np.uint8)
    refined = np.full((24, 40, 3), 200, np.uint8)
    base = {"run": 1, "trial": 2, "version": "realtime", "image": "sim-01002", "tier": "standin", "caption": CAPTION}
    msgs = [Message("result", {**base, "stage": "retrieval", "top_ids": ["sim-01002"] * 5, "top_scores": [0.5] * 5}),
            Message("result", {**base, "stage": "reconstruction"}, images={"reconstruction": encode_png(first)}),
            Message("result", {**base, "stage": "refined"}, images={"reconstruction": encode_png(refined)}),
            Message("result", {**base, "stage": "reconstruction"}, images={"reconstruction": encode_png(first)})]
    for seq, m in enumerate(msgs, start=1):
        m.seq = seq if seq < 4 else 100  # the last: the first picture replayed to a console that reopened
    return msgs


def test_console_and_display_show_the_caption_and_the_refined_picture(windows):
    from gui.console import ConsoleWindow, DisplayWindow

    state = ConsoleState()
    msgs = _results()
    for m in msgs[:3]:
        state.apply(m, "decoder")
    view = state.trials[(1, 2, "realtime")]
    assert view.caption == CAPTION and view.refined and int(view.reconstruction.mean()) == 200
    state.apply(msgs[3], "decoder")
    assert view.refined and int(view.reconstruction.mean()) == 200  # the refined one stays
    window = windows(ConsoleWindow(state, {}))
    window.refresh()
    text = window.reconstruction.caption.text()
    assert CAPTION in text and "refined" in text
    display = windows(DisplayWindow(state))
    display.refresh()
    assert display.caption.text() == CAPTION


def test_a_replay_shows_each_caption_with_its_score(windows, tmp_path):
    """console --replay after rtdecode evaluate: the caption from results.tsv, its METEOR from captions.csv."""
    import time

    from gui.console import ConsoleWindow
    from rtdecode.decoder.results import ResultStore
    from rtdecode.evaluate.captions import CaptionScores, write_captions
    from rtdecode.tools.replay import decoder_messages

    identity = {"subject": "01", "session": "01", "session_uid": "e" * 32}
    store = ResultStore(tmp_path / "sub-01" / "ses-01", identity)
    key = f"{'e' * 32}:1:2:realtime"
    store.save_retrieval(key, {"run": 1, "trial": 2, "image": "sim-01002"}, np.zeros((16, 64), np.float32),
                         ["sim-01002"], [0.5], {"backbone_ms": 1, "retrieval_ms": 1, "prior_ms": 1}, time.time())
    store.save_caption(key, CAPTION)
    store.save_image(key, np.zeros((24, 40, 3), np.uint8))
    row = {"version": "realtime", "run": 1, "trial": 2, "image": "sim-01002", "caption": CAPTION, "reference": CAPTION,
           "METEOR": 0.4321, "ROUGE-1": 1.0, "ROUGE-L": 1.0}
    write_captions(CaptionScores([row], []), store.folder / "evaluation")
    from gui.sessions import SessionFilter

    state = ConsoleState(sessions=SessionFilter("decoder"))  # no scanner side here: the results name the session
    state.replay = True
    for m in decoder_messages(store.folder):
        state.apply(m, "decoder")
    view = state.trials[(1, 2, "realtime")]
    assert view.caption == CAPTION and view.caption_score == 0.4321 and view.eval_score is None
    window = windows(ConsoleWindow(state, {}))
    window.refresh()
    assert f"“{CAPTION}” (METEOR 0.43)" in window.reconstruction.caption.text()
