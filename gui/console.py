"""The operator console window (PyQt6 + pyqtgraph). It draws :class:`gui.state.ConsoleState`, nothing more.

Top: a REPLAY banner when drawing a finished session, the status line, connection lights (with the
decoder's queue, decoded count and last-result age) and the run controls. Left: the QA plots
(gui.plots.QAPlots). Right: the current trial, recent reconstructions, and tabs for the trial
table, the runs table and the event log. Splitters between them; the layout is remembered.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyqtgraph as pg
from PyQt6 import QtCore, QtGui, QtWidgets

from gui.display import SILENT_S, DisplayWindow
from gui.panels import (
    AlignmentPanel,
    Confirm,
    ElidedLabel,
    EventLog,
    ImageTile,
    RunsTable,
    TrialTable,
    ask,
    reconstruction_caption,
    refinement_caption,
    scrolling,
    to_pixmap,
)
from gui.plots import QAPlots
from gui.state import ConsoleState

__all__ = ["ConsoleWindow", "DisplayWindow", "dispose", "to_pixmap"]

STALE_S = 3.0  # a service silent for longer than this shows amber; never heard from, grey
SHORTCUTS = (("Ctrl+B", "mark the selected trial(s) bad"), ("Ctrl+U", "remove the mark"),
             ("Ctrl+R", "start run (arm)"), ("Ctrl+.", "stop run"), ("Ctrl+L", "show the event log"),
             ("Ctrl+T", "show the trial table"), ("Ctrl+G", "show the alignment"), ("F1", "this help"))
NO_CONTROL = "no scanner side to command: start the console with --control tcp://SCANNER-PC:5558"

TABS_MIN_H = 300  # the tabs' first height where the window allows: about five rows of the trials table
STRIP_MIN_H = 60  # the recent-reconstructions strip gives up height to the tabs down to this (it scrolls)


class ConsoleWindow(QtWidgets.QMainWindow):
    def __init__(self, state: ConsoleState, gallery: dict[str, np.ndarray] | None = None,
                 control: Callable[..., str] | None = None, confirm: Confirm | None = None,
                 settings: QtCore.QSettings | None = None, clock: Callable[[], float] = time.time) -> None:
        """``control(action, fields=None) -> str`` sends start_run, stop_run and marks to the scanner
        side (None: no run buttons, and marks stay in this window only).
        ``confirm(title, text) -> bool`` asks the operator (default: a dialog). ``settings`` keeps the
        window's layout between sessions (None: not kept). ``clock``: the wall time that ages are
        measured to (tests give a fixed one)."""
        super().__init__()
        self.state = state
        self.clock = clock
        self.control = control
        self.confirm = confirm or ask(self)
        self.settings = settings
        self.gallery = gallery or {}
        central = QtWidgets.QWidget()
        self.setCentralWidget(central)
        outer = QtWidgets.QVBoxLayout(central)
        self._build_banners(outer)
        outer.addLayout(self._build_controls())
        self.plots = QAPlots()
        # Backwards-compatible names for the plot items (tests and the screenshot tool use them).
        self.fd_curve, self.fd_alarm, self.fd_line = self.plots.fd_curve, self.plots.fd_alarm, self.plots.fd_line
        self.motion_curves = self.plots.motion_curves
        trial_box, strip_box = self._build_trial()
        self._build_tabs()
        self._build_splitters(trial_box, strip_box)
        outer.addWidget(self.splitter, 1)
        self.help = QtWidgets.QLabel(self.help_text(), self)
        self.help.setStyleSheet("background: rgba(20, 20, 20, 230); color: white; padding: 16px; font-size: 14px;")
        self.help.setVisible(False)
        self._shortcuts()
        screen = self.screen().availableGeometry() if self.screen() is not None else None
        self.resize(min(1400, screen.width()) if screen else 1400, min(950, screen.height()) if screen else 950)
        self._restore()

    # -- building the window (in the order the widgets are made) ---------------------------------
    def _build_banners(self, outer: QtWidgets.QVBoxLayout) -> None:
        """The REPLAY banner and the alignment warning, both hidden until needed."""
        self.banner = QtWidgets.QLabel("REPLAY of a finished session: nothing here is live")
        # One thin line: at 768 px every row of height goes to the trials table.
        self.banner.setStyleSheet("background: #6a4a00; color: white; font-weight: bold; padding: 0px 4px;")
        self.banner.setVisible(self.state.replay)
        outer.addWidget(self.banner)
        self.alignment_warning = QtWidgets.QLabel("")
        self.alignment_warning.setWordWrap(True)  # a long warning wraps rather than widening the window
        self.alignment_warning.setStyleSheet("background: #701818; color: white; font-weight: bold; padding: 4px;")
        self.alignment_warning.setVisible(False)
        outer.addWidget(self.alignment_warning)

    def _build_controls(self) -> QtWidgets.QHBoxLayout:
        """The status row: status line, connection lights, run buttons, help, the last reply."""
        top = QtWidgets.QHBoxLayout()
        # The status row shortens with the window (each label elides; the full text in its tooltip).
        self.status = ElidedLabel(self.state.status)
        self.status.setObjectName("status")
        top.addWidget(self.status, 1)
        self.lights = {name: ElidedLabel(name) for name in ("scanner", "decoder")}
        for light in self.lights.values():
            top.addWidget(light)
        self.start_button = QtWidgets.QPushButton("start run")
        self.stop_button = QtWidgets.QPushButton("stop run")
        self.help_button = QtWidgets.QPushButton("help (F1)")
        self.start_button.clicked.connect(self.start_run)
        self.stop_button.clicked.connect(self.stop_run)
        self.help_button.clicked.connect(self.toggle_help)
        for button in (self.start_button, self.stop_button):
            button.setEnabled(self.control is not None)
            button.setToolTip("" if self.control is not None else NO_CONTROL)
            top.addWidget(button)
        top.addWidget(self.help_button)
        self.reply = ElidedLabel("")
        top.addWidget(self.reply)
        return top

    def _build_trial(self) -> tuple[QtWidgets.QGroupBox, QtWidgets.QGroupBox]:
        """The current trial (stimulus, reconstruction, top-5 retrieved) and the recent reconstructions."""
        trial_box = QtWidgets.QGroupBox("current trial")
        trial_layout = QtWidgets.QGridLayout(trial_box)
        self.stimulus = ImageTile("stimulus", 180)
        self.reconstruction = ImageTile("reconstruction", 180)
        trial_layout.addWidget(self.stimulus, 0, 0)
        trial_layout.addWidget(self.reconstruction, 0, 1)
        retrievals = QtWidgets.QHBoxLayout()
        self.retrieved = [ImageTile(f"#{i + 1}", 84) for i in range(5)]
        for tile in self.retrieved:
            tile.caption.setWordWrap(False)  # one line, 'sim-00019 0.50 ✓': never cut at the area's foot
            retrievals.addWidget(tile)
        trial_layout.addLayout(retrievals, 1, 0, 1, 2)
        strip_box = QtWidgets.QGroupBox("recent reconstructions")
        strip = QtWidgets.QHBoxLayout(strip_box)
        self.history = [ImageTile("", 64) for _ in range(8)]
        for tile in self.history:
            strip.addWidget(tile)
        return trial_box, strip_box

    def _build_tabs(self) -> None:
        """The tabs: trials (with the mark buttons), runs, event log, alignment."""
        self.trials = TrialTable(self.state)
        self.table = self.trials.table
        self.mark = QtWidgets.QPushButton("mark selected bad (Ctrl+B)")
        self.unmark = QtWidgets.QPushButton("remove mark (Ctrl+U)")
        self.mark.clicked.connect(lambda: self.mark_selected_bad(True))  # not the slot itself: clicked passes False
        self.unmark.clicked.connect(lambda: self.mark_selected_bad(False))
        self.note = QtWidgets.QLineEdit()
        self.note.setPlaceholderText("note for the mark (optional)")
        self.note.setMaxLength(200)
        trial_tab = QtWidgets.QWidget()
        trial_tab_layout = QtWidgets.QVBoxLayout(trial_tab)
        trial_tab_layout.addWidget(self.trials)
        buttons = QtWidgets.QHBoxLayout()
        buttons.addWidget(self.note, 1)
        buttons.addWidget(self.mark)
        buttons.addWidget(self.unmark)
        trial_tab_layout.addLayout(buttons)
        self.runs = RunsTable(self.state)
        self.log = EventLog(self.state)
        self.alignment = AlignmentPanel(self.state)
        self.tabs = QtWidgets.QTabWidget()
        self.tabs.addTab(trial_tab, "trials")
        self.tabs.addTab(self.runs, "runs")
        self.tabs.addTab(self.log, "event log")
        self.tabs.addTab(scrolling(self.alignment), "alignment")  # two mosaics: taller than a laptop screen

    def _build_splitters(self, trial_box: QtWidgets.QGroupBox, strip_box: QtWidgets.QGroupBox) -> None:
        """Plots on the left; the trial, the strip and the tabs on the right, each resizable."""
        right = QtWidgets.QSplitter(QtCore.Qt.Orientation.Vertical)
        # Scrollable, so the splitter can shrink any of them on a small screen and each stays reachable.
        right.addWidget(scrolling(trial_box))
        right.addWidget(scrolling(strip_box))
        right.addWidget(self.tabs)
        right.setStretchFactor(2, 1)
        self.splitter = QtWidgets.QSplitter(QtCore.Qt.Orientation.Horizontal)
        self.splitter.addWidget(self.plots)
        self.splitter.addWidget(right)
        self.splitter.setStretchFactor(0, 1)
        self.right_splitter = right

    # -- controls ------------------------------------------------------------------------------------
    def _shortcuts(self) -> None:
        actions = {"Ctrl+B": self.mark_selected_bad, "Ctrl+U": lambda: self.mark_selected_bad(False),
                   "Ctrl+R": self.start_run, "Ctrl+.": self.stop_run, "F1": self.toggle_help,
                   "Ctrl+L": lambda: self.tabs.setCurrentWidget(self.log),
                   "Ctrl+T": lambda: self.tabs.setCurrentIndex(0),
                   "Ctrl+G": lambda: self.tabs.setCurrentIndex(3)}
        for keys, slot in actions.items():
            # Application-wide: the console is its process's only window, and keys then work whichever
            # panel or dialog-free widget has the focus.
            QtGui.QShortcut(QtGui.QKeySequence(keys), self, activated=slot,
                            context=QtCore.Qt.ShortcutContext.ApplicationShortcut)

    @staticmethod
    def help_text() -> str:
        return "Keyboard shortcuts\n\n" + "\n".join(f"{k:8s}  {what}" for k, what in SHORTCUTS) + "\n\nF1 closes this."

    def toggle_help(self) -> None:
        self.help.setVisible(not self.help.isVisible())
        self.help.adjustSize()
        self.help.move(max(0, (self.width() - self.help.width()) // 2), max(0, (self.height() - self.help.height()) // 2))
        self.help.raise_()

    def settings_review(self) -> str:
        """What the next run will use, as the console knows it from the scanner side."""
        s = self.state
        who = " ".join(f"{k} {s.identity[k]}" for k in ("subject", "session") if k in s.identity) or "not yet said"
        q = s.current_run
        return (f"participant: {who}\nvolumes per run: {s.volumes_expected or 'not yet said'}\n"
                f"TR: {f'{q.tr_s:g} s' if q.tr_s else 'not yet said'}\n"
                f"FD threshold: {s.fd_threshold_mm:g} mm\nruns so far: {len(s.runs)}")

    def start_run(self) -> str | None:
        if self.control is None:
            return None
        if not self.confirm("start run", "Arm the scanner side: the next series starts a new run.\n\n"
                            + self.settings_review()):
            return None
        return self.command("start_run")

    def stop_run(self) -> str | None:
        if self.control is None:
            return None
        run = self.state.run
        if not self.confirm("stop run", f"End run {run} now? Files of this series arriving later are set aside."):
            return None
        return self.command("stop_run")

    def command(self, action: str) -> str:
        detail = self.control(action) if self.control is not None else NO_CONTROL
        self.reply.setText(detail)
        self.state.add_log("info", f"{action}: {detail}")
        return detail

    def mark_selected_bad(self, bad: bool = True) -> None:
        """Mark the selected trials bad (or remove the mark). With a scanner side, the mark is sent to it,
        written to the session folder's marks.tsv and comes back to every console; without one it lives
        in this window only, and the log says so."""
        note = self.note.text().strip() if bad else ""
        for key in self.trials.selected_keys():
            if self.control is not None:
                version = self.state.trials[key].version if key[2] == "refine" else key[2]  # a refined trial: its newest
                fields = {"run": key[0], "trial": key[1], "version": version, "bad": bad, **({"note": note} if note else {})}
                detail = self.control("mark", fields)
                self.reply.setText(detail)
                if "marked bad" not in detail and "mark removed" not in detail:
                    self.state.add_log("error", f"mark not saved: {detail}")
                    continue
            else:
                self.state.add_log("warning", "mark kept in this window only: no scanner side to save it (--control)")
            self.state.mark_bad(key, bad, note)
        self.note.clear()
        self.trials.draw(force=True)

    # -- drawing ---------------------------------------------------------------------------------
    def refresh(self) -> None:
        s = self.state
        now = self.clock()
        s.check_silence(SILENT_S, now)  # a silence changes a light and leaves a line in the log
        q = s.current_run
        who = " ".join(f"{k} {s.identity[k]}" for k in ("subject", "session") if k in s.identity)
        self.setWindowTitle("rtdecode console" + (f": {who}" if who else "") + (f", model {s.model}" if s.model else "")
                            + (" [REPLAY]" if s.replay else ""))
        self.banner.setVisible(s.replay)
        alarms = s.fd_alarms
        extra = f"; {len(q.missing)} missing" if q.missing and not q.ended else ""  # an ended run's line says it
        extra += f"; {alarms} FD alarm(s)" if alarms else ""
        extra += f"; {s.refused} message(s) refused" if s.refused else ""
        self.status.setText((f"[{who}] " if who else "") + s.status + extra)
        # Shortened on a narrow screen: the whole line (and the last refusal) in the tooltip.
        self.status.setToolTip("\n".join(t for t in (self.status.text(), s.last_refused) if t))
        self.status.setStyleSheet("color: #ff5050;" if alarms or q.missing or s.refused else "")
        for name, light in self.lights.items():
            if s.replay:  # ages and liveness mean nothing in a replay
                light.setText(f"● {name} (replay)")
                light.setStyleSheet("color: #808080;")
                continue
            age = s.heartbeat_age(name, now)
            colour = "#808080" if age is None else ("#40c040" if age < STALE_S else "#e0a020")
            restarted = f" (restarted {s.restarts[name]}x)" if s.restarts.get(name) else ""
            extra = ""
            if name == "decoder":
                extra += f" queue {s.decoder_queue}" if s.decoder_queue is not None else ""
                # The session shown, not the decoder's day (its heartbeat counts every participant's betas).
                extra += f", {s.decoded_in_session()} decoded" if s.decoder_decoded is not None or s.trials else ""
                extra += f", {s.decoder_refused} refused" if s.decoder_refused else ""
                result_age = s.result_age(now)
                extra += f", last result {result_age:.0f}s ago" if result_age is not None else ""
            light.setText(f"● {name}" + ("" if age is None else f" {age:.0f}s") + extra + restarted)
            day = f"\n{s.decoder_decoded} betas decoded since the decoder started (every session)" \
                if name == "decoder" and s.decoder_decoded is not None else ""
            light.setToolTip(light.text() + day)
            light.setStyleSheet(f"color: {colour};")
        self.plots.draw(s)
        self._draw_trial(now)
        self._draw_history()
        self.trials.draw()
        self.runs.draw()
        self.log.draw()
        self.alignment.draw()
        view = s.alignment.get(s.run) if s.run is not None else None
        warning = view.warning if view is not None else ""
        self.alignment_warning.setText(f"run {s.run}: check the alignment (tab 'alignment'): {warning}" if warning else "")
        self.alignment_warning.setVisible(bool(warning))
        self.tabs.setTabText(3, "alignment ⚠" if warning else "alignment")

    def _draw_trial(self, now: float) -> None:
        s = self.state
        if s.current is None:
            return
        view = s.trials[s.current]
        self.stimulus.set(self.gallery.get(view.image), f"run {view.run} trial {view.trial}: {view.image or '?'}"
                          f" · {refinement_caption(view)}")
        self.reconstruction.set(view.reconstruction, reconstruction_caption(view, now, replay=s.replay))
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

    def screenshot(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.grab().save(str(path))
        return path

    # -- layout kept between sessions -------------------------------------------------------------
    def _restore(self) -> None:
        value = self.settings.value("geometry") if self.settings is not None else None
        if isinstance(value, QtCore.QByteArray) and not value.isEmpty():
            self.restoreGeometry(value)
        self._splitters_restored = False

    def showEvent(self, event: QtGui.QShowEvent) -> None:  # noqa: N802 (Qt's name)
        super().showEvent(event)
        if self._splitters_restored:
            return
        self._splitters_restored = True  # once the window has its size, or the splitters rescale the sizes
        self._fit_splitters()
        for key, splitter in (("splitter", self.splitter), ("right", self.right_splitter)):
            value = self.settings.value(key) if self.settings is not None else None
            if isinstance(value, QtCore.QByteArray) and not value.isEmpty():
                splitter.restoreState(value)

    def _fit_splitters(self) -> None:
        """First sizes: the current trial and the strip whole (captions included) where the window allows,
        the plots and the tabs the rest; on a 1366 px screen the plots give up width, not the captions."""
        trial, strip = (self.right_splitter.widget(i).widget().sizeHint() for i in (0, 1))
        scroll = self.style().pixelMetric(QtWidgets.QStyle.PixelMetric.PM_ScrollBarExtent) + 8
        width = self.splitter.width() or self.width()
        right = min(max(trial.width() + scroll, width // 2), int(width * 0.6))
        self.splitter.setSizes([max(1, width - right), right])
        height = self.right_splitter.height() or self.height()
        top = [trial.height() + 10, strip.height() + scroll]
        # The tabs keep room for ~5 trial rows (a 768 px screen left 2): the strip, which scrolls, gives it first.
        short = max(0, min(TABS_MIN_H, height // 2) - (height - sum(top)))
        top[1] -= min(short, max(0, top[1] - STRIP_MIN_H))  # the current trial stays whole: captions in view
        self.right_splitter.setSizes([*top, max(1, height - sum(top))])

    def save_layout(self) -> None:
        if self.settings is None:
            return
        self.settings.setValue("geometry", self.saveGeometry())
        self.settings.setValue("splitter", self.splitter.saveState())
        self.settings.setValue("right", self.right_splitter.saveState())
        self.settings.sync()

    def closeEvent(self, event: QtGui.QCloseEvent) -> None:  # noqa: N802 (Qt's name)
        self.save_layout()
        super().closeEvent(event)


def dispose(*windows: QtWidgets.QWidget) -> None:
    """Close windows and free their Qt objects now.

    pyqtgraph's views and items form reference cycles, so a window nobody holds is freed by Python's
    garbage collector whenever it next runs, which can be inside a paint event of that same window
    (a segmentation fault). Freeing it here, outside any event, leaves the collector only empty shells.
    """
    for window in windows:
        window.close()
        for view in window.findChildren(pg.GraphicsView):
            view.close()  # clears the scene and drops the viewport: nothing left to paint
        window.deleteLater()
    QtCore.QCoreApplication.sendPostedEvents(None, QtCore.QEvent.Type.DeferredDelete)
