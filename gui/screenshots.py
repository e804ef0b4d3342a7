"""Saving the console and the display as PNG from a recorded session (``rtdecode screenshots``)."""

from __future__ import annotations

import os
from pathlib import Path


def capture(out: Path, session: Path, decoded: Path, stimuli: Path, note: str = "") -> list[Path]:
    """Console and display, drawn from a session folder and a decoder output folder, saved under ``out``."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PyQt6 import QtWidgets

    from gui.app import load_gallery
    from gui.console import ConsoleWindow, DisplayWindow
    from gui.replay import decoder_messages, session_messages
    from gui.state import ConsoleState

    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication([])
    state = ConsoleState(volumes_expected=0)
    for msg in session_messages(session):
        state.apply(msg, "scanner")
    for msg in decoder_messages(decoded):
        state.apply(msg, "decoder")
    if note:
        state.status += f"   [{note}]"
    out.mkdir(parents=True, exist_ok=True)
    console = ConsoleWindow(state, load_gallery(stimuli))
    console.refresh()
    console.show()
    display = DisplayWindow(state)
    display.resize(600, 600)
    display.show()
    app.processEvents()
    display.refresh()
    app.processEvents()
    paths = [out / "console.png", out / "display.png"]
    console.grab().save(str(paths[0]))
    display.grab().save(str(paths[1]))
    console.close()
    display.close()
    return paths
