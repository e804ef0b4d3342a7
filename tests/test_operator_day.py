"""An operator's day, shortened: two participants, restarts, a killed decoder, hostile messages, odd files.

Everything runs over real sockets with CURVE: the scanner side (a new process start for every run),
the decoder in its own process (``rtdecode decode``, SIGKILLed once and started again), a console state
per participant and a display subscriber. At the end every volume is stored once, every beta of both
participants is decoded exactly once into its own session folder, each console state equals what its
session folders hold, and nothing died except the decoder killed on purpose.
"""

from __future__ import annotations

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
from test_scanner_side import PATTERN, _dicom_bytes, _put

from gui.state import ConsoleState
from models.folder import write_model_folder
from models.mindeye2.config import standin_config
from models.mindeye2.model import MindEye2
from rtdecode.base.session import SessionFolder, read_tsv
from rtdecode.gallery.builtin import StimulusSet
from rtdecode.simulator.dicom_writer import write_enhanced
from rtdecode.simulator.scanner import format_name
from rtdecode.wire.control import send_command
from rtdecode.wire.protocol import encode
from rtdecode.wire.reliable import beta_message
from rtdecode.wire.security import client_options, create_keys
from rtdecode.wire.sockets import Subscriber, make_socket

from conftest import SideThread, free_port, make_config

N_VOLUMES = 12
ONSETS = (0.0, 3.0, 6.0)  # three trials a run; each is ready 7.5 s (5 volumes) after its onset


def _keys(root: Path) -> dict[str, Path]:
    names = ("scanner", "decoder", "console", "display", "intruder")
    for name in names:
        create_keys(root / name, name)
    for server, clients in (("scanner", ("console", "display")), ("decoder", ("scanner", "console", "display"))):
        allowed = root / f"{server}-allowed"
        allowed.mkdir()
        for client in clients:
            (allowed / f"{client}.key").write_bytes((root / client / f"{client}.key").read_bytes())
    return {name: root / name for name in names} | {"root": root}


class Watcher:
    """A subscriber polled in a thread (a console or a display), collecting every message it takes."""

    def __init__(self, address: str, curve: dict, topics: tuple[str, ...] = ("",)) -> None:
        self.sub = Subscriber(address, topics=topics, curve=curve)
        self.got: list = []
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            msg = self.sub.recv(timeout_ms=50)
            if msg is not None:
                self.got.append(msg)

    def close(self) -> None:
        self._stop.set()
        self.thread.join(timeout=5)
        self.sub.close()


def _inject(address: str, curve: dict | None, frames_list: list[list[bytes]], kind=zmq.DEALER) -> None:
    sock = make_socket(kind, curve=curve)
    sock.connect(address)
    time.sleep(0.2)
    for frames in frames_list:
        try:  # a refused key leaves no pipe: an injector must not block on it
            sock.send_multipart(frames, flags=zmq.NOBLOCK)
        except zmq.Again:
            pass
    time.sleep(0.2)
    sock.close(linger=0)


def _hostile_betas(n_voxels: int) -> list[list[bytes]]:
    import json

    good = encode(beta_message(1, 0, np.zeros(n_voxels), {"subject": "01", "session": "01", "session_uid": "e" * 32}))

    def tamper(**changes):
        header = json.loads(good[1])
        header.update(changes)
        return [good[0], json.dumps(header).encode(), *good[2:]]

    return [[b"junk"], tamper(run="abc"), tamper(version="x/../../y"), tamper(trial=10**30), tamper(v=1),
            tamper(subject="../.."), [*good[:2], np.full(n_voxels, np.nan, np.float32).tobytes()],
            [b"beta", b"{" + b" " * 70000 + b"}"], [b"beta", b'{"v":2}']]


def _hostile_commands() -> list[list[bytes]]:
    return [[b"command", b"not json"], [b"command", b'{"v":2,"type":"command","seq":1,"time":1,"boot":"00000000'
                                                     b'00000000","frames":[],"action":"rm -rf /"}'],
            [b"command", b'{"v":2,"type":"command","seq":1,"time":1,"boot":"0000000000000000","frames":[],'
                         b'"action":7}'], [b"x" * 10]]


@pytest.mark.slow
def test_an_operator_day(tmp_path, small_run):
    keys = _keys(tmp_path / "keys")
    n_voxels = 200
    mask = np.zeros(small_run.volumes[0].shape, np.uint8)
    mask[8:18, 10:20, 8:10] = 1  # 200 voxels in the middle of the head
    nib.save(nib.Nifti1Image(mask, small_run.affine), tmp_path / "roi.nii")
    images = StimulusSet()
    images.save(tmp_path / "gallery", range(12))
    events = tmp_path / "events"
    events.mkdir()
    for series in (7, 8):
        rows = [f"{o:.1f}\t1.0\tsim-{(series * 3 + i) % 12:05d}" for i, o in enumerate(ONSETS)]
        (events / f"series-{series:03d}.tsv").write_text("onset\tduration\timage\n" + "\n".join(rows) + "\n")
    torch.manual_seed(0)
    model = write_model_folder(MindEye2(standin_config(["sim01"], [n_voxels], hidden=32)), tmp_path / "model", "sim01")

    betas_port, results_port = free_port(), free_port()
    decoded = tmp_path / "decoded"
    cmd = [sys.executable, "-m", "rtdecode.cli", "decode", "--model", str(model), "--gallery", str(tmp_path / "gallery"),
           "--out", str(decoded), "--betas", f"tcp://127.0.0.1:{betas_port}",
           "--results", f"tcp://127.0.0.1:{results_port}", "--curve-secret", str(keys["decoder"] / "decoder.key_secret"),
           "--curve-allowed", str(keys["root"] / "decoder-allowed")]
    env = {**os.environ, "RTDECODE_CACHE": str(tmp_path / "cache")}
    log = open(tmp_path / "decoder.log", "w")
    decoder = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    decoder_key = keys["decoder"] / "decoder.key"
    results = f"tcp://127.0.0.1:{results_port}"
    display = Watcher(results, client_options(keys["display"] / "display.key_secret", decoder_key), ("result",))
    spy = Watcher(results, client_options(keys["intruder"] / "intruder.key_secret", decoder_key))
    summary: list[tuple[str, str]] = []
    killed = False
    consoles: dict[str, ConsoleState] = {}
    sides: list[SideThread] = []
    try:
        for subject in ("01", "02"):
            events_port, control_port = free_port(), free_port()
            (tmp_path / f"sub{subject}").mkdir()
            cfg = make_config(tmp_path / f"sub{subject}", session={"root": str(tmp_path / "sessions"), "subject": subject},
                              scanner={"volumes_per_run": N_VOLUMES},
                              preprocess={"mask": str(tmp_path / "roi.nii")},
                              glm={"events": str(events / "series-{series:03d}.tsv")},
                              network={"events_port": events_port, "control_port": control_port,
                                       "decoder": f"tcp://127.0.0.1:{betas_port}", "resend_s": 0.5, "drain_s": 60.0,
                                       "curve_secret": str(keys["scanner"] / "scanner.key_secret"),
                                       "curve_allowed": str(keys["root"] / "scanner-allowed"),
                                       "curve_decoder_key": str(decoder_key)})
            scanner_key = keys["scanner"] / "scanner.key"
            console_curve = client_options(keys["console"] / "console.key_secret", scanner_key)
            console = ConsoleState()
            consoles[subject] = console
            events_watch = Watcher(f"tcp://127.0.0.1:{events_port}", console_curve)
            results_watch = Watcher(results, client_options(keys["console"] / "console.key_secret", decoder_key))
            intruder_events = Watcher(f"tcp://127.0.0.1:{events_port}",
                                      client_options(keys["intruder"] / "intruder.key_secret", scanner_key))
            for series in (7, 8):  # the scanner side is a new process start for every run
                st = SideThread(cfg, n=N_VOLUMES, timeout=90)
                sides.append(st)
                with st:
                    # The console is connected (CURVE handshake done) before the scanner writes: on a loaded
                    # machine the handshake can outlast a 2-second run, and a process gone is heard by no one.
                    deadline = time.monotonic() + 15
                    while time.monotonic() < deadline and not any(m.boot == st.side.publisher.boot
                                                                  for m in list(events_watch.got)):
                        time.sleep(0.05)
                    assert any(m.boot == st.side.publisher.boot for m in list(events_watch.got)), (
                        f"sub-{subject} series {series}: the console heard nothing of the scanner side's start in 15 s")
                    watch = cfg.scanner.watch_dir
                    if series == 7:  # odd files a PACS or a confused export can drop in
                        one = tmp_path / "one.dcm"
                        write_enhanced(one, small_run.volumes[0][:, :, :1], small_run.affine, series_number=99, instance=1)
                        _put(watch, format_name(PATTERN, 99, 0), one.read_bytes())
                        cut = _dicom_bytes(tmp_path, small_run, 0, series=98)
                        (watch / format_name(PATTERN, 98, 0)).write_bytes(cut[: len(cut) // 3])
                    for t in range(N_VOLUMES):
                        _put(watch, format_name(PATTERN, series, t),
                             _dicom_bytes(tmp_path, small_run, t, series=series, subject=subject))
                        time.sleep(0.15)
                        if t == 3:
                            control = f"tcp://127.0.0.1:{control_port}"
                            _inject(control, console_curve, _hostile_commands())
                            _inject(control, client_options(keys["intruder"] / "intruder.key_secret", scanner_key),
                                    [[b"command", b"{}"]])
                            assert send_command(control, "start_run", timeout_ms=3000, curve=console_curve) is not None
                            _inject(f"tcp://127.0.0.1:{betas_port}", client_options(
                                keys["scanner"] / "scanner.key_secret", decoder_key), _hostile_betas(n_voxels))
                            _inject(f"tcp://127.0.0.1:{events_port}", console_curve, [[b"\x01junk"], [b"x" * 100]],
                                    kind=zmq.XSUB)
                        if subject == "01" and series == 8 and t == 6 and not killed:
                            decoder.send_signal(signal.SIGKILL)  # mid-run: the scanner side keeps its betas
                            decoder.wait(timeout=10)
                            killed = True
                            decoder = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
                    st.wait(settle=0.5)
                assert st.error is None, f"the scanner side died: {st.error!r}"
            # Everything of this participant decoded, reconstructed and seen by the console.
            folder = SessionFolder(tmp_path / "sessions", subject, "01")
            uid = folder.identity["session_uid"]
            out = decoded / f"sub-{subject}" / "ses-01"
            expected = 2 * 2 * len(ONSETS)  # runs x (realtime, endofrun) x trials
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and (
                    not (out / "results.tsv").exists() or len(read_tsv(out / "results.tsv")) < expected
                    or len(list((out / "images").glob("*.png"))) < expected):
                time.sleep(0.2)
            time.sleep(1.0)
            for watcher in (events_watch, results_watch, intruder_events):
                watcher.close()
            for source, watcher in (("scanner", events_watch), ("decoder", results_watch)):
                for msg in watcher.got:
                    console.apply(msg, source)
            assert intruder_events.got == []
            # -- every volume stored once; the odd files set aside with a true reason
            for run in (1, 2):
                rows, vectors = folder.run_store(run).load()
                assert [int(r["volume"]) for r in rows] == list(range(N_VOLUMES)) and len(vectors) == N_VOLUMES
            reasons = {r["file"]: r["reason"] for r in folder.rejected()}
            assert "not a volume" in reasons[format_name(PATTERN, 99, 0)]
            assert "still incomplete" in reasons[format_name(PATTERN, 98, 0)]
            # -- every beta decoded exactly once, into this participant's own folder
            sent = []
            for run in (1, 2):
                for version in ("realtime", "endofrun"):
                    sent += [f"{uid}:{run}:{r['trial']}:{version}" for r in
                             read_tsv(folder.derivatives / f"{folder.prefix(run)}_desc-{version}_betas.tsv")]
            keys_decoded = [r["key"] for r in read_tsv(out / "results.tsv")]
            assert sorted(keys_decoded) == sorted(sent) and len(sent) == expected
            # -- the console equals the folders
            types = sorted({m.type for m in events_watch.got})
            assert console.identity.get("session_uid") == uid, (
                f"sub-{subject}: the console took {len(events_watch.got)} event messages of types {types}, "
                f"its subscriber refused {events_watch.sub.rejected} ({events_watch.sub.last_error}); "
                f"console refused {console.refused}: {console.last_refused}")
            assert {r: q.received for r, q in console.runs.items()} == {1: N_VOLUMES, 2: N_VOLUMES}
            decoded_trials = {(int(r["run"]), int(r["trial"]), r["version"]) for r in read_tsv(out / "results.tsv")}
            assert {k for k, v in console.trials.items() if v.top_ids} == decoded_trials
            assert console.restarts.get("scanner") == 1
            summary.append((f"sub-{subject}", f"{2 * N_VOLUMES} volumes stored once, {len(keys_decoded)} betas "
                                             f"decoded once, {len(folder.rejected())} files set aside, "
                                             f"{console.refused} refused at the console"))
        assert decoder.poll() is None, "the decoder died"
        assert killed
    finally:
        decoder.send_signal(signal.SIGTERM)
        decoder.wait(timeout=15)
        log.close()
        display.close()
        spy.close()
    assert spy.got == []
    shown = [m for m in display.got if m.fields.get("stage") == "reconstruction"]
    assert {m.fields["session_uid"] for m in shown} == {SessionFolder(tmp_path / "sessions", s, "01").identity["session_uid"]
                                                         for s in ("01", "02")}
    decoder_log = (tmp_path / "decoder.log").read_text()
    assert "rejected message" in decoder_log
    print("\noperator day")
    print(f"{'who':<10} what")
    for who, what in summary + [("decoder", f"SIGKILLed once, restarted; {decoder_log.count('rejected message')} "
                                            "hostile betas refused"),
                                ("display", f"{len(shown)} reconstructions of both participants"),
                                ("intruder", "read nothing from events or results, stopped nothing")]:
        print(f"{who:<10} {what}")
