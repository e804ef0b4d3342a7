"""The operator console window (PyQt6 + pyqtgraph). It draws :class:`gui.state.ConsoleState`, nothing more.

Panels: run status and connection lights; motion (six traces), framewise displacement with its
threshold line (the curve turns red past it), DVARS and per-volume latency; the current trial
(stimulus, reconstruction, top-5 retrievals with scores); a strip of recent reconstructions; the
trial table, where a trial can be marked bad.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyqtgraph as pg
from PyQt6 import QtCore, QtGui, QtWidgets

from gui.state import ConsoleState

MOTION_COLOURS = ("#1f77b4", "#2ca02c", "#17becf", "#d62728", "#ff7f0e", "#9467bd")
STALE_S = 3.0  # a service silent for longer than this shows amber; never heard from, grey


def to_pixmap(image: np.ndarray | None, side: int) -> QtGui.QPixmap:
    if image is None:
        pix = QtGui.QPixmap(side, side)
        pix.fill(QtGui.QColor("#303030"))
        return pix
    img = np.ascontiguousarray(image[..., :3].astype(np.uint8))
    h, w, _ = img.shape
    q = QtGui.QImage(img.data, w, h, 3 * w, QtGui.QImage.Format.Format_RGB888).copy()
    return QtGui.QPixmap.fromImage(q).scaled(side, side, QtCore.Qt.AspectRatioMode.KeepAspectRatio,
                                             QtCore.Qt.TransformationMode.SmoothTransformation)


class ImageTile(QtWidgets.QWidget):
    def __init__(self, title: str, side: int) -> None:
        super().__init__()
        self.side = side
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        self.picture = QtWidgets.QLabel()
        self.picture.setFixedSize(side, side)
        self.caption = QtWidgets.QLabel(title)
        self.caption.setAlignment(QtCore.Qt.AlignmentFlag.AlignCenter)
        layout.addWidget(self.picture)
        layout.addWidget(self.caption)
        self.set(None, title)

    def set(self, image: np.ndarray | None, caption: str) -> None:
        self.picture.setPixmap(to_pixmap(image, self.side))
        self.caption.setText(caption)


class ConsoleWindow(QtWidgets.QMainWindow):
    def __init__(self, state: ConsoleState, gallery: dict[str, np.ndarray] | None = None,
                 control=None) -> None:
        """``control(action) -> str`` sends start_run / stop_run to the scanner side (None: no buttons)."""
        super().__init__()
        self.state = state
        self.control = control
        self.gallery = gallery or {}
        self.setWindowTitle("rtdecode console")
        central = QtWidgets.QWidget()
        self.setCentralWidget(central)
        grid = QtWidgets.QGridLayout(central)

        top = QtWidgets.QHBoxLayout()
        self.status = QtWidgets.QLabel(state.status)
        self.status.setObjectName("status")
        top.addWidget(self.status, 1)
        self.lights = {name: QtWidgets.QLabel(name) for name in ("scanner", "decoder")}
        for light in self.lights.values():
            top.addWidget(light)
        self.start_button = QtWidgets.QPushButton("start run")
        self.stop_button = QtWidgets.QPushButton("stop run")
        self.start_button.clicked.connect(lambda: self.command("start_run"))
        self.stop_button.clicked.connect(lambda: self.command("stop_run"))
        for button in (self.start_button, self.stop_button):
            button.setEnabled(control is not None)
            top.addWidget(button)
        self.reply = QtWidgets.QLabel("")
        top.addWidget(self.reply)
        grid.addLayout(top, 0, 0, 1, 2)

        plots = pg.GraphicsLayoutWidget()
        self.motion_plot = plots.addPlot(row=0, col=0, title="motion (mm, degrees)")
        self.motion_curves = [self.motion_plot.plot(pen=pg.mkPen(c, width=1)) for c in MOTION_COLOURS]
        self.fd_plot = plots.addPlot(row=1, col=0, title="framewise displacement (mm)")
        self.fd_curve = self.fd_plot.plot(pen=pg.mkPen("#dddddd", width=1))
        self.fd_alarm = self.fd_plot.plot(pen=None, symbol="o", symbolSize=5, symbolBrush="#ff3030")
        self.fd_line = pg.InfiniteLine(pos=state.fd_threshold_mm, angle=0, pen=pg.mkPen("#ff3030", style=QtCore.Qt.PenStyle.DashLine))
        self.fd_plot.addItem(self.fd_line)
        self.dvars_plot = plots.addPlot(row=2, col=0, title="DVARS")
        self.dvars_curve = self.dvars_plot.plot(pen=pg.mkPen("#e0c060", width=1))
        self.latency_plot = plots.addPlot(row=3, col=0, title="latency per volume (ms)")
        self.latency_curve = self.latency_plot.plot(pen=pg.mkPen("#60c0e0", width=1))
        for p in (self.fd_plot, self.dvars_plot, self.latency_plot):
            p.setXLink(self.motion_plot)
        grid.addWidget(plots, 1, 0, 2, 1)

        trial_box = QtWidgets.QGroupBox("current trial")
        trial_layout = QtWidgets.QGridLayout(trial_box)
        self.stimulus = ImageTile("stimulus", 180)
        self.reconstruction = ImageTile("reconstruction", 180)
        trial_layout.addWidget(self.stimulus, 0, 0)
        trial_layout.addWidget(self.reconstruction, 0, 1)
        retrievals = QtWidgets.QHBoxLayout()
        self.retrieved = [ImageTile(f"#{i + 1}", 84) for i in range(5)]
        for tile in self.retrieved:
            retrievals.addWidget(tile)
        trial_layout.addLayout(retrievals, 1, 0, 1, 2)
        grid.addWidget(trial_box, 1, 1)

        strip_box = QtWidgets.QGroupBox("recent reconstructions")
        strip = QtWidgets.QHBoxLayout(strip_box)
        self.history = [ImageTile("", 64) for _ in range(8)]
        for tile in self.history:
            strip.addWidget(tile)
        grid.addWidget(strip_box, 2, 1)

        self.table = QtWidgets.QTableWidget(0, 5)
        self.table.setHorizontalHeaderLabels(["run", "trial", "stimulus", "top-1 (score)", "bad"])
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.setSelectionBehavior(QtWidgets.QAbstractItemView.SelectionBehavior.SelectRows)
        self.mark = QtWidgets.QPushButton("mark selected trial bad")
        self.mark.clicked.connect(self.mark_selected_bad)
        table_box = QtWidgets.QVBoxLayout()
        table_box.addWidget(self.table)
        table_box.addWidget(self.mark)
        grid.addLayout(table_box, 3, 0, 1, 2)
        grid.setRowStretch(1, 3)
        grid.setRowStretch(3, 2)
        self.resize(1400, 950)
        self._table_keys: list[tuple[int, int, str]] = []
        self._table_rows: list[tuple[str, ...]] = []

    # -- drawing ---------------------------------------------------------------------------------
    def refresh(self) -> None:
        s = self.state
        alarms = s.fd_alarms
        extra = f"; {len(s.missing)} missing" if s.missing else ""
        extra += f"; {alarms} FD alarm(s)" if alarms else ""
        extra += f"; {s.refused} message(s) refused" if s.refused else ""
        who = " ".join(f"{k} {s.identity[k]}" for k in ("subject", "session") if k in s.identity)
        self.status.setText((f"[{who}] " if who else "") + s.status + extra)
        self.status.setToolTip(s.last_refused)
        self.status.setStyleSheet("color: #ff5050;" if alarms or s.missing or s.refused else "")
        for name, light in self.lights.items():
            age = s.heartbeat_age(name)
            colour = "#808080" if age is None else ("#40c040" if age < STALE_S else "#e0a020")
            restarted = f" (restarted {s.restarts[name]}x)" if s.restarts.get(name) else ""
            queue = f" queue {s.decoder_queue}" if name == "decoder" and s.decoder_queue is not None else ""
            light.setText(f"● {name}" + ("" if age is None else f" {age:.0f}s") + queue + restarted)
            light.setStyleSheet(f"color: {colour};")
        x = np.asarray(s.volume_index, float)
        if len(x):
            motion = np.asarray(s.motion, float)
            for i, curve in enumerate(self.motion_curves):
                curve.setData(x, motion[:, i])
            fd = np.asarray(s.fd, float)
            self.fd_curve.setData(x, fd)
            over = fd > s.fd_threshold_mm
            self.fd_alarm.setData(x[over], fd[over])
            self.dvars_curve.setData(x, np.asarray(s.dvars, float))
            self.latency_curve.setData(x, np.asarray(s.latency_ms, float))
        self._draw_trial()
        self._draw_history()
        self._draw_table()

    def _draw_trial(self) -> None:
        s = self.state
        if s.current is None:
            return
        view = s.trials[s.current]
        self.stimulus.set(self.gallery.get(view.image), f"run {view.run} trial {view.trial}: {view.image or '?'}")
        self.reconstruction.set(view.reconstruction, "reconstruction" if view.reconstruction is not None else "pending")
        for i, tile in enumerate(self.retrieved):
            if i < len(view.top_ids):
                hit = " ✓" if view.top_ids[i] == view.image else ""
                tile.set(self.gallery.get(view.top_ids[i]), f"{view.top_ids[i]} {view.top_scores[i]:.2f}{hit}")
            else:
                tile.set(None, f"#{i + 1}")

    def _draw_history(self) -> None:
        recent = self.state.history(len(self.history))
        for tile, view in zip(self.history, [None] * (len(self.history) - len(recent)) + recent, strict=True):
            tile.set(None if view is None else view.reconstruction, "" if view is None else f"t{view.trial}")

    def _draw_table(self) -> None:
        keys = [k for k in sorted(self.state.trials) if k[2] == "realtime"]
        rows = []
        for key in keys:
            view = self.state.trials[key]
            top = f"{view.top_ids[0]} ({view.top_scores[0]:.2f})" if view.top_ids else "…"
            rows.append((str(view.run), str(view.trial), view.image, top, "bad" if view.bad else ""))
        if rows == self._table_rows:
            return  # nothing changed: no redraw of the table
        bar = self.table.verticalScrollBar()
        following = bar.value() >= bar.maximum()  # at the newest row: keep following new trials
        self._table_keys, self._table_rows = keys, rows
        self.table.setRowCount(len(rows))
        for r, row in enumerate(rows):
            for col, text in enumerate(row):
                self.table.setItem(r, col, QtWidgets.QTableWidgetItem(text))
        self.table.resizeColumnsToContents()
        if following:
            self.table.scrollToBottom()

    def command(self, action: str) -> str:
        detail = self.control(action) if self.control is not None else "no scanner side to command"
        self.reply.setText(detail)
        return detail

    def mark_selected_bad(self) -> None:
        rows = {i.row() for i in self.table.selectedIndexes()}
        for row in rows:
            self.state.mark_bad(self._table_keys[row])
        self._draw_table()

    def screenshot(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.grab().save(str(path))
        return path


class DisplayWindow(QtWidgets.QWidget):
    """The live display for a second screen: the latest reconstruction, nothing else."""

    def __init__(self, state: ConsoleState) -> None:
        super().__init__()
        self.state = state
        self.setWindowTitle("rtdecode display")
        self.setStyleSheet("background: black;")
        layout = QtWidgets.QVBoxLayout(self)
        self.picture = QtWidgets.QLabel()
        self.picture.setAlignment(QtCore.Qt.AlignmentFlag.AlignCenter)
        layout.addWidget(self.picture)
        self.resize(800, 800)

    def refresh(self) -> None:
        latest = [v for v in self.state.history(50) if v.reconstruction is not None]
        if latest:
            side = max(64, min(self.width(), self.height()) - 20)
            self.picture.setPixmap(to_pixmap(latest[-1].reconstruction, side))


def dispose(*windows: QtWidgets.QWidget) -> None:
    """Close windows and free their Qt objects now.

    pyqtgraph's views and items form reference cycles, so a window nobody holds is freed by Python's
    garbage collector whenever it next runs, which can be inside a paint event of that same window
    (a segmentation fault). Freeing it here, outside any event, leaves the collector only empty shells.
    """
    for window in windows:
        for view in window.findChildren(pg.GraphicsView):
            view.close()  # clears the scene and drops the viewport: nothing left to paint
        window.close()
        window.deleteLater()
    QtCore.QCoreApplication.sendPostedEvents(None, QtCore.QEvent.Type.DeferredDelete)
