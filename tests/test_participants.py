"""Two participants in one day, kept apart end to end, on real processes.

``rtdecode run`` for each participant (a configuration from ``rtdecode config template``), one
``rtdecode decode`` on one ``--out`` for the day, first with participant 01's model, then restarted with
participant 02's. Both models take the same voxel count, so only the model folder's participant tells
them apart. A console (events and results) and a display (results only) are opened after 01's session,
before 02's first run: the decoder replays 01's results to them at once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import zmq
from test_run_boundaries import _set
from test_scanner_side import PATTERN, _dicom_bytes, _put
from test_whole_fields import _recv

from calibration.build import session_participant
from gui.sessions import SessionFilter
from gui.state import ConsoleState
from models.folder import write_model_folder
from models.mindeye2.config import standin_config
from models.mindeye2.model import MindEye2
from rtdecode.base.session import SessionFolder, read_tsv
from rtdecode.gallery.builtin import StimulusSet
from rtdecode.simulator.scanner import format_name
from rtdecode.wire.protocol import decode, encode
from rtdecode.wire.reliable import beta_key, beta_message
from rtdecode.wire.sockets import Subscriber, make_socket

from conftest import free_port

pytestmark = pytest.mark.slow  # real processes, about a minute

RTDECODE = str(Path(sys.executable).with_name("rtdecode"))
N_VOLUMES = 12
ONSETS = (0.0, 3.0, 6.0)  # three trials; each ready 7.5 s (5 volumes) after its onset
IMAGES = {"01": ("sim-00000", "sim-00001", "sim-00002"), "02": ("sim-00003", "sim-00004", "sim-00005")}
N_VOXELS = 200
UID = "c" * 32
SESSION = {"subject": "01", "session": "01", "session_uid": UID}


class Feed:
    """A console's state fed in a thread from its sockets, in arrival order (as gui.feed does)."""

    def __init__(self, state: ConsoleState, events: str | None, results: str) -> None:
        self.state, self.lock = state, threading.Lock()
        self.subs = ([("scanner", Subscriber(events))] if events else []) + [("decoder", Subscriber(results))]
        self.heard = {"scanner": 0, "decoder": 0}
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for source, sub in self.subs:
                msg = sub.recv(timeout_ms=20)
                if msg is not None:
                    with self.lock:
                        self.heard[source] += msg.type == "result"
                        self.state.apply(msg, source)

    def shown(self) -> dict[tuple[int, int, str], str]:
        """Decoded trials on the page: key -> the stimulus image it shows."""
        with self.lock:
            return {k: v.image for k, v in self.state.trials.items() if v.top_ids}

    def close(self) -> None:
        self._stop.set()
        self.thread.join(timeout=5)
        for _, sub in self.subs:
            sub.close()


def _wait(cond, seconds: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None,
          detail=lambda: "") -> None:
    """Until ``cond()``; a generous limit (a loaded machine), and what was seen when it is reached."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not cond():
        assert proc is None or proc.poll() is None, f"process died:\n{log.read_text() if log else ''}"
        time.sleep(0.1)
    assert cond(), (f"{what} not within {seconds:.0f} s {detail()}" + (f":\n{log.read_text()[-3000:]}" if log else ""))


def _config(tmp_path: Path, subject: str, betas: str, events_port: int) -> Path:
    """The template's configuration with this participant's folders, ports, mask and events."""
    folder = tmp_path / f"sub{subject}"
    (folder / "watch").mkdir(parents=True)
    (folder / "events").mkdir()
    rows = [f"{o:.1f}\t1.0\t{image}" for o, image in zip(ONSETS, IMAGES[subject], strict=True)]
    (folder / "events" / "series-007.tsv").write_text("onset\tduration\timage\n" + "\n".join(rows) + "\n")
    path = folder / "session.toml"
    subprocess.run([RTDECODE, "config", "template", str(path)], check=True, timeout=60, capture_output=True)
    text = path.read_text()
    for section, key, value in [
            ("session", "root", f'"{tmp_path / "sessions"}"'), ("session", "subject", f'"{subject}"'),
            ("scanner", "watch_dir", f'"{folder / "watch"}"'), ("scanner", "quarantine_dir", f'"{folder / "rejected"}"'),
            ("scanner", "volumes_per_run", str(N_VOLUMES)), ("preprocess", "mask", f'"{tmp_path / "roi.nii"}"'),
            ("glm", "events", f'"{folder / "events"}/series-{{series:03d}}.tsv"'),
            ("network", "events_port", str(events_port)), ("network", "control_port", "-1"),
            ("network", "decoder", f'"{betas}"'), ("network", "resend_s", "0.5"), ("network", "drain_s", "2.0")]:
        text = _set(text, section, key, value)
    path.write_text(text)
    return path


def _start(cmd: list[str], log: Path, env: dict) -> subprocess.Popen:
    with open(log, "a") as fh:
        return subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _scan(tmp_path: Path, subject: str, small_run) -> None:
    watch = tmp_path / f"sub{subject}" / "watch"
    for t in range(N_VOLUMES):
        _put(watch, format_name(PATTERN, 7, t), _dicom_bytes(tmp_path, small_run, t, series=7, subject=subject))
        time.sleep(0.1)


def _rows(decoded: Path, subject: str) -> list[dict[str, str]]:
    return read_tsv(decoded / f"sub-{subject}" / "ses-01" / "results.tsv")


def test_two_participants_one_decoder_each_console_shows_its_own(tmp_path, small_run):
    mask = np.zeros(small_run.volumes[0].shape, np.uint8)
    mask[8:18, 10:20, 8:10] = 1  # 200 voxels: both participants' betas fit both models
    nib.save(nib.Nifti1Image(mask, small_run.affine), tmp_path / "roi.nii")
    StimulusSet().save(tmp_path / "gallery", range(12))
    models = {}
    for seed, subject in enumerate(("01", "02")):
        torch.manual_seed(seed)
        models[subject] = write_model_folder(MindEye2(standin_config(["sim01"], [N_VOXELS], hidden=32)),
                                             tmp_path / f"model-{subject}", "sim01", participant=subject)
    betas, results = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    decoded, dlog = tmp_path / "decoded", tmp_path / "decoder.log"
    env = {**os.environ, "RTDECODE_CACHE": str(tmp_path / "cache")}

    def decoder_with(subject: str) -> subprocess.Popen:
        return _start([RTDECODE, "decode", "--model", str(models[subject]), "--gallery", str(tmp_path / "gallery"),
                       "--out", str(decoded), "--betas", betas, "--results", results], dlog, env)

    decoder = decoder_with("01")
    procs = [decoder]
    feeds: list[Feed] = []
    try:
        # -- participant 01: scanned and decoded with 01's model
        ports = {s: free_port() for s in ("01", "02")}
        side_a = _start([RTDECODE, "run", "--config", str(_config(tmp_path, "01", betas, ports["01"]))],
                        tmp_path / "run-01.log", env)
        procs.append(side_a)
        time.sleep(1.0)  # the watcher is up before the first file lands (a late file is still taken)
        _scan(tmp_path, "01", small_run)
        _wait(lambda: len(_rows(decoded, "01")) == 6, 240, "participant 01's six betas decoded", decoder, dlog,
              detail=lambda: (tmp_path / "run-01.log").read_text()[-2000:])
        _stop(side_a)
        # what calibration from this session would write into its model folder: whose brain, which voxel set
        assert session_participant(tmp_path / "sessions" / "sub-01" / "ses-01")[0] == "01"
        assert session_participant(tmp_path / "sessions" / "sub-01" / "ses-01")[1].startswith("sha256:")
        # -- participant 02's scanner side starts; a console and a display open before its first run
        side_b = _start([RTDECODE, "run", "--config", str(_config(tmp_path, "02", betas, ports["02"]))],
                        tmp_path / "run-02.log", env)
        procs.append(side_b)
        console = Feed(ConsoleState(), f"tcp://127.0.0.1:{ports['02']}", results)
        display = Feed(ConsoleState(sessions=SessionFilter("decoder")), None, results)
        feeds += [console, display]
        _wait(lambda: console.heard["decoder"] >= 6 and display.heard["decoder"] >= 6, 240,
              "the decoder's replay of participant 01's results")
        assert console.shown() == {}, "the console shows 01's trials before 02's session is named"
        _scan(tmp_path, "02", small_run)
        # -- 02's betas reach a decoder holding 01's model: refused, not acknowledged, kept by the scanner side
        refusal = "is for sub-01; a beta of sub-02 came"
        _wait(lambda: refusal in dlog.read_text(), 240, "the decoder's refusal of 02's betas", decoder, dlog)
        folder_b = SessionFolder(tmp_path / "sessions", "02", "01")
        acked = folder_b.derivatives / "betas_acked.keys"
        assert not acked.exists() or acked.read_text().split() == [], "a beta of 02 was acknowledged by 01's model"
        assert not (decoded / "sub-02").exists(), "02's betas were decoded with 01's model"
        # -- the decoder restarted with 02's model decodes what the scanner side kept
        _stop(decoder)
        decoder = decoder_with("02")
        procs.append(decoder)
        _wait(lambda: len(_rows(decoded, "02")) == 6, 240, "participant 02's betas decoded after the restart",
              decoder, dlog, detail=lambda: (tmp_path / "run-02.log").read_text()[-2000:])
        expected = {(1, t, v): IMAGES["02"][t] for t in range(len(ONSETS)) for v in ("realtime", "endofrun")}
        _wait(lambda: console.shown() == expected and display.shown() == expected, 240,
              "02's six trials on the console and the display",
              detail=lambda: f"console {console.shown()}, display {display.shown()}")
        uid_b = folder_b.identity["session_uid"]
        assert {r["key"].split(":")[0] for r in _rows(decoded, "02")} == {uid_b}
        assert len(_rows(decoded, "01")) == 6  # 01's results untouched
        for feed in (console, display):
            assert feed.state.identity["session_uid"] == uid_b
            assert feed.shown() == expected  # only 02's trials, each with 02's stimulus
        _stop(side_b)
        keys = acked.read_text().split()
        assert len(keys) == 6 and all(k.startswith(uid_b) for k in keys)
    finally:
        for feed in feeds:
            feed.close()
        for proc in procs:
            _stop(proc)


def _beta(trial: int, n_voxels: int) -> list[bytes]:
    return encode(beta_message(1, trial, np.random.default_rng(trial).normal(size=n_voxels), SESSION,
                               image=f"sim-{trial:05d}"))


def _acks_before(sock, probe: list[bytes], proc: subprocess.Popen, log: Path) -> list[str]:
    """Send ``probe`` (a beta the decoder takes) and return the acks that came before its own, in order."""
    sock.send_multipart(probe)
    own, refs = decode(probe).fields, []
    while True:
        ack = _recv(sock, 60)
        assert ack is not None, f"no ack; rtdecode decode exit {proc.poll()}:\n{log.read_text()[-3000:]}"
        if ack.fields["ref"] == beta_key(own):
            return refs
        refs.append(ack.fields["ref"])


def test_a_beta_the_model_is_not_for_is_kept_and_decoded_after_a_model_change(tmp_path):
    """A model folder written before participants were recorded (subject.json names only its ridge) with
    another voxel count: 01's 200-voxel betas are not acknowledged. A refused.tsv row that an older
    rtdecode acknowledged (the retry it never got) and those betas, sent again, are decoded once the
    decoder is restarted with 01's model."""
    StimulusSet().save(tmp_path / "gallery", range(12))
    torch.manual_seed(0)
    older = write_model_folder(MindEye2(standin_config(["sim01"], [150], hidden=32)), tmp_path / "older", "sim01")
    (older / "subject.json").write_text(json.dumps({"subject": "sim01"}))  # as rtdecode wrote it before
    right = write_model_folder(MindEye2(standin_config(["sim01"], [N_VOXELS], hidden=32)), tmp_path / "right",
                               "sim01", participant="01")
    betas = f"tcp://127.0.0.1:{free_port()}"
    out, log = tmp_path / "out", tmp_path / "decoder.log"
    session = out / "sub-01" / "ses-01"
    session.mkdir(parents=True)
    (session / "session.json").write_text(json.dumps(SESSION))
    (session / "refused.tsv").write_text(  # an older decoder's: acknowledged, never decoded
        f"time\tkey\treason\n2026-12-01T10:00:00\t{UID}:1:2:realtime\tRuntimeError: mat1 and mat2 shapes\n")

    def decode_with(model: Path) -> list[str]:
        return [RTDECODE, "decode", "--model", str(model), "--gallery", str(tmp_path / "gallery"), "--out", str(out),
                "--betas", betas, "--results", f"tcp://127.0.0.1:{free_port()}"]

    env = {**os.environ, "RTDECODE_CACHE": str(tmp_path / "cache")}
    sock = make_socket(zmq.DEALER)
    sock.connect(betas)
    try:
        proc = _start(decode_with(older), log, env)
        try:
            for trial in (0, 1):
                sock.send_multipart(_beta(trial, N_VOXELS))
            assert _acks_before(sock, _beta(9, 150), proc, log) == []  # trials 0 and 1: kept by the sender
        finally:
            _stop(proc)
        assert "takes 150 voxels; a beta of sub-01 has 200" in log.read_text()
        assert "names no participant" in log.read_text()  # the older folder: taken for its voxel count, warned
        proc = _start(decode_with(right), log, env)
        try:
            for trial in (0, 1, 2):  # the scanner side's resends; trial 2 is the older decoder's refusal
                sock.send_multipart(_beta(trial, N_VOXELS))
            acks = _acks_before(sock, _beta(8, N_VOXELS), proc, log)
        finally:
            _stop(proc)
    finally:
        sock.close(linger=0)
    assert sorted(acks) == [f"{UID}:1:{t}:realtime" for t in (0, 1, 2)]
    rows = read_tsv(session / "results.tsv")
    assert sorted(int(r["trial"]) for r in rows) == [0, 1, 2, 8, 9]  # each once, 9 by the older model
    assert json.loads((session / "sources.json").read_text())["model"] == str(right.resolve())
