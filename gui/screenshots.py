"""Saving the console and the display as PNG from a recorded session (``rtdecode screenshots``)."""

from __future__ import annotations

import os
from pathlib import Path

from rtdecode.wire.protocol import Message


def capture(out: Path, messages: list[tuple[str, Message]], stimuli: Path, note: str = "") -> list[Path]:
    """Console and display, drawn from ``(source, message)`` pairs (a replayed session), saved under ``out``."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PyQt6 import QtWidgets

    from gui.app import load_gallery
    from gui.console import ConsoleWindow, DisplayWindow, dispose
    from gui.state import ConsoleState

    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication([])
    state = ConsoleState(volumes_expected=0)
    # Without the scanner side's messages (a decoder folder alone) the results name the session shown.
    state.sessions.follow = "scanner" if any(source == "scanner" for source, _ in messages) else "decoder"
    for source, msg in messages:
        state.apply(msg, source)
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
    dispose(console, display)
    return paths
