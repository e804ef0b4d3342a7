"""One voxel space per session, and a run that will give no betas announced (issue 27, defects 1 and 8).

Real processes throughout: ``rtdecode config template`` gives the configuration (only its paths and
ports changed, unless a test says otherwise), ``rtdecode simulate run`` writes each run as DICOM into
the watch folder, and ``rtdecode run`` picks them up, is interrupted (Ctrl-C) and started again.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from gui.state import ConsoleState
from rtdecode.base.session import SessionFolder, read_tsv
from rtdecode.cli import main
from rtdecode.wire.sockets import Subscriber

from conftest import config_template, free_port, wait_until

CLI = [sys.executable, "-m", "rtdecode.cli"]
SHAPE = ["--shape", "32x36x28", "--voxel-mm", "5"]  # a small head: 192 volumes are quick to write and process


def _paths(tmp_path: Path, **glm) -> dict[str, dict[str, object]]:
    (tmp_path / "watch").mkdir(exist_ok=True)
    return {"session": {"root": str(tmp_path / "sessions")},
            "scanner": {"watch_dir": str(tmp_path / "watch")},
            "network": {"events_port": free_port(), "betas_port": free_port(), "results_port": free_port(),
                        "control_port": free_port()},
            "glm": glm}


class Scanner:
    """``rtdecode run`` in its own process, its output in a log file; stopped as an operator does (Ctrl-C)."""

    def __init__(self, config: Path, log: Path) -> None:
        self.log = log
        start = log.stat().st_size if log.exists() else 0  # the same log across restarts: this start's lines
        self._out = open(log, "a")
        self.proc = subprocess.Popen([*CLI, "run", "--config", str(config)], stdout=self._out,
                                     stderr=subprocess.STDOUT)
        assert _wait(lambda: "watching" in log.read_text()[start:] or self.proc.poll() is not None, 120)
        assert self.proc.poll() is None, log.read_text()[-3000:]

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(timeout=120)
        finally:
            self._out.close()


_wait = wait_until


def _simulate(tmp_path: Path, run: int, *extra: str, wait: bool = True) -> subprocess.Popen:
    """The scanner writing run ``run`` into the watch folder as DICOM (a small head, 100 times TR pace)."""
    proc = subprocess.Popen([*CLI, "simulate", "run", "--out", str(tmp_path / "watch"), "--truth", str(tmp_path / "truth"),
                             "--run", str(run), *SHAPE, "--speedup", "100", "--seed", "1", *extra],
                            stdout=subprocess.DEVNULL)
    if wait:
        assert proc.wait(timeout=600) == 0
    return proc


def _ended(folder: SessionFolder, run: int, trials: int = 63) -> bool:
    """The run ended: each trial's end-of-run beta is stored (its BIDS copy follows in the background)."""
    return len(read_tsv(folder.derivatives / f"{folder.prefix(run)}_desc-endofrun_betas.tsv")) == trials


def _mask(path: Path) -> np.ndarray:
    return np.asarray(nib.load(path).dataobj) > 0


@pytest.mark.slow
@pytest.mark.timeout(600)  # about a minute on an idle 2-core machine; more when others share it
def test_three_runs_on_the_template_defaults_give_betas_in_one_voxel_space_across_a_restart(tmp_path):
    """On the main of round 2, run 2 logged 'GLM failed ... operands could not be broadcast' and gave no betas."""
    config = config_template(CLI, tmp_path, _paths(tmp_path, events=str(tmp_path / "truth" / "series-{series:03d}_events.tsv")))
    folder = SessionFolder(tmp_path / "sessions", "01", "01")
    log = tmp_path / "scanner.log"
    scanner = Scanner(config, log)
    try:
        for run in (1, 2, 3):
            if run == 3:  # a restart between runs: the next run is sampled in the same voxels
                assert scanner.stop() in (0, 130)
                scanner = Scanner(config, log)
            _simulate(tmp_path, run)
            assert _wait(lambda r=run: _ended(folder, r) or "no betas" in log.read_text()
                         or "GLM failed" in log.read_text(), 240), f"run {run} did not end:\n{log.read_text()[-3000:]}"
            assert _ended(folder, run), f"run {run} gave no betas:\n{log.read_text()[-3000:]}"
    finally:
        scanner.stop()  # (the BIDS copies are written before it exits)
    text = log.read_text()
    assert "GLM failed" not in text and "Traceback" not in text, text[-3000:]
    space = folder.derivatives / "sub-01_ses-01_task-rt_desc-brain_mask.nii"
    session_mask = _mask(space)
    n = int(session_mask.sum())
    assert json.loads(space.with_suffix(".json").read_text())["n_voxels"] == n > 1000
    bids = tmp_path / "sessions" / "derivatives" / "rtdecode" / "sub-01" / "ses-01" / "func"
    for run in (1, 2, 3):
        store = folder.run_store(run)
        np.testing.assert_array_equal(_mask(store.mask), session_mask, err_msg=f"run {run}'s mask")
        assert store.load()[1].shape == (192, n)
        for version in ("realtime", "endofrun"):
            prefix = folder.derivatives / f"{folder.prefix(run)}_desc-{version}_betas"
            assert json.loads(prefix.with_suffix(".json").read_text())["n_voxels"] == n
            assert len(read_tsv(prefix.with_suffix(".tsv"))) == 63, f"run {run} {version}"
            image = bids / f"{folder.prefix(run)}_space-boldref_desc-{version}_betas.nii.gz"
            assert image.exists(), f"run {run}: no BIDS {version} betas"
            assert nib.load(image).shape[-1] == 63


def test_a_mask_or_saved_statistics_of_another_voxel_set_is_refused_in_one_line(tmp_path):
    """Before: a mask given mid-session was taken silently; statistics of another size broke at the first beta."""
    events = tmp_path / "events.tsv"
    config = config_template(CLI, tmp_path, _paths(tmp_path, events=str(events)))
    folder = SessionFolder(tmp_path / "sessions", "01", "01")
    log = tmp_path / "scanner.log"
    scanner = Scanner(config, log)
    try:
        _simulate(tmp_path, 1, "--rest", "--volumes", "4")
        assert _wait(lambda: len(read_tsv(folder.run_store(1).confounds)) == 4, 120), log.read_text()[-3000:]
    finally:
        scanner.stop()
    n = int(_mask(folder.run_store(1).mask).sum())
    # A session recorded before the space was stored (or stopped between run 1's mask and the space):
    # the next start takes run 1's stored mask as the session's.
    space = folder.derivatives / "sub-01_ses-01_task-rt_desc-brain_mask"
    for name in (".json", ".nii"):
        space.with_suffix(name).unlink()
    # A mask file given in the middle of the session: the scanner side does not start, and says why in one line.
    box = np.zeros((32, 36, 28), np.uint8)
    box[10:30, 10:30, 10:20] = 1
    affine = nib.load(folder.run_store(1).boldref).affine
    nib.save(nib.Nifti1Image(box, affine), tmp_path / "roi.nii")
    text = config.read_text()
    config.write_text(text.replace('mask = ""', f'mask = "{tmp_path / "roi.nii"}"'))
    out = subprocess.run([*CLI, "run", "--config", str(config), "--idle-timeout", "5"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 2, out.stderr[-3000:]
    errors = [line for line in out.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and "Traceback" not in out.stderr, out.stderr
    assert f"preprocess.mask: {tmp_path / 'roi.nii'} selects 4000 voxels, but this session's voxel space has {n}" \
        in errors[0]
    np.testing.assert_array_equal(_mask(space.with_suffix(".nii")), _mask(folder.run_store(1).mask))
    # Calibration z-scores of another size: that run gives no betas, in one line naming both counts.
    stats = tmp_path / "model"
    stats.mkdir()
    np.save(stats / "zscore_mean.npy", np.zeros(7, np.float32))
    np.save(stats / "zscore_std.npy", np.ones(7, np.float32))
    events.write_text("onset\tduration\timage\n0.0\t1.0\tsim-00001\n")
    config.write_text(text.replace('zscore = "running"', 'zscore = "calibration"')
                      .replace('zscore_stats = ""', f'zscore_stats = "{stats}"'))
    before = len(log.read_text())
    Scanner(config, log).stop()
    text = log.read_text()[before:]
    refused = [line for line in text.splitlines() if "no betas" in line]
    assert refused and "Traceback" not in text, text
    assert f"glm.zscore_stats ({stats}) holds statistics of 7 voxels, but run 1 has {n}" in refused[0]


def test_config_check_names_each_run_that_has_no_events_table(tmp_path, capsys):
    tables = tmp_path / "events"
    tables.mkdir()
    config = config_template(CLI, tmp_path, _paths(tmp_path))

    def check(events: str | None) -> list[str]:
        if events is not None:
            config.write_text(re.sub(r'(?m)^events = ".*"$', f"events = {json.dumps(events)}", config.read_text()))
        assert main(["config", "check", str(config)]) == 0
        return [line for line in capsys.readouterr().out.splitlines() if "events" in line]

    assert check(None) == ["warning: glm.events is not set: every run gives volumes only, no betas"]
    fixed = str(tables / "all.tsv")
    assert check(fixed) == [f"warning: glm.events: no events table at {fixed}: every run gives volumes only, no betas"]
    by_run = str(tables / "run-{run:02d}_series-{series}.tsv")
    assert check(by_run) == [f"warning: glm.events: run 1 has no events table (expected {tables}/run-01_series-"
                             "{series}.tsv): it gives volumes only, no betas"]
    for name in ("run-01_series-7.tsv", "run-03_series-9.tsv"):
        (tables / name).write_text("onset\tduration\timage\n0.0\t1.0\tsim-00001\n")
    assert check(by_run) == [f"warning: glm.events: run 2 has no events table (expected {tables}/run-02_series-"
                             "{series}.tsv): it gives volumes only, no betas"]
    by_series = str(tables / "series-{series:03d}.tsv")
    assert check(by_series) == [f"warning: glm.events: no events table for any series (expected e.g. "
                                f"{tables}/series-001.tsv): every run gives volumes only, no betas"]
    (tables / "series-007.tsv").write_text("onset\tduration\timage\n0.0\t1.0\tsim-00001\n")
    assert check(by_series) == []


def _console_until(sub: Subscriber, cond, seconds: float = 90) -> ConsoleState:
    """A console state fed by ``sub`` until ``cond(state)`` or the time is up (then the subscriber is closed)."""
    state = ConsoleState()
    try:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not cond(state):
            msg = sub.recv(timeout_ms=100)
            if msg is not None:
                state.apply(msg, "scanner")
    finally:
        sub.close()
    return state


def test_a_run_without_its_events_table_shows_no_betas_on_its_row_after_a_reopen_and_a_restart(tmp_path, qtbot):
    """Before: the console showed 'ended (complete)' and only the scanner side's log said why no betas came."""
    from gui.panels import RunsTable

    expected = tmp_path / "events" / "series-001.tsv"
    paths = _paths(tmp_path, events=str(tmp_path / "events" / "series-{series:03d}.tsv"))
    config = config_template(CLI, tmp_path, paths)
    address = f"tcp://127.0.0.1:{paths['network']['events_port']}"
    log = tmp_path / "scanner.log"
    scanner = Scanner(config, log)
    def warned(s: ConsoleState) -> bool:
        return 1 in s.run_warnings and 1 in s.runs and s.runs[1].ended != ""

    def check(console: ConsoleState, when: str) -> ConsoleState:
        assert str(expected) in console.run_warnings.get(1, ""), f"{when}: {log.read_text()[-3000:]}"
        assert any(e.severity == "warning" and str(expected) in e.text for e in console.log), when
        assert console.runs[1].ended == "ended (complete)" and console.runs[1].received == 192, when
        return console

    try:
        live = Subscriber(address)  # a console open before the run
        time.sleep(0.5)  # (a subscription takes a moment to reach the publisher)
        writer = _simulate(tmp_path, 1, "--rest", wait=False)  # a whole run: more events than the replay's latest 200
        check(_console_until(live, warned), "live")
        assert writer.wait(timeout=600) == 0
        check(_console_until(Subscriber(address), warned), "reopened")  # the console closed and opened again
    finally:
        assert scanner.stop() in (0, 130)
    scanner = Scanner(config, log)  # the scanner side again: the run resumes from the session folder
    try:
        console = check(_console_until(Subscriber(address), warned), "after a restart")
    finally:
        scanner.stop()
    table = RunsTable(console)
    qtbot.addWidget(table)
    table.draw()
    state = table.item(0, RunsTable.COLUMNS.index("state"))
    assert state.text().endswith("NO BETAS") and str(expected) in state.toolTip()
