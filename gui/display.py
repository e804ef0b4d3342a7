"""The live display for a second screen (``rtdecode display``): the latest reconstruction, dimmed when
the decoder has gone silent."""

from __future__ import annotations

import time
from collections.abc import Callable

from PyQt6 import QtCore, QtWidgets

from gui.panels import to_pixmap
from gui.state import ConsoleState

__all__ = ["SILENT_S", "DisplayWindow"]

SILENT_S = 5.0  # the display dims when the decoder has been silent this long


class DisplayWindow(QtWidgets.QWidget):
    """The live display for a second screen: the latest reconstruction; dimmed, with a line saying so,
    when the decoder has gone silent (a stale picture must not pass for a live one)."""

    def __init__(self, state: ConsoleState, clock: Callable[[], float] = time.time) -> None:
        """``clock``: the wall time that the decoder's silence is measured to (tests give a fixed one)."""
        super().__init__()
        self.state = state
        self.clock = clock
        self.setWindowTitle("rtdecode display")
        self.setStyleSheet("background: black;")
        layout = QtWidgets.QVBoxLayout(self)
        self.picture = QtWidgets.QLabel()
        self.picture.setAlignment(QtCore.Qt.AlignmentFlag.AlignCenter)
        self.dim = QtWidgets.QGraphicsOpacityEffect(self.picture)
        self.dim.setOpacity(1.0)
        self.picture.setGraphicsEffect(self.dim)
        self.silent = QtWidgets.QLabel("")
        self.silent.setAlignment(QtCore.Qt.AlignmentFlag.AlignCenter)
        self.silent.setStyleSheet("color: #e0a020; font-size: 20px;")
        self.caption = QtWidgets.QLabel("")  # the trial's caption, from the brain
        self.caption.setAlignment(QtCore.Qt.AlignmentFlag.AlignCenter)
        self.caption.setWordWrap(True)
        self.caption.setStyleSheet("color: #d0d0d0; font-size: 18px;")
        layout.addWidget(self.picture, 1)
        layout.addWidget(self.caption)
        layout.addWidget(self.silent)
        self.resize(800, 800)

    def refresh(self) -> None:
        latest = [v for v in self.state.history(50) if v.reconstruction is not None]
        if latest:
            side = max(64, min(self.width(), self.height()) - 60)
            self.picture.setPixmap(to_pixmap(latest[-1].reconstruction, side, self.devicePixelRatioF()))
            self.caption.setText(latest[-1].caption)
        age = self.state.heartbeat_age("decoder", self.clock())
        silent = latest and not self.state.replay and age is not None and age > SILENT_S
        self.dim.setOpacity(0.3 if silent else 1.0)
        self.silent.setText(f"decoder silent for {age:.0f} s" if silent else "")
