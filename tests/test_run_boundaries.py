"""Run boundaries on real processes: no volume or beta is lost, whatever order the files arrive in.

Each test starts ``rtdecode run`` as its own process on a configuration made by ``rtdecode config
template`` (only paths, ports, the run length and the events table changed), writes Siemens DICOM into
its watch folder as the scanner would, and stops it with SIGKILL, SIGINT or SIGTERM.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_scanner_side import PATTERN, _dicom_bytes, _put

from rtdecode.base.session import SessionFolder, read_tsv
from rtdecode.simulator.scanner import format_name, simulate_run

from conftest import SMALL_SHAPE

pytestmark = pytest.mark.slow  # real processes, about a minute in all

RTDECODE = str(Path(sys.executable).with_name("rtdecode"))
N = 32  # volumes per run
ONSETS = (0.0, 6.0, 12.0)  # three trials in the first 16 volumes (TR 1.5 s)


@pytest.fixture(scope="module")
def run32():
    return simulate_run(N, shape=SMALL_SHAPE, voxel_mm=6.0, max_mm=1.0, max_deg=1.0, seed=11)


def _set(text: str, section: str, key: str, value: str) -> str:
    """The template's line ``key = ...`` in ``[section]`` set to ``value`` (a TOML literal)."""
    out, current, done = [], "", False
    for line in text.splitlines():
        if line.startswith("["):
            current = line.strip("[] ")
        elif current == section and line.split("=")[0].strip() == key:
            line, done = f"{key} = {value}", True
        out.append(line)
    assert done, f"{section}.{key} is not in the template"
    return "\n".join(out) + "\n"


def _config(tmp_path: Path, events: bool = False) -> Path:
    """``rtdecode config template``'s output with this test's folders, free ports and 32-volume runs."""
    path = tmp_path / "session.toml"
    subprocess.run([RTDECODE, "config", "template", str(path)], check=True, timeout=60, capture_output=True)
    text = path.read_text()
    for section, key, value in [("session", "root", tmp_path / "sessions"), ("scanner", "watch_dir", tmp_path / "watch"),
                                ("scanner", "quarantine_dir", tmp_path / "rejected")]:
        text = _set(text, section, key, f'"{value}"')
    text = _set(text, "scanner", "volumes_per_run", str(N))
    text = _set(text, "network", "events_port", "0")
    text = _set(text, "network", "control_port", "0")
    if events:
        folder = tmp_path / "events"
        folder.mkdir()
        for series in (7, 8):
            rows = [f"{o:.1f}\t1.0\tsim-{series * 3 + i:05d}" for i, o in enumerate(ONSETS)]
            (folder / f"series-{series:03d}.tsv").write_text("onset\tduration\timage\n" + "\n".join(rows) + "\n")
        text = _set(text, "glm", "events", f'"{folder}/series-{{series:03d}}.tsv"')
    path.write_text(text)
    (tmp_path / "watch").mkdir()
    return path


class Scanner:
    """``rtdecode run --config CONFIG`` in its own process, its output in a log file."""

    def __init__(self, tmp_path: Path, config: Path) -> None:
        self.log_path = tmp_path / f"run-{time.monotonic_ns()}.log"
        self.log = open(self.log_path, "w")
        env = {**os.environ, "RTDECODE_CACHE": str(tmp_path / "cache")}
        self.proc = subprocess.Popen([RTDECODE, "run", "--config", str(config)], stdout=self.log,
                                     stderr=subprocess.STDOUT, env=env)

    def stop(self, sig: int, timeout: float = 90.0) -> int:
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(timeout=10)
            self.log.close()

    def output(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return self.log_path.read_text()


def _folder(tmp_path: Path) -> SessionFolder:
    return SessionFolder(tmp_path / "sessions", "01", "01")


def _rows(tmp_path: Path, run: int) -> list[dict[str, str]]:
    return read_tsv(_folder(tmp_path).run_store(run).confounds)


def _wait(cond, seconds: float, scanner: Scanner | None = None) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if cond():
            return True
        assert scanner is None or scanner.proc.poll() is None, f"rtdecode run died:\n{scanner.output()}"
        time.sleep(0.05)
    return cond()


def _feed(tmp_path: Path, run, series: int, indices, pause: float = 0.0) -> None:
    for t in indices:
        _put(tmp_path / "watch", format_name(PATTERN, series, t), _dicom_bytes(tmp_path, run, t, series=series))
        time.sleep(pause)


def _stored(tmp_path: Path, run: int) -> list[int]:
    return [int(r["volume"]) for r in _rows(tmp_path, run) if r["status"] == "ok"]


@pytest.mark.parametrize("gap", [None, 25])
def test_a_restart_across_a_series_boundary_stores_the_rest_of_the_interrupted_run(tmp_path, run32, gap):
    """Defect 2: killed at volume 20; 20-31 and the next series' first files land; the restart stores all of
    them, in order. On the issue-27 main 20 of 32 were stored and the rest set aside as "arrived but run 1
    ended (new series)": ScannerSide.step took every waiting file and _run_for ended the run at series 8.
    With volume 25 never written, 26-31 wait for the missing timeout to declare it, and series 8 waits too."""
    config = _config(tmp_path)
    first = Scanner(tmp_path, config)
    _feed(tmp_path, run32, 7, range(20), pause=0.02)
    assert _wait(lambda: len(_stored(tmp_path, 1)) == 20, 60, first), first.output()
    first.stop(signal.SIGKILL)
    _feed(tmp_path, run32, 7, [t for t in range(20, N) if t != gap])  # the scanner goes on while nothing watches
    _feed(tmp_path, run32, 8, range(3))
    second = Scanner(tmp_path, config)
    try:
        assert _wait(lambda: len(_stored(tmp_path, 2)) == 3, 60, second), second.output()
    finally:
        second.stop(signal.SIGTERM)
    assert [int(r["volume"]) for r in _rows(tmp_path, 1)] == list(range(N))
    assert [int(r["volume"]) for r in _rows(tmp_path, 1) if r["status"] != "ok"] == ([gap] if gap else [])
    assert _stored(tmp_path, 2) == [0, 1, 2]
    assert _folder(tmp_path).rejected() == []


def test_the_next_series_landing_before_the_last_volume_ends_nothing_early(tmp_path, run32):
    """Defect 2 without a restart: series 8's first file lands before series 7's last volume. On the
    issue-27 main run 1 ended at series 8's file and volume 31 was set aside ("which has ended")."""
    config = _config(tmp_path)
    scanner = Scanner(tmp_path, config)
    try:
        _feed(tmp_path, run32, 7, range(N - 1), pause=0.02)
        assert _wait(lambda: len(_stored(tmp_path, 1)) == N - 1, 60, scanner), scanner.output()
        _feed(tmp_path, run32, 8, range(1))
        _feed(tmp_path, run32, 7, range(N - 1, N))
        _feed(tmp_path, run32, 8, range(1, 3))
        assert _wait(lambda: len(_stored(tmp_path, 2)) == 3, 60, scanner), scanner.output()
    finally:
        scanner.stop(signal.SIGTERM)
    assert _stored(tmp_path, 1) == list(range(N)) and _stored(tmp_path, 2) == [0, 1, 2]
    assert _folder(tmp_path).rejected() == []


def test_a_stray_series_or_index_is_set_aside_and_the_run_goes_on(tmp_path, run32):
    """Defect 3: an unknown older series and a copy of a volume under index 1000, mid-run, are set aside with
    their reasons; the run goes on to 32 of 32 with no missing row. On the issue-27 main series 5 ended run 1
    at 16 volumes ("new series"), and index 1000 gave 988 missing rows."""
    config = _config(tmp_path)
    scanner = Scanner(tmp_path, config)
    watch = tmp_path / "watch"
    try:
        _feed(tmp_path, run32, 7, range(16), pause=0.02)
        assert _wait(lambda: len(_stored(tmp_path, 1)) == 16, 60, scanner), scanner.output()
        _put(watch, format_name(PATTERN, 5, 3), _dicom_bytes(tmp_path, run32, 3, series=5))
        _put(watch, format_name(PATTERN, 7, 1000), _dicom_bytes(tmp_path, run32, 3, series=7))
        assert _wait(lambda: len(_folder(tmp_path).rejected()) == 2, 30, scanner), scanner.output()
        _feed(tmp_path, run32, 7, range(16, N), pause=0.02)
        _feed(tmp_path, run32, 8, range(2))  # the next run begins ...
        assert _wait(lambda: len(_stored(tmp_path, 2)) == 2, 60, scanner), scanner.output()
        _put(watch, format_name(PATTERN, 7, 40), _dicom_bytes(tmp_path, run32, 4, series=7))  # ... an ended run's file
        assert _wait(lambda: len(_folder(tmp_path).rejected()) == 3, 30, scanner), scanner.output()
        _feed(tmp_path, run32, 8, range(2, 4))
        assert _wait(lambda: len(_stored(tmp_path, 2)) == 4, 60, scanner), scanner.output()
    finally:
        scanner.stop(signal.SIGTERM)
    rows = _rows(tmp_path, 1)
    assert [int(r["volume"]) for r in rows] == list(range(N)) and all(r["status"] == "ok" for r in rows)
    assert [(r["run"], r["series"]) for r in _folder(tmp_path).runs()] == [("1", "7"), ("2", "8")]
    reasons = {r["file"]: r["reason"] for r in _folder(tmp_path).rejected()}
    assert "series 5 is older than series 7 of run 1" in reasons[format_name(PATTERN, 5, 3)]
    assert "volume index 1000 is beyond scanner.volumes_per_run (32)" in reasons[format_name(PATTERN, 7, 1000)]
    assert "volume index 40 is beyond" in reasons[format_name(PATTERN, 7, 40)]
    kept = sorted(p.name.split("_", 1)[1] for p in (tmp_path / "rejected").iterdir())
    assert kept == sorted(reasons)  # set aside, never deleted


def _endofrun(tmp_path: Path, run: int) -> list[dict[str, str]]:
    folder = _folder(tmp_path)
    return read_tsv(folder.derivatives / f"{folder.prefix(run)}_desc-endofrun_betas.tsv")


def _bids_bold(tmp_path: Path, run: int) -> Path:
    folder = _folder(tmp_path)
    return folder.path / "func" / f"{folder.prefix(run)}_bold.nii.gz"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_short_last_run_is_closed_when_rtdecode_run_is_stopped(tmp_path, run32, sig):
    """Defect 4: the day's last run has 16 of 32 volumes; Ctrl-C (or SIGTERM) closes it: end-of-run betas, BIDS,
    and a restart does not take it up again. On the issue-27 main it had neither, and resumed as open."""
    config = _config(tmp_path, events=True)
    scanner = Scanner(tmp_path, config)
    _feed(tmp_path, run32, 7, range(16), pause=0.02)
    assert _wait(lambda: len(_stored(tmp_path, 1)) == 16, 60, scanner), scanner.output()
    assert scanner.stop(sig) == 0, scanner.output()
    assert [int(r["trial"]) for r in _endofrun(tmp_path, 1)] == [0, 1, 2], scanner.output()
    assert _bids_bold(tmp_path, 1).exists(), scanner.output()
    assert [r["reason"] for r in read_tsv(_folder(tmp_path).path / "run_ends.tsv")] == ["series ended; closed at shutdown"]
    again = Scanner(tmp_path, config)
    try:
        _feed(tmp_path, run32, 7, range(16, 17))  # a straggler of the closed series
        assert _wait(lambda: len(_folder(tmp_path).rejected()) == 1, 30, again), again.output()
    finally:
        again.stop(signal.SIGTERM)
    assert "resuming run 1 (series 7): 16 volumes already stored; series ended; closed at shutdown" in again.output()
    assert len(_stored(tmp_path, 1)) == 16


def test_session_finalize_closes_a_killed_short_run_with_its_end_of_run_betas(tmp_path, run32):
    """Defect 4: a short last run whose process was SIGKILLed: ``rtdecode session finalize`` computes its
    end-of-run betas, then writes it as BIDS with them. On the issue-27 main it wrote BIDS without them."""
    config = _config(tmp_path, events=True)
    scanner = Scanner(tmp_path, config)
    _feed(tmp_path, run32, 7, range(16), pause=0.02)
    assert _wait(lambda: len(_stored(tmp_path, 1)) == 16, 60, scanner), scanner.output()
    assert _wait(lambda: len(read_tsv(_folder(tmp_path).derivatives /
                                      f"{_folder(tmp_path).prefix(1)}_desc-realtime_betas.tsv")) == 3, 30, scanner)
    scanner.stop(signal.SIGKILL)
    assert _endofrun(tmp_path, 1) == []
    live = Scanner(tmp_path, config)  # while an rtdecode run holds the session, finalize refuses in one line
    try:
        assert _wait(lambda: "session sub-01" in live.output(), 60, live), live.output()
        refused = subprocess.run([RTDECODE, "session", "finalize", str(_folder(tmp_path).path)], capture_output=True,
                                 text=True, timeout=300)
    finally:
        live.stop(signal.SIGKILL)
    assert refused.returncode == 2 and "in use by another writer" in refused.stderr, refused.stdout + refused.stderr
    assert _endofrun(tmp_path, 1) == [] and not _bids_bold(tmp_path, 1).exists()
    done = subprocess.run([RTDECODE, "session", "finalize", str(_folder(tmp_path).path)], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "run 1: closed (end-of-run betas: 3 trials)" in done.stdout
    assert [int(r["trial"]) for r in _endofrun(tmp_path, 1)] == [0, 1, 2]
    folder = _folder(tmp_path)
    assert list((tmp_path / "sessions" / "derivatives").rglob(f"{folder.prefix(1)}_space-*_desc-endofrun_betas.nii.gz"))
    assert _bids_bold(tmp_path, 1).exists()
    # A second finalize changes nothing: the run is closed once.
    again = subprocess.run([RTDECODE, "session", "finalize", str(folder.path)], capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 0 and "closed" not in again.stdout
    assert len(_endofrun(tmp_path, 1)) == 3
