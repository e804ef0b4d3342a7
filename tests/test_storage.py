"""One writer per folder, full storage and quarantine names, on real processes (`rtdecode run`, `rtdecode decode`).

Full storage without root or a mount: the child process runs under RLIMIT_FSIZE (Python ignores SIGXFSZ),
so a write that would make a file larger than the limit fails with EFBIG, as a full disk fails with
ENOSPC; both reach the same handling (rtdecode.base.storage.FULL). What this does not show: a disk that fills
for every file at once, or a read-only mount (a test as root cannot make one without privileges).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from test_scanner_side import PATTERN, _dicom_bytes, _put

from gui.state import ConsoleState
from rtdecode.base.config import config_from_dict, config_to_toml
from rtdecode.base.session import SessionFolder, read_tsv
from rtdecode.simulator.scanner import format_name
from rtdecode.wire.reliable import BetaSender, beta_message
from rtdecode.wire.sockets import Subscriber

from conftest import free_port, wait_until

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

RTDECODE = [sys.executable, "-m", "rtdecode.cli"]
# `python -c` that sets RLIMIT_FSIZE to its first argument, then runs the rtdecode command in the rest.
LIMITED = ("import resource, sys; limit = int(sys.argv.pop(1)); "
           "resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)); "
           "from rtdecode.cli import main; sys.exit(main(sys.argv[1:]))")
N_VOXELS = 53
SESSION = {"subject": "01", "session": "01", "session_uid": "d" * 32}


_wait = wait_until


def _config(tmp_path: Path, name: str = "session.toml", **changes) -> Path:
    """`rtdecode config template`'s own output, with a test's folders, free ports and its changes."""
    path = tmp_path / name
    subprocess.run([*RTDECODE, "config", "template", str(path)], check=True, timeout=60)
    raw = tomllib.loads(path.read_text())
    (tmp_path / "watch").mkdir(exist_ok=True)
    base = {"session": {"root": str(tmp_path / "sessions")},
            "scanner": {"watch_dir": str(tmp_path / "watch"), "volumes_per_run": 12, "poll_interval_s": 0.05,
                        "missing_timeout_s": 60.0, "quarantine_dir": str(tmp_path / "rejected")},
            "network": {"events_port": free_port(), "control_port": free_port()}}
    for section, values in [*base.items(), *changes.items()]:
        raw[section].update(values)
    path.write_text(config_to_toml(config_from_dict(raw, base_dir=tmp_path)))
    return path


def _store(tmp_path: Path):
    return SessionFolder(tmp_path / "sessions", "01", "01").run_store(1)


def _rows(tmp_path: Path) -> list[dict[str, str]]:
    return read_tsv(_store(tmp_path).confounds)


def _feed(tmp_path: Path, run, indices) -> None:
    for t in indices:
        _put(tmp_path / "watch", format_name(PATTERN, 7, t), _dicom_bytes(tmp_path, run, t))


def _start(config: Path, log: Path) -> subprocess.Popen:
    with open(log, "w") as fh:
        return subprocess.Popen([*RTDECODE, "run", "--config", str(config), "--quiet"], stdout=fh,
                                stderr=subprocess.STDOUT)


def _stop(proc: subprocess.Popen, sig=signal.SIGKILL) -> None:
    """End a process the test is done with (SIGKILL: a graceful stop waits for the run's last volumes)."""
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def _one_line(err: str) -> str:
    """The one line a process said besides its INFO log lines (set-up notes such as its threads)."""
    lines = [ln for ln in err.splitlines() if ln.strip() and " INFO " not in ln]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_a_second_rtdecode_run_on_one_session_is_refused_in_one_line_and_the_first_stores_each_volume_once(
        tmp_path, small_run):
    """The second start has its own ports, so without the lock it stored every volume a second time."""
    config = _config(tmp_path)
    other = _config(tmp_path, "other.toml")  # the same session folder, other ports
    session = SessionFolder(tmp_path / "sessions", "01", "01").path
    first = _start(config, tmp_path / "first.log")
    third = None
    try:
        _feed(tmp_path, small_run, range(4))
        assert _wait(lambda: len(_rows(tmp_path)) == 4, 60), (tmp_path / "first.log").read_text()
        second = subprocess.Popen([*RTDECODE, "run", "--config", str(other), "--quiet"], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        try:
            out, err = second.communicate(timeout=60)
        finally:
            _stop(second)
        line = _one_line(err)
        assert second.returncode == 2 and out == ""  # refused before it bound a socket or said "watching"
        assert str(session) in line and f"pid {first.pid}, rtdecode run" in line
        _feed(tmp_path, small_run, range(4, 8))
        assert _wait(lambda: len(_rows(tmp_path)) == 8, 60)
        first.send_signal(signal.SIGKILL)  # the kernel drops the lock: a restart takes it at once
        first.wait(timeout=10)
        third = _start(other, tmp_path / "third.log")
        _feed(tmp_path, small_run, range(8, 12))
        assert _wait(lambda: len(_rows(tmp_path)) == 12, 60), (tmp_path / "third.log").read_text()
    finally:
        _stop(first)
        if third is not None:
            _stop(third)
    rows, vectors = _store(tmp_path).load()
    assert [int(r["volume"]) for r in rows] == list(range(12)) and len(vectors) == 12
    assert len(list(_store(tmp_path).raw_dir.glob("vol-*.nii"))) == 12


def test_two_rejections_of_one_name_within_a_second_keep_both_copies(tmp_path):
    """Quarantine names carried seconds only: a second rejection of a name in the same second replaced the first."""
    config = _config(tmp_path)
    proc = _start(config, tmp_path / "run.log")
    name = format_name(PATTERN, 7, 3)
    folder = SessionFolder(tmp_path / "sessions", "01", "01")
    try:
        for k in range(6):  # sizes differ, so the watcher offers the name again at once
            (tmp_path / "watch" / name).write_bytes(b"x" * (1000 + k))
            assert _wait(lambda: not (tmp_path / "watch" / name).exists(), 30), (tmp_path / "run.log").read_text()
        assert _wait(lambda: len(folder.rejected()) == 6, 30)
    finally:
        _stop(proc)
    kept = sorted((tmp_path / "rejected").glob(f"*_{name}"))
    assert sorted(p.stat().st_size for p in kept) == [1000 + k for k in range(6)]
    assert all("not a DICOM file" in r["reason"] and "moved to" in r["reason"] for r in folder.rejected())


def test_a_scanner_side_whose_storage_fills_stops_in_one_line_and_a_restart_stores_the_rest(tmp_path, small_run):
    """On the old main the scanner side died with an OSError traceback."""
    config = _config(tmp_path)
    _feed(tmp_path, small_run, range(12))  # all waiting in the watch folder before it starts
    limit = 200_000  # a raw volume (62,752 bytes) fits; the run's masked vectors (12 x 4 bytes x ~8,000 voxels) do not
    full = subprocess.run([sys.executable, "-c", LIMITED, str(limit), "run", "--config", str(config), "--quiet"],
                          capture_output=True, text=True, timeout=180)
    errors = [ln for ln in full.stderr.splitlines() if "ERROR" in ln or "error" in ln or "Traceback" in ln]
    assert full.returncode == 2 and len(errors) == 1 and "Traceback" not in full.stderr, full.stderr
    session = SessionFolder(tmp_path / "sessions", "01", "01").path
    assert errors[0].startswith(f"rtdecode: error: storage: a write in {session} failed")
    assert "File too large" in errors[0] and "the scanner side stopped" in errors[0]
    store = _store(tmp_path)
    before = read_tsv(store.confounds)  # as the stopped process left them: no repair yet
    n_vox = int(np.asarray(store.load_reference()[1].dataobj).sum())
    kept = np.fromfile(store.vectors, "<f4")[: len(before) * n_vox].reshape(len(before), n_vox)
    assert 0 < len(before) < 12  # it stopped mid-run
    proc = _start(config, tmp_path / "restart.log")
    try:
        assert _wait(lambda: len(_rows(tmp_path)) == 12, 90), (tmp_path / "restart.log").read_text()
    finally:
        _stop(proc)
    rows, vectors = store.load()
    assert [int(r["volume"]) for r in rows] == list(range(12)) and vectors.shape == (12, n_vox)
    assert rows[: len(before)] == before and np.array_equal(vectors[: len(before)], kept)  # nothing before lost
    assert len(list(store.raw_dir.glob("vol-*.nii"))) == 12


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    import torch

    from models.folder import write_model_folder
    from models.mindeye2.config import standin_config
    from models.mindeye2.model import MindEye2
    from rtdecode.decoder.core import Decoder
    from rtdecode.gallery.builtin import StimulusSet

    torch.manual_seed(0)
    folder = write_model_folder(MindEye2(standin_config(["sim01"], [N_VOXELS], hidden=32)),
                                tmp_path_factory.mktemp("model"), "sim01")
    gallery = tmp_path_factory.mktemp("gallery")
    StimulusSet().save(gallery, range(12))
    Decoder.from_folder(folder, gallery)  # the gallery's embedding cache, written before any limit
    return folder, gallery


def _decode(model, out: Path, port: int, limit: int | None = None) -> list[str]:
    folder, gallery = model
    args = ["decode", "--model", str(folder), "--gallery", str(gallery), "--out", str(out),
            "--betas", f"tcp://127.0.0.1:{port}", "--results", "tcp://127.0.0.1:0"]
    return [sys.executable, "-c", LIMITED, str(limit), *args] if limit else [*RTDECODE, *args]


def _pump(sender: BetaSender, done, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not done():
        sender.pump(timeout_ms=50)


def test_a_decoder_whose_storage_fills_stops_in_one_line_and_a_restart_decodes_the_rest_once(tmp_path, model):
    """On the old main the decoder died with an OSError traceback; a second decoder on one --out ran beside it."""
    out, port = tmp_path / "out", free_port()
    rng = np.random.default_rng(5)
    sender = BetaSender(f"tcp://127.0.0.1:{port}", tmp_path / "acked.keys", resend_s=0.5)
    betas = [beta_message(1, t, rng.normal(size=N_VOXELS), SESSION, image=f"sim-{t:05d}") for t in range(6)]
    for beta in betas[:3]:
        sender.send(beta)
    full = subprocess.Popen(_decode(model, out, port, limit=12_000), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)  # token files fit; a reconstruction's PNG does not
    restart = None
    try:
        _pump(sender, lambda: full.poll() is not None, 120)
        _, err = full.communicate(timeout=30)
        errors = [ln for ln in err.splitlines() if "ERROR" in ln or "error" in ln or "Traceback" in ln]
        assert full.returncode == 2 and len(errors) == 1 and "Traceback" not in err, err
        assert errors[0].startswith("rtdecode: error: storage: ") and str(out) in errors[0]
        assert "File too large" in errors[0] and "the decoder stopped" in errors[0]
        table = out / "sub-01" / "ses-01" / "results.tsv"
        before = table.read_text().splitlines()
        assert 2 <= len(before) <= 4 and not list((out / "sub-01" / "ses-01" / "images").glob("*.png"))
        for beta in betas[3:]:  # the scanner side goes on while the decoder is down
            sender.send(beta)
        assert len(sender.outbox) == 3 + 4 - len(before)  # every beta not decoded is still held by the sender
        restart = subprocess.Popen(_decode(model, out, port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _pump(sender, lambda: not sender.outbox, 120)
        images = out / "sub-01" / "ses-01" / "images"
        assert _wait(lambda: len(list(images.glob("*.png"))) == 6, 60)
        second = subprocess.run(_decode(model, out, free_port()), capture_output=True, text=True, timeout=60)
        line = _one_line(second.stderr)
        assert second.returncode == 2 and str(out) in line and f"pid {restart.pid}, rtdecode decode" in line
    finally:
        _stop(full)
        if restart is not None:
            _stop(restart, signal.SIGTERM)
        sender.close()
    rows = read_tsv(table)
    assert sorted(r["key"] for r in rows) == sorted(f"{'d' * 32}:1:{t}:realtime" for t in range(6))  # each once
    assert table.read_text().splitlines()[: len(before)] == before  # rows before the failure, untouched


def test_low_free_space_is_said_by_config_check_at_start_and_during_a_run_and_shown_on_the_console(
        tmp_path, small_run):
    config = _config(tmp_path, session={"min_free_gb": 1e9, "space_check_every": 4})  # more than any disk has
    check = subprocess.run([*RTDECODE, "config", "check", str(config)], capture_output=True, text=True, timeout=60)
    said = [ln for ln in check.stdout.splitlines() if ln.startswith("warning: storage: ")]
    assert check.returncode == 0 and len(said) == 1 and "free on the disk" in said[0], check.stdout
    port = tomllib.loads(config.read_text())["network"]["events_port"]
    proc = _start(config, tmp_path / "run.log")
    sub = Subscriber(f"tcp://127.0.0.1:{port}")
    console, got = ConsoleState(), []
    try:
        _feed(tmp_path, small_run, range(6))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any(m.fields.get("run") == 1 for m in got):
            msg = sub.recv(timeout_ms=100)
            if msg is not None:
                console.apply(msg)
                got += [msg] if msg.type == "status" and msg.fields["state"] == "storage_low" else []
    finally:
        sub.close()
        _stop(proc)
    # At start (heard live or replayed to a console that joins late: both, here), then once in run 1.
    assert {m.fields.get("run") for m in got} == {None, 1} and [m.fields.get("run") for m in got].count(1) == 1
    assert "session.min_free_gb = 1e+09" in got[-1].fields["reason"]
    warnings = [e.text for e in console.log if e.severity == "warning" and "free on the disk" in e.text]
    assert len(warnings) == 2
    assert (tmp_path / "run.log").read_text().count("free on the disk") == 2
