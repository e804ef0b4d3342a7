"""The console's QA plots: motion, FD with its threshold and alarms, DVARS and latency, drawn for the
current run from :class:`gui.state.ConsoleState`; volumes numbered from 1, as the event log says."""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PyQt6 import QtCore

from gui.quality import with_gaps
from gui.state import ConsoleState

__all__ = ["QAPlots", "ROTATION_COLOURS", "TRANSLATION_COLOURS"]

# Three hues apart within each plot (x blue, y green, z yellow; rotations red, orange, violet), all light
# enough for the dark background: round 2's x and z were two near-identical blues.
TRANSLATION_COLOURS = ("#4c9dff", "#4cc84c", "#f0dc3c")
ROTATION_COLOURS = ("#ff5a5a", "#ff9f1c", "#c08cff")


class QAPlots(pg.GraphicsLayoutWidget):
    """Translation (mm) and rotation (degrees) apart, with legends; FD with the scanner side's threshold,
    alarms and shaded trial windows; DVARS; latency with the TR line. Gaps break every curve."""

    def __init__(self) -> None:
        super().__init__()
        # The colour key in the title, above the traces (a legend inside the plot sat under them).
        self.translation = self.addPlot(row=0, col=0, title="translation (mm) " + _key(TRANSLATION_COLOURS, "xyz"))
        self.rotation = self.addPlot(row=1, col=0, title="rotation (degrees) " + _key(
            ROTATION_COLOURS, ("pitch (x)", "roll (y)", "yaw (z)")))
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
        self.latency_plot.setLabel("bottom", "volume (the first is 1)")
        self.gap_lines: list[pg.InfiniteLine] = []
        self.trial_regions: list[pg.LinearRegionItem] = []
        self._drawn: tuple = ()

    def draw(self, state: ConsoleState) -> None:
        q = state.current_run
        self.fd_line.setValue(state.fd_threshold_mm)
        if q.tr_s:
            self.tr_line.setValue(1000 * q.tr_s)
        self.tr_line.setVisible(bool(q.tr_s))
        n = len(q.index)
        columns = np.column_stack([np.asarray(q.motion, float).reshape(n, 6),
                                   *(np.asarray(v, float).reshape(n, 1) for v in
                                     (q.fd, q.dvars, q.latency_ms, q.read_ms, q.preprocess_ms))])
        x, y = with_gaps(q.index, columns, q.missing)
        x = x + 1  # volumes are numbered from 1 for the operator, as the event log and the status line say
        curves = [*self.motion_curves, self.fd_curve, self.dvars_curve, self.latency_curve]
        for i, curve in enumerate(curves):
            curve.setData(x, y[:, i]) if len(x) else curve.setData([], [])
        alarm = np.asarray(q.alarm, bool)
        self.fd_alarm.setData(np.asarray(q.index, float)[alarm] + 1, np.asarray(q.fd, float)[alarm])
        self._latency_range(y[:, 8], q.tr_s)
        for i, curve in ((9, self.read_curve), (10, self.preprocess_curve)):
            # Not said (a replay, an older scanner side): no curve, rather than an all-NaN one that upsets the axis.
            curve.setData(x, y[:, i]) if np.isfinite(y[:, i]).any() else curve.setData([], [])
        trials = sorted((v.onset_s, v.trial) for k, v in state.trials.items()
                        if k[0] == q.run and k[2] == "realtime" and v.onset_s is not None)
        key = (q.run, tuple(q.missing), tuple(trials), q.tr_s)
        if key != self._drawn:  # markers change rarely: rebuilt only then
            self._drawn = key
            self._markers(q.missing, [t for t, _ in trials], q.tr_s)

    def _latency_range(self, latency: np.ndarray, tr_s: float | None) -> None:
        """Up to 1.2x the TR or 1.5x the 95th percentile, whichever is higher: a restart's one late volume
        (minutes) goes off the top instead of flattening every other volume onto a '0' tick."""
        finite = latency[np.isfinite(latency)]
        if not len(finite):
            self.latency_plot.enableAutoRange(axis="y")
            return
        top = max(1.5 * float(np.percentile(finite, 95)), 1200 * tr_s if tr_s else 0.0, 1.0)  # the TR line in view
        self.latency_plot.setYRange(0, top, padding=0)

    def _markers(self, missing: list[int], onsets: list[float], tr_s: float | None) -> None:
        for item in self.gap_lines:
            item.getViewBox() and item.getViewBox().removeItem(item)
        for item in self.trial_regions:
            self.fd_plot.removeItem(item)
        self.gap_lines, self.trial_regions = [], []
        for index in sorted(set(missing)):
            for plot in (self.translation, self.rotation, self.fd_plot, self.dvars_plot, self.latency_plot):
                line = pg.InfiniteLine(pos=index + 1, angle=90, pen=pg.mkPen("#ff5050", width=1, style=QtCore.Qt.PenStyle.DotLine))
                plot.addItem(line)
                self.gap_lines.append(line)
        if tr_s:
            for onset in onsets:
                first = onset / tr_s + 1  # the volume acquired at the onset, numbered from 1
                region = pg.LinearRegionItem((first, first + 3.0 / tr_s), movable=False,
                                             brush=pg.mkBrush(90, 140, 220, 25), pen=pg.mkPen(None))
                region.setZValue(-10)
                self.fd_plot.addItem(region)
                self.trial_regions.append(region)


def _key(colours, names) -> str:
    """A plot title's colour key: each trace's name in its colour."""
    return " ".join(f"<span style='color: {c}'>{n}</span>" for c, n in zip(colours, names, strict=True))
