"""The console's panels, each drawing one part of :class:`gui.state.ConsoleState`: image tiles, the
trial table, the runs table and the event log (the alignment tab: gui.alignment; the QA plots: gui.plots)."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

import numpy as np
from PyQt6 import QtCore, QtGui, QtWidgets

from gui.alignment import AlignmentPanel, registration_text
from gui.quality import summary
from gui.state import LIVE, ConsoleState, LogEntry, TrialView

__all__ = ["AlignmentPanel", "Confirm", "ElidedLabel", "EventLog", "ImageTile", "RunsTable", "TrialTable", "ask",
           "reconstruction_caption", "refinement_caption", "registration_text", "scrolling", "to_pixmap"]

SEVERITY_COLOURS = {"info": "#c8c8c8", "warning": "#e0a020", "error": "#ff5050"}
HIT, MISS = QtGui.QColor("#1e5a28"), QtGui.QColor("#5a1e1e")


Confirm = Callable[[str, str], bool]  # (title, text) -> the operator said yes


def ask(parent: QtWidgets.QWidget) -> Confirm:
    """A yes/no question box over ``parent``, as a :data:`Confirm`."""
    def confirm(title: str, text: str) -> bool:
        answer = QtWidgets.QMessageBox.question(parent, title, text)
        return answer == QtWidgets.QMessageBox.StandardButton.Yes
    return confirm


def scrolling(widget: QtWidgets.QWidget) -> QtWidgets.QScrollArea:
    """``widget`` in a frameless scroll area that fits it to the width and scrolls what does not fit."""
    area = QtWidgets.QScrollArea()
    area.setWidget(widget)
    area.setWidgetResizable(True)
    area.setFrameShape(QtWidgets.QFrame.Shape.NoFrame)
    return area


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


class ElidedLabel(QtWidgets.QLabel):
    """A one-line label that shortens with '…' when its row is narrow, so a long status never sets
    the window's minimum width; ``text()`` stays whole, and the tooltip shows it when shortened."""

    def minimumSizeHint(self) -> QtCore.QSize:  # noqa: N802 (Qt's name)
        return QtCore.QSize(self.fontMetrics().horizontalAdvance("xxxx…"), super().minimumSizeHint().height())

    def paintEvent(self, _event: QtGui.QPaintEvent) -> None:  # noqa: N802 (Qt's name)
        rect = self.contentsRect()
        text = self.fontMetrics().elidedText(self.text(), QtCore.Qt.TextElideMode.ElideRight, rect.width())
        painter = QtGui.QPainter(self)
        self.style().drawItemText(painter, rect, int(self.alignment()), self.palette(), self.isEnabled(), text,
                                  self.foregroundRole())
        painter.end()

    def elided(self) -> bool:
        """Whether the text is shortened at the label's present width."""
        return self.fontMetrics().horizontalAdvance(self.text()) > self.contentsRect().width()


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
    refined = ", refined" if view.refined else ""
    said = f"\n“{view.caption}”" if view.caption else ""  # the decoder's caption, from the brain
    if said and view.caption_score is not None:
        said += f" (METEOR {view.caption_score:.2f})"
    return f"{view.recon_version or view.version}, {view.tier or 'tier not recorded'}{refined}{age}{said}"


def refinement_caption(view: TrialView) -> str:
    """How far into the response the estimate shown is: 'rt6.0: 6.0 of 15 s of the response'."""
    if view.delay_s is None:
        return view.version
    of = f" of {view.final_delay_s:g} s" if view.final_delay_s else " s"
    done = " (final)" if view.final_delay_s and view.delay_s >= view.final_delay_s - 1e-6 else ""
    return f"{view.version}: {view.delay_s:g}{of} after onset{done}"


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
        # A refined trial is one row (its newest version); a trial's end-of-run estimate, once the run
        # ended, is a row of its own under the live one (version 'endofrun').
        keys = sorted((k for k in self.state.trials if k[0] in decoded and (run is None or k[0] == run)
                       and (k[2] in LIVE or k[2] == "endofrun")), key=lambda k: (k[0], k[1], k[2] == "endofrun"))
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
        whose = "" if self.state.gallery_from == "decoder" else " of the console's --gallery: the decoder has not said its own"
        chance = f" (chance {100 / n:.1f}% among {n} images{whose})" if n else " (chance: the decoder has not said its gallery)"
        final = self.state.hits(run, "endofrun")  # marked trials are left out of both counts
        after = f"; end of run {100 * sum(final) / len(final):.0f}% of {len(final)}" if final else ""
        self.rate.setText(f"top-1 {100 * sum(hits) / len(hits):.0f}% of {len(hits)} trials{after}{chance}" if hits
                          else "no decoded trial yet")
        if rows == self._rows and not force:
            return
        selected = self.selected_keys()
        bar = self.table.verticalScrollBar()
        following = bar.value() >= bar.maximum()  # at the newest row: keep following new trials
        old = [] if force else self._rows
        moved = keys[:len(self.keys)] != self.keys
        self.keys, self._rows = keys, rows
        self.table.setRowCount(len(rows))
        # In place: only the rows that changed get new items (a new trial is one row, not the whole table).
        changed = [r for r, row in enumerate(rows) if r >= len(old) or old[r] != row]
        for r in changed:
            row = rows[r]
            colour = HIT if row[3] == "hit" else MISS if row[3] == "miss" else None
            for col, text in enumerate(row):
                item = QtWidgets.QTableWidgetItem(text)
                if colour is not None:
                    item.setBackground(colour)
                self.table.setItem(r, col, item)
        if not old:
            self.table.resizeColumnsToContents()
        else:
            self._widen(rows, changed)
        if selected:  # the operator's selection stays selected and in view
            if moved:
                self.table.clearSelection()
            rows_sel = [keys.index(k) for k in selected if k in keys]
            for i in rows_sel:
                self.table.selectRow(i)
            if rows_sel and not following:
                self.table.scrollToItem(self.table.item(rows_sel[0], 0))
        if following:
            self.table.scrollToBottom()

    def _widen(self, rows: list[tuple], changed: list[int]) -> None:
        """Widen a column for a changed row's longer text (measuring only those rows, not the table)."""
        fm = self.table.fontMetrics()
        for col in range(self.table.columnCount()):
            need = max((fm.horizontalAdvance(rows[r][col]) + 16 for r in changed if col < len(rows[r])), default=0)
            if need > self.table.columnWidth(col):
                self.table.setColumnWidth(col, need)

    def selected_keys(self) -> list[tuple[int, int, str]]:
        return [self.keys[r] for r in sorted({i.row() for i in self.table.selectedIndexes()}) if r < len(self.keys)]


class RunsTable(QtWidgets.QTableWidget):
    """One row per run: what an operator needs to decide whether to repeat it."""

    COLUMNS = ("run", "volumes", "missing", "rejected", "FD mean", "FD max", "alarm episodes", "tSNR",
               "latency ms", "top-1", "state")

    def __init__(self, state: ConsoleState) -> None:
        super().__init__(0, len(self.COLUMNS))
        self.state = state
        # Two-word headings on two lines: every column fits beside the plots on a 1366 px screen.
        self.setHorizontalHeaderLabels([c.replace(" ", "\n") for c in self.COLUMNS])
        self.verticalHeader().setVisible(False)
        self.setEditTriggers(QtWidgets.QAbstractItemView.EditTrigger.NoEditTriggers)
        self._rows: list[dict] = []
        self._summaries: dict[int, tuple[tuple, dict]] = {}  # run -> (what it was made from, its row)

    def _summary(self, run: int, q) -> dict:
        """A run's row, recomputed only when its volumes, counts, end or hits changed (an ended run's
        2,000 volumes are not summed again at every redraw)."""
        hits = self.state.hits(run)
        made_of = (q.received, len(q.missing), q.rejected, q.ended, q.expected, tuple(hits),
                   sum(q.fd), sum(q.tsnr), sum(q.latency_ms))  # the sums: a volume replaced in place
        kept = self._summaries.get(run)
        if kept is None or kept[0] != made_of:
            kept = self._summaries[run] = (made_of, summary(q, hits))
        return kept[1]

    def draw(self) -> None:
        rows = [{**self._summary(r, q), "warning": self.state.run_warnings.get(r, "")}
                for r, q in sorted(self.state.runs.items())]
        if rows == self._rows:
            return
        self._rows = rows
        self.setRowCount(len(rows))
        for r, row in enumerate(rows):
            for c, name in enumerate(self.COLUMNS):
                warn = row["warning"] if name == "state" else ""  # "ended (complete)" alone would hide it
                item = QtWidgets.QTableWidgetItem(row[name] + ("; NO BETAS" if warn else ""))
                item.setToolTip(warn or (row[name] if name == "state" else ""))
                self.setItem(r, c, item)
        self.resizeColumnsToContents()
        self._fit_state()

    def _fit_state(self) -> None:
        """The state column (the last, the widest) gives up width so every column is in view; its text is
        then shortened with '…', whole in its tooltip."""
        last = len(self.COLUMNS) - 1
        spare = self.viewport().width() - self.horizontalHeader().length()
        if spare < 0:
            self.setColumnWidth(last, max(60, self.columnWidth(last) + spare))

    def resizeEvent(self, event: QtGui.QResizeEvent) -> None:  # noqa: N802 (Qt's name)
        super().resizeEvent(event)
        if self._rows:
            self.resizeColumnToContents(len(self.COLUMNS) - 1)
            self._fit_state()


class EventLog(QtWidgets.QWidget):
    """Timestamped lines, coloured by severity, filtered by the lowest severity shown.

    Drawn incrementally: new lines are appended and lines that rolled out of the state's log are taken
    from the top, so a redraw with a full log (5,000 lines) costs what the new lines cost."""

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
        self.list.setUniformItemSizes(True)  # one line each: scrolling need not measure every row
        layout.addWidget(self.list)
        self._mirror: list[LogEntry] = []  # the state's log at the last draw, shown or not
        self._shown: deque[LogEntry] = deque()  # the entry behind each item of the list, oldest first

    def lines(self) -> list[str]:
        return [self.list.item(i).text() for i in range(self.list.count())]

    def _appended(self, entries: list[LogEntry]) -> tuple[list[LogEntry], set[int]] | None:
        """The entries appended since the last draw and the ids of those that rolled out at the front;
        None when the log changed in any other way (cleared, rewritten): then everything is redrawn."""
        old = self._mirror
        if not entries or not old:
            return (entries, set()) if not old else None
        start = next((i for i, e in enumerate(old) if e is entries[0]), None)
        if start is None:
            return None
        kept = len(old) - start
        if len(entries) < kept or any(entries[i] is not old[start + i] for i in range(kept)):
            return None
        return entries[kept:], {id(e) for e in old[:start]}

    def draw(self, force: bool = False) -> None:
        entries = list(self.state.log)
        change = None if force else self._appended(entries)
        if change is None:
            self.list.clear()
            self._shown.clear()
            change = (entries, set())
        new, gone = change
        self._mirror = entries
        while self._shown and id(self._shown[0]) in gone:
            self._shown.popleft()
            self.list.takeItem(0)
        if not new:
            return
        levels = ("info", "warning", "error")
        lowest = levels.index(self.filter.currentData() or "info")
        bar = self.list.verticalScrollBar()
        following = bar.value() >= bar.maximum()
        for entry in new:
            if levels.index(entry.severity) >= lowest:
                stamp = time.strftime("%H:%M:%S", time.localtime(entry.time))
                item = QtWidgets.QListWidgetItem(f"{stamp}  {entry.severity:7s}  {entry.text}")
                item.setForeground(QtGui.QColor(SEVERITY_COLOURS[entry.severity]))
                self.list.addItem(item)
                self._shown.append(entry)
        if following:
            self.list.scrollToBottom()
