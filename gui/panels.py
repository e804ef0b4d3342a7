"""The console's panels, each drawing one part of :class:`gui.state.ConsoleState`: image tiles, the QA
plots, the trial table, the runs table and the event log."""

from __future__ import annotations

import time

import numpy as np
import pyqtgraph as pg
from PyQt6 import QtCore, QtGui, QtWidgets

from gui.quality import summary, with_gaps
from gui.state import LIVE, ConsoleState, TrialView

TRANSLATION_COLOURS = ("#1f77b4", "#2ca02c", "#17becf")
ROTATION_COLOURS = ("#d62728", "#ff7f0e", "#9467bd")
SEVERITY_COLOURS = {"info": "#c8c8c8", "warning": "#e0a020", "error": "#ff5050"}
HIT, MISS = QtGui.QColor("#1e5a28"), QtGui.QColor("#5a1e1e")


def to_pixmap(image: np.ndarray | None, side: int, dpr: float = 1.0) -> QtGui.QPixmap:
    """An RGB array as a pixmap ``side`` logical pixels wide, drawn at the screen's device pixel ratio
    (sharp at 2x scaling)."""
    px = max(1, int(round(side * dpr)))
    if image is None:
        pix = QtGui.QPixmap(px, px)
        pix.fill(QtGui.QColor("#303030"))
    else:
        img = np.ascontiguousarray(image[..., :3].astype(np.uint8))
        h, w, _ = img.shape
        q = QtGui.QImage(img.data, w, h, 3 * w, QtGui.QImage.Format.Format_RGB888).copy()
        pix = QtGui.QPixmap.fromImage(q).scaled(px, px, QtCore.Qt.AspectRatioMode.KeepAspectRatio,
                                                QtCore.Qt.TransformationMode.SmoothTransformation)
    pix.setDevicePixelRatio(dpr)
    return pix


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
        self.caption.setWordWrap(True)
        layout.addWidget(self.picture)
        layout.addWidget(self.caption)
        self.set(None, title)

    def set(self, image: np.ndarray | None, caption: str) -> None:
        self.picture.setPixmap(to_pixmap(image, self.side, self.devicePixelRatioF()))
        self.caption.setText(caption)


def reconstruction_caption(view: TrialView, now: float | None = None, replay: bool = False) -> str:
    """Which estimate, what drew it and how old it is: 'realtime, unclip, 3 s ago' (no age in a replay)."""
    if view.reconstruction is None:
        return "reconstruction pending"
    age = "" if view.received is None or replay else f", {max(0.0, (now or time.time()) - view.received):.0f} s ago"
    return f"{view.recon_version or view.version}, {view.tier or 'tier not recorded'}{age}"


def refinement_caption(view: TrialView) -> str:
    """How far into the response the estimate shown is: 'rt6.0: 6.0 of 15 s of the response'."""
    if view.delay_s is None:
        return view.version
    of = f" of {view.final_delay_s:g} s" if view.final_delay_s else " s"
    done = " (final)" if view.final_delay_s and view.delay_s >= view.final_delay_s - 1e-6 else ""
    return f"{view.version}: {view.delay_s:g}{of} after onset{done}"


class QAPlots(pg.GraphicsLayoutWidget):
    """Translation (mm) and rotation (degrees) apart, with legends; FD with the scanner side's threshold,
    alarms and shaded trial windows; DVARS; latency with the TR line. Gaps break every curve."""

    def __init__(self) -> None:
        super().__init__()
        self.translation = self.addPlot(row=0, col=0, title="translation (mm)")
        self.rotation = self.addPlot(row=1, col=0, title="rotation (degrees)")
        self.translation.addLegend(offset=(5, 5))
        self.rotation.addLegend(offset=(5, 5))
        self.motion_curves = [self.translation.plot(pen=pg.mkPen(c, width=1), name=n, connect="finite")
                              for c, n in zip(TRANSLATION_COLOURS, "xyz", strict=True)]
        self.motion_curves += [self.rotation.plot(pen=pg.mkPen(c, width=1), name=n, connect="finite")
                               for c, n in zip(ROTATION_COLOURS, ("pitch (x)", "roll (y)", "yaw (z)"), strict=True)]
        self.fd_plot = self.addPlot(row=2, col=0, title="framewise displacement (mm)")
        self.fd_curve = self.fd_plot.plot(pen=pg.mkPen("#dddddd", width=1), connect="finite")
        self.fd_alarm = self.fd_plot.plot(pen=None, symbol="o", symbolSize=5, symbolBrush="#ff3030")
        self.fd_line = pg.InfiniteLine(pos=0.5, angle=0, pen=pg.mkPen("#ff3030", style=QtCore.Qt.PenStyle.DashLine))
        self.fd_plot.addItem(self.fd_line)
        self.dvars_plot = self.addPlot(row=3, col=0, title="DVARS")
        self.dvars_curve = self.dvars_plot.plot(pen=pg.mkPen("#e0c060", width=1), connect="finite")
        self.latency_plot = self.addPlot(row=4, col=0, title="latency per volume (ms); dashed: the TR")
        self.latency_plot.addLegend(offset=(5, 5))
        self.latency_curve = self.latency_plot.plot(pen=pg.mkPen("#60c0e0", width=1), connect="finite", name="total")
        self.read_curve = self.latency_plot.plot(pen=pg.mkPen("#a0a0a0", width=1), connect="finite", name="to read")
        self.preprocess_curve = self.latency_plot.plot(pen=pg.mkPen("#e070e0", width=1), connect="finite",
                                                       name="motion + mask")
        self.tr_line = pg.InfiniteLine(angle=0, pen=pg.mkPen("#60c0e0", style=QtCore.Qt.PenStyle.DashLine))
        self.tr_line.setVisible(False)
        self.latency_plot.addItem(self.tr_line)
        for p in (self.rotation, self.fd_plot, self.dvars_plot, self.latency_plot):
            p.setXLink(self.translation)
        for p in (self.translation, self.rotation, self.fd_plot, self.dvars_plot):
            p.hideAxis("bottom")  # one volume axis, under the last plot: the x axes are linked
        self.latency_plot.setLabel("bottom", "volume")
        self.gap_lines: list[pg.InfiniteLine] = []
        self.trial_regions: list[pg.LinearRegionItem] = []
        self._drawn: tuple = ()

    def draw(self, state: ConsoleState) -> None:
        q = state.current_run
        self.fd_line.setValue(state.fd_threshold_mm)
        if q.tr_s:
            self.tr_line.setValue(1000 * q.tr_s)
        self.tr_line.setVisible(bool(q.tr_s))
        x, motion = with_gaps(q.index, np.asarray(q.motion, float).reshape(-1, 6), q.missing)
        for i, curve in enumerate(self.motion_curves):
            curve.setData(x, motion[:, i]) if len(x) else curve.setData([], [])
        _, fd = with_gaps(q.index, np.asarray(q.fd), q.missing)
        self.fd_curve.setData(x, fd)
        alarm = np.asarray(q.alarm, bool)
        self.fd_alarm.setData(np.asarray(q.index, float)[alarm], np.asarray(q.fd, float)[alarm])
        self.dvars_curve.setData(*with_gaps(q.index, np.asarray(q.dvars), q.missing))
        self.latency_curve.setData(*with_gaps(q.index, np.asarray(q.latency_ms), q.missing))
        for curve, values in ((self.read_curve, q.read_ms), (self.preprocess_curve, q.preprocess_ms)):
            values = np.asarray(values, float)
            # Not said (a replay, an older scanner side): no curve, rather than an all-NaN one that upsets the axis.
            curve.setData(*with_gaps(q.index, values, q.missing)) if np.isfinite(values).any() else curve.setData([], [])
        trials = sorted((v.onset_s, v.trial) for k, v in state.trials.items()
                        if k[0] == q.run and k[2] == "realtime" and v.onset_s is not None)
        key = (q.run, tuple(q.missing), tuple(trials), q.tr_s)
        if key != self._drawn:  # markers change rarely: rebuilt only then
            self._drawn = key
            self._markers(q.missing, [t for t, _ in trials], q.tr_s)

    def _markers(self, missing: list[int], onsets: list[float], tr_s: float | None) -> None:
        for item in self.gap_lines:
            item.getViewBox() and item.getViewBox().removeItem(item)
        for item in self.trial_regions:
            self.fd_plot.removeItem(item)
        self.gap_lines, self.trial_regions = [], []
        for index in sorted(set(missing)):
            for plot in (self.translation, self.rotation, self.fd_plot, self.dvars_plot, self.latency_plot):
                line = pg.InfiniteLine(pos=index, angle=90, pen=pg.mkPen("#ff5050", width=1, style=QtCore.Qt.PenStyle.DotLine))
                plot.addItem(line)
                self.gap_lines.append(line)
        if tr_s:
            for onset in onsets:
                region = pg.LinearRegionItem((onset / tr_s, onset / tr_s + 3.0 / tr_s), movable=False,
                                             brush=pg.mkBrush(90, 140, 220, 25), pen=pg.mkPen(None))
                region.setZValue(-10)
                self.fd_plot.addItem(region)
                self.trial_regions.append(region)


def _eval_text(v) -> str:
    if v.eval_score is None:
        return ""
    return f"{v.eval_score:.3f}" if v.eval_metric == "PixCorr" else f"{100 * v.eval_score:.0f}%"


class TrialTable(QtWidgets.QWidget):
    """Decoded trials, filtered by run, with hit/miss colour and the running top-1 rate beside chance."""

    COLUMNS = ("trial", "image", "top-1", "hit", "score", "version", "FD", "latency ms", "bad")

    def __init__(self, state: ConsoleState) -> None:
        super().__init__()
        self.state = state
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        bar = QtWidgets.QHBoxLayout()
        self.run_filter = QtWidgets.QComboBox()
        self.run_filter.setToolTip("which run's trials to list; by default every run that was decoded")
        self.run_filter.currentIndexChanged.connect(lambda _i: self.draw(force=True))
        self.rate = QtWidgets.QLabel("")
        bar.addWidget(QtWidgets.QLabel("run"))
        bar.addWidget(self.run_filter)
        bar.addWidget(self.rate, 1)
        layout.addLayout(bar)
        self.table = QtWidgets.QTableWidget(0, len(self.COLUMNS))
        self.table.setHorizontalHeaderLabels(self.COLUMNS)
        self.table.verticalHeader().setVisible(False)  # the trial number is the row's name
        self.table.setSelectionBehavior(QtWidgets.QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setEditTriggers(QtWidgets.QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.horizontalHeader().setStretchLastSection(False)
        layout.addWidget(self.table)
        self.keys: list[tuple[int, int, str]] = []
        self._rows: list[tuple] = []
        self._runs: list[int] = []

    def selected_run(self) -> int | None:
        data = self.run_filter.currentData()
        return None if data in (None, -1) else int(data)

    def _sync_runs(self) -> None:
        runs = self.state.decoded_runs()
        if runs == self._runs:
            return
        chosen = self.selected_run()
        self._runs = runs
        self.run_filter.blockSignals(True)
        self.run_filter.clear()
        self.run_filter.addItem("all decoded", -1)
        for r in runs:
            self.run_filter.addItem(f"run {r}", r)
        if chosen in runs:
            self.run_filter.setCurrentIndex(runs.index(chosen) + 1)
        self.run_filter.blockSignals(False)

    def draw(self, force: bool = False) -> None:
        self._sync_runs()
        run = self.selected_run()
        decoded = set(self._runs)  # calibration runs, never decoded, stay out of the table
        keys = [k for k in sorted(self.state.trials) if k[0] in decoded and (run is None or k[0] == run)
                and k[2] in LIVE]  # a refined trial is one row: its newest version
        rows = []
        metric = next((v.eval_metric for k, v in sorted(self.state.trials.items()) if v.eval_metric), "")
        columns = self.COLUMNS + ((f"eval: {metric}",) if metric else ())
        if self.table.columnCount() != len(columns):  # rtdecode evaluate's score, when a replay brought one
            self.table.setColumnCount(len(columns))
            self.table.setHorizontalHeaderLabels(columns)
        for key in keys:
            v = self.state.trials[key]
            hit = "" if v.hit is None else ("hit" if v.hit else "miss")
            rows.append((f"{v.run}.{v.trial}", v.image, v.top_ids[0] if v.top_ids else "…", hit,
                         f"{v.top_scores[0]:.2f}" if v.top_scores else "", v.version,
                         "" if (fd := self.state.trial_fd(v)) is None else f"{fd:.2f}",
                         "" if v.latency_ms is None else f"{v.latency_ms:.0f}", ("bad: " + v.note if v.note else "bad") if v.bad else "",
                         *((_eval_text(v),) if metric else ())))
        hits = self.state.hits(run)
        n = self.state.gallery_size
        chance = f" (chance {100 / n:.1f}% among {n} images)" if n else " (chance: the decoder has not said its gallery)"
        self.rate.setText(f"top-1 {100 * sum(hits) / len(hits):.0f}% of {len(hits)} trials{chance}" if hits
                          else "no decoded trial yet")
        if rows == self._rows and not force:
            return
        selected = self.selected_keys()
        bar = self.table.verticalScrollBar()
        following = bar.value() >= bar.maximum()  # at the newest row: keep following new trials
        self.keys, self._rows = keys, rows
        self.table.setRowCount(len(rows))
        for r, row in enumerate(rows):
            colour = HIT if row[3] == "hit" else MISS if row[3] == "miss" else None
            for col, text in enumerate(row):
                item = QtWidgets.QTableWidgetItem(text)
                if colour is not None:
                    item.setBackground(colour)
                self.table.setItem(r, col, item)
        self.table.resizeColumnsToContents()
        if selected:  # the operator's selection stays selected and in view
            rows_sel = [keys.index(k) for k in selected if k in keys]
            for i in rows_sel:
                self.table.selectRow(i)
            if rows_sel and not following:
                self.table.scrollToItem(self.table.item(rows_sel[0], 0))
        if following:
            self.table.scrollToBottom()

    def selected_keys(self) -> list[tuple[int, int, str]]:
        return [self.keys[r] for r in sorted({i.row() for i in self.table.selectedIndexes()}) if r < len(self.keys)]


class RunsTable(QtWidgets.QTableWidget):
    """One row per run: what an operator needs to decide whether to repeat it."""

    COLUMNS = ("run", "volumes", "missing", "rejected", "FD mean", "FD max", "alarm episodes", "tSNR",
               "latency ms", "top-1", "state")

    def __init__(self, state: ConsoleState) -> None:
        super().__init__(0, len(self.COLUMNS))
        self.state = state
        self.setHorizontalHeaderLabels(self.COLUMNS)
        self.verticalHeader().setVisible(False)
        self.setEditTriggers(QtWidgets.QAbstractItemView.EditTrigger.NoEditTriggers)
        self._rows: list[dict] = []

    def draw(self) -> None:
        rows = [{**summary(q, self.state.hits(r)), "warning": self.state.run_warnings.get(r, "")}
                for r, q in sorted(self.state.runs.items())]
        if rows == self._rows:
            return
        self._rows = rows
        self.setRowCount(len(rows))
        for r, row in enumerate(rows):
            for c, name in enumerate(self.COLUMNS):
                warn = row["warning"] if name == "state" else ""  # "ended (complete)" alone would hide it
                item = QtWidgets.QTableWidgetItem(row[name] + ("; NO BETAS" if warn else ""))
                item.setToolTip(warn)
                self.setItem(r, c, item)
        self.resizeColumnsToContents()


class EventLog(QtWidgets.QWidget):
    """Timestamped lines, coloured by severity, filtered by the lowest severity shown."""

    def __init__(self, state: ConsoleState) -> None:
        super().__init__()
        self.state = state
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.filter = QtWidgets.QComboBox()
        for label, level in (("everything", "info"), ("warnings and errors", "warning"), ("errors only", "error")):
            self.filter.addItem(label, level)
        self.filter.currentIndexChanged.connect(lambda _i: self.draw(force=True))
        layout.addWidget(self.filter)
        self.list = QtWidgets.QListWidget()
        layout.addWidget(self.list)
        self._shown = 0
        self._first: object = None

    def lines(self) -> list[str]:
        return [self.list.item(i).text() for i in range(self.list.count())]

    def draw(self, force: bool = False) -> None:
        entries = list(self.state.log)
        first = entries[0] if entries else None
        if force or first is not self._first:  # filter changed, or the oldest lines rolled out
            self.list.clear()
            self._shown, self._first = 0, first
        levels = ("info", "warning", "error")
        lowest = levels.index(self.filter.currentData() or "info")
        following = self.list.verticalScrollBar().value() >= self.list.verticalScrollBar().maximum()
        for entry in entries[self._shown:]:
            if levels.index(entry.severity) >= lowest:
                stamp = time.strftime("%H:%M:%S", time.localtime(entry.time))
                item = QtWidgets.QListWidgetItem(f"{stamp}  {entry.severity:7s}  {entry.text}")
                item.setForeground(QtGui.QColor(SEVERITY_COLOURS[entry.severity]))
                self.list.addItem(item)
        self._shown = len(entries)
        if following:
            self.list.scrollToBottom()


class AlignmentPanel(QtWidgets.QWidget):
    """The current run's mask on its reference (red outline), the registration figures, the scanner
    side's warning, and the latest temporal-SNR mosaic."""

    def __init__(self, state: ConsoleState) -> None:
        super().__init__()
        self.state = state
        layout = QtWidgets.QVBoxLayout(self)
        self.figures = QtWidgets.QLabel("no run yet")
        self.figures.setWordWrap(True)
        self.warning = QtWidgets.QLabel("")
        self.warning.setWordWrap(True)
        self.warning.setStyleSheet("color: #ff5050; font-weight: bold;")
        self.mosaic = QtWidgets.QLabel()
        self.tsnr_caption = QtWidgets.QLabel("")
        self.tsnr = QtWidgets.QLabel()
        for w in (self.figures, self.warning, self.mosaic, self.tsnr_caption, self.tsnr):
            layout.addWidget(w)
        layout.addStretch(1)
        self._drawn: tuple = ()

    def draw(self) -> None:
        view = self.state.alignment.get(self.state.run) if self.state.run is not None else None
        key = (id(view), None if view is None else (view.warning, view.tsnr_at, id(view.mosaic)))
        if key == self._drawn:
            return
        self._drawn = key
        if view is None:
            return
        f = view.figures
        parts = [f"run {view.run}"]
        if "shift_mm" in f:
            parts.append(f"registration to the session reference: shift {f['shift_mm']:.1f} mm, "
                         f"rotation {f.get('rotation_deg', 0):.1f} deg")
        if "in_brain" in f:
            parts.append(f"mask voxels on brain: {100 * f['in_brain']:.0f} %")
        if "match" in f:
            parts.append(f"match to the session reference: {f['match']:.2f}")
        self.figures.setText("\n".join(parts))
        self.warning.setText(f"CHECK THE ALIGNMENT: {view.warning}" if view.warning else "")
        dpr = self.devicePixelRatioF()
        for label, image in ((self.mosaic, view.mosaic), (self.tsnr, view.tsnr)):
            if image is None:
                label.clear()
                continue
            h, w = image.shape[:2]
            scale = min(2.0, 420 / max(w, 1))
            label.setPixmap(_scaled(image, int(w * scale), int(h * scale), dpr))
        self.tsnr_caption.setText("" if view.median_tsnr is None else
                                  f"temporal SNR at volume {view.tsnr_at + 1} (median {view.median_tsnr:.0f}; 0 to 100)")


def _scaled(image: np.ndarray, w: int, h: int, dpr: float) -> QtGui.QPixmap:
    img = np.ascontiguousarray(image[..., :3].astype(np.uint8))
    q = QtGui.QImage(img.data, img.shape[1], img.shape[0], 3 * img.shape[1], QtGui.QImage.Format.Format_RGB888).copy()
    pix = QtGui.QPixmap.fromImage(q).scaled(max(1, int(w * dpr)), max(1, int(h * dpr)),
                                            QtCore.Qt.AspectRatioMode.KeepAspectRatio,
                                            QtCore.Qt.TransformationMode.FastTransformation)
    pix.setDevicePixelRatio(dpr)
    return pix
