"""Issue 36's trial on real processes: ``rtdecode session finalize`` and the files a killed ``rtdecode run`` left
unread in its watch folder; a restart with nothing new says "n/a" for its latencies.

Each test starts ``rtdecode run`` on ``rtdecode config template``'s configuration (test_run_boundaries' helpers),
writes the simulator's Siemens DICOM into the watch folder under the real export's names, and kills it.
"""

from __future__ import annotations

import re
import signal
import subprocess

import pytest
from test_run_boundaries import RTDECODE, Scanner, _config, _feed, _folder, _stored, _wait
from test_run_boundaries import run32 as run32  # noqa: F401 - the fixture, shared

from rtdecode.base.session import read_tsv

pytestmark = pytest.mark.slow  # real processes, about a minute


def _finalize(tmp_path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([RTDECODE, "session", "finalize", str(_folder(tmp_path).path), *extra], capture_output=True,
                          text=True, timeout=300)


def _ends(tmp_path) -> dict[int, str]:
    path = _folder(tmp_path).path / "run_ends.tsv"
    return {int(r["run"]): r["reason"] for r in read_tsv(path)} if path.exists() else {}


def test_finalize_keeps_open_a_killed_run_whose_files_wait_and_closes_it_once_a_restart_took_them(tmp_path, run32):
    """Finding 12: killed at volume 16; volumes 17-24 land while nothing watches. finalize leaves run 1 open in
    one line (the run, 8 files, the fix) and writes no BIDS for it; a restart takes them; finalize then closes
    it with nothing set aside. 4 more files left waiting are dropped only with --close-anyway, which says so.
    Before the fix finalize closed run 1 at once and the restart set volumes 17-24 aside."""
    config = _config(tmp_path, events=True)
    first = Scanner(tmp_path, config)
    _feed(tmp_path, run32, 7, range(16), pause=0.02)
    assert _wait(lambda: len(_stored(tmp_path, 1)) == 16, 60, first), first.output()
    first.stop(signal.SIGKILL)
    _feed(tmp_path, run32, 7, range(16, 24))  # the scanner goes on while nothing watches
    kept = _finalize(tmp_path)
    watch = tmp_path / "watch"
    assert kept.returncode == 1, kept.stdout + kept.stderr
    assert (f"run 1: left open: 8 file(s) of series 7 wait unread in {watch} (first: 001_000007_000016.dcm); "
            "restart rtdecode run to take them, then finalize (or give --close-anyway") in kept.stdout, kept.stdout
    assert 1 not in _ends(tmp_path) and "run 1: " not in kept.stdout.replace("run 1: left open", "")
    second = Scanner(tmp_path, config)
    assert _wait(lambda: len(_stored(tmp_path, 1)) == 24, 60, second), second.output()
    second.stop(signal.SIGKILL)
    closed = _finalize(tmp_path)
    assert closed.returncode == 0, closed.stdout + closed.stderr
    assert "run 1: closed (end-of-run betas: 3 trials)" in closed.stdout and re.search(r"^run 1: \d+ files$", closed.stdout, re.M)
    assert _ends(tmp_path) == {1: "closed by session finalize"} and _folder(tmp_path).rejected() == []


def _killed_after(tmp_path, run32, n: int):
    """A scanner side SIGKILLed once it stored the first ``n`` volumes of series 7 (run 1); its config."""
    config = _config(tmp_path)
    first = Scanner(tmp_path, config)
    _feed(tmp_path, run32, 7, range(n), pause=0.02)
    assert _wait(lambda: len(_stored(tmp_path, 1)) == n, 60, first), first.output()
    first.stop(signal.SIGKILL)
    return config


def test_finalize_close_anyway_says_what_it_drops(tmp_path, run32):
    """--close-anyway closes the run all the same and names the files it drops."""
    _killed_after(tmp_path, run32, 6)
    _feed(tmp_path, run32, 7, range(6, 10))
    done = _finalize(tmp_path, "--close-anyway")
    assert done.returncode == 0, done.stdout + done.stderr
    assert (f"; 4 file(s) of series 7 still waiting in {tmp_path / 'watch'} dropped: listed as not received; a "
            "later rtdecode run sets them aside") in done.stdout, done.stdout
    assert _ends(tmp_path) == {1: "closed by session finalize"}


def test_a_restart_with_nothing_new_says_n_a_for_its_latencies(tmp_path, run32):
    """Finding 13: a restart that processes nothing printed "median 0.0 ms, p99 0.0 ms"."""
    config = _killed_after(tmp_path, run32, 3)
    again = Scanner(tmp_path, config)
    assert _wait(lambda: "session sub-01" in again.output(), 60, again), again.output()
    assert again.stop(signal.SIGTERM) == 0, again.output()
    out = again.output()
    assert "processed 0 volumes" in out and "file closed -> masked vector: n/a (no volume processed)" in out, out


def test_session_help_labels_each_option_with_the_action_that_takes_it():
    """Finding 8: --runs, --tr, --gallery and --config carried no label in ``session finalize --help``."""
    out = subprocess.run([RTDECODE, "session", "finalize", "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    text = re.sub(r"\s+", " ", out.stdout.split("options:")[1])
    helps = dict(re.findall(r"(--[a-z-]+)(?: [A-Z_.\[\] ]+?)? (finalize and import|finalize|import):", text))
    options = set(re.findall(r"(?<![\w-])(--[a-z][a-z-]+)", text)) - {"--help"}
    assert options == set(helps), (sorted(options - set(helps)), text)
    assert {k: helps[k] for k in ("--runs", "--gallery", "--config", "--close-anyway", "--tr", "--mask")} == {
        "--runs": "finalize", "--gallery": "finalize", "--config": "finalize", "--close-anyway": "finalize",
        "--tr": "finalize and import", "--mask": "import"}
