"""A new user's trial (issues 31, 33): what a failing command suggests, and what the headless demo prints."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from rtdecode.cli import main
from rtdecode.simulator.paradigm import Paradigm


def _images(n: int) -> list[str]:
    return [f"sim-{i:05d}" for i in range(n)]


def test_a_run_too_short_for_its_trials_names_the_trials_that_fit(tmp_path, capsys):
    """`simulate run --volumes 80` (63 trials by default): the error says which --trials fits, or which
    --volumes the trials need; both suggestions work and one trial more does not."""
    assert main(["simulate", "run", "--out", str(tmp_path / "watch"), "--volumes", "80"]) == 2
    err = capsys.readouterr().err
    assert "after the run (120 s)" in err and "--trials 29" in err and "--volumes 171" in err
    assert len(Paradigm(volumes=80, trials=29).events(_images(29))) == 29
    assert len(Paradigm(volumes=171).events(_images(63))) == 63
    with pytest.raises(ValueError, match="--trials 29"):
        Paradigm(volumes=80, trials=30).events(_images(30))
    # another TR: 36 x 1.4 s = 50.4 s holds 11 trials (the 11th ends at 47.5 s); 14 end at 59.5 s = 42.5 TRs
    with pytest.raises(ValueError, match=r"--trials 11\).* 14 trials need at least 43 volumes"):
        Paradigm(volumes=36, tr_s=1.4, trials=14).events(_images(14))


def _python(code: str) -> subprocess.CompletedProcess:
    """A separate interpreter: Qt's message handler and the logging set-up are per process."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "QT_QPA_PLATFORM": "offscreen"})


def test_the_offscreen_size_hint_note_is_dropped_and_real_qt_warnings_still_show():
    done = _python(
        "from PyQt6 import QtCore, QtWidgets\n"
        "from gui.app import install_message_filter\n"
        "install_message_filter()\n"
        "app = QtWidgets.QApplication([])\n"
        "w = QtWidgets.QMainWindow(); w.resize(310, 170); w.show(); app.processEvents()\n"
        "w.setMinimumSize(90, 70); app.processEvents()  # offscreen Qt: 'does not support propagateSizeHints()'\n"
        "QtCore.qWarning('a real warning from Qt')\n")
    assert done.returncode == 0, done.stderr
    assert "a real warning from Qt" in done.stderr and "propagateSizeHints" not in done.stderr


def test_matplotlibs_info_notes_are_quiet_under_the_rtdecode_command_and_its_warnings_are_not(tmp_path):
    done = _python(
        "import logging, sys\n"
        "from rtdecode.cli import main\n"
        f"assert main(['config', 'template', {str(tmp_path / 'session.toml')!r}]) == 0\n"
        "import matplotlib; matplotlib.use('Agg'); import matplotlib.pyplot as plt\n"
        "plt.plot(['1', '2', '3'], [1, 3, 2])  # matplotlib.category logs an INFO note on numeric strings\n"
        "logging.getLogger('matplotlib.category').warning('a real matplotlib warning')\n"
        "logging.getLogger('rtdecode.demo').info('the demo still speaks')\n")
    assert done.returncode == 0, done.stderr
    assert "categorical units" not in done.stderr
    assert "a real matplotlib warning" in done.stderr and "the demo still speaks" in done.stderr
