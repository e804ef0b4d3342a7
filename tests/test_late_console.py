"""Issue 28, round 3: what a console that joins late or reopens still lacked, and the next participant.

Real parts: the scanner side in a thread with its watcher on a folder and ZeroMQ on 127.0.0.1, the
decoder service on real sockets over a results folder written by its own store, ``rtdecode console``
as a process for the live screenshot.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from test_scanner_side import PATTERN, _dicom_bytes, _put

from gui.state import ConsoleState
from rtdecode.base.session import SessionFolder
from rtdecode.scanner.history import keep_event
from rtdecode.simulator.dicom_writer import series_uid_for
from rtdecode.simulator.scanner import format_name
from rtdecode.wire.protocol import Message, decode_png, encode_png
from rtdecode.wire.sockets import Publisher, Subscriber

from conftest import SideThread, make_config, wait_until

ROOT = Path(__file__).resolve().parents[1]
N_VOLUMES = 12
ONSETS = (0.0, 3.0, 6.0)


class Ears:
    """A console's state fed by one subscriber in a thread (every message applied)."""

    def __init__(self, address: str, source: str, state: ConsoleState | None = None) -> None:
        self.state = state or ConsoleState()
        self.sub, self.source = Subscriber(address), source
        self.lock = threading.Lock()
        self.got: list[Message] = []
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            msg = self.sub.recv(timeout_ms=20)
            if msg is not None:
                with self.lock:
                    self.got.append(msg)
                    self.state.apply(msg, self.source)

    def close(self) -> ConsoleState:
        self._stop.set()
        self.thread.join(timeout=10)
        self.sub.close()
        return self.state


def _participant_config(tmp_path: Path, subject: str, small_run, port: int):
    """Participant ``subject``'s scanner side: its own watch folder, the shared sessions folder."""
    mask = np.zeros(small_run.volumes[0].shape, np.uint8)
    mask[8:18, 10:20, 8:10] = 1
    nib.save(nib.Nifti1Image(mask, small_run.affine), tmp_path / "roi.nii")
    events = tmp_path / "events"
    events.mkdir(exist_ok=True)
    rows = [f"{o:.1f}\t1.0\tsim-{i:05d}" for i, o in enumerate(ONSETS)]
    (events / "series-007.tsv").write_text("onset\tduration\timage\n" + "\n".join(rows) + "\n")
    home = tmp_path / f"sub{subject}"
    home.mkdir(exist_ok=True)
    return make_config(home, session={"root": str(tmp_path / "sessions"), "subject": subject},
                       scanner={"volumes_per_run": N_VOLUMES},
                       preprocess={"mask": str(tmp_path / "roi.nii"), "tsnr_map_every": 5},
                       glm={"events": str(events / "series-{series:03d}.tsv")},
                       network={"events_port": port, "control_port": 0})


def _scan(watch: Path, tmp_path: Path, small_run, subject: str, series: int = 7) -> None:
    for t in range(N_VOLUMES):
        _put(watch, format_name(PATTERN, series, t), _dicom_bytes(tmp_path, small_run, t, series=series, subject=subject))
        time.sleep(0.05)


def _free_events_port() -> int:
    from conftest import free_port

    return free_port()


def test_restart_keeps_tsnr_voxels_and_status_and_the_next_participant_starts_clean(tmp_path, small_run):
    """3: a late console lacked the tSNR mosaic and the voxel count; 4: after a scanner-side restart the
    all-day console's status went back to 'volume 12 of 12', and it kept participant 01's trials until
    02's first run; 8: 01's file left in the watch folder was taken as 02's run."""
    port = _free_events_port()
    events = f"tcp://127.0.0.1:{port}"
    cfg1 = _participant_config(tmp_path, "01", small_run, port)
    all_day = None
    try:
        with SideThread(cfg1, n=10_000, timeout=240) as st:
            all_day = Ears(events, "scanner")
            assert wait_until(lambda: st.side.publisher.boot in all_day.state.boots.values(), 20)
            _scan(cfg1.scanner.watch_dir, tmp_path, small_run, "01")
            assert wait_until(lambda: st.side.processed == N_VOLUMES, 60)
            assert wait_until(lambda: all_day.state.runs.get(1) is not None and all_day.state.runs[1].ended
                              and all_day.state.alignment[1].tsnr is not None
                              and any(v.image for v in all_day.state.trials.values()), 30)
        live = all_day.state
        with SideThread(cfg1, n=10_000, timeout=240) as st:  # the scanner side started again
            late = Ears(events, "scanner")
            assert wait_until(lambda: live.restarts.get("scanner") == 1 and late.state.runs.get(1) is not None
                              and late.state.runs[1].ended and 1 in late.state.alignment
                              and late.state.alignment[1].tsnr is not None, 30)
            late_state = late.close()  # the run's end is the last of the history: all of it came
            # 4: the all-day console tells the current run's state, not a volume heard again (once it has
            # taken the restarted side's history, which ends with the run's end)
            ended = f"run 1 ended (complete): {N_VOLUMES} volumes of {N_VOLUMES}"
            assert wait_until(lambda: live.status == ended, 30), live.status
        with all_day.lock:
            mine, theirs = live.alignment[1], late_state.alignment[1]
            # 3: the newest tSNR mosaic and the mask's voxel count, as the all-day console has them
            assert (theirs.tsnr_at, theirs.median_tsnr) == (mine.tsnr_at, mine.median_tsnr)
            assert np.array_equal(theirs.tsnr, mine.tsnr)
            started = [e.text for e in late_state.log if e.text.startswith("run 1 started")]
            assert started == ["run 1 started (series 7): 200 voxels in the mask"], started
        # -- participant 02 in the same sessions folder; one of 01's files is still in its watch folder
        cfg2 = _participant_config(tmp_path, "02", small_run, port)
        with SideThread(cfg2, n=10_000, timeout=240) as st:
            uid2 = st.side.identity["session_uid"]
            assert wait_until(lambda: live.identity.get("session_uid") == uid2, 20)
            with all_day.lock:  # a clean page before 02's first run
                assert live.trials == {} and live.runs == {} and live.alignment == {} and live.rejected == []
                assert live.status == "session sub-02 ses-01: waiting for its first run", live.status
            leftover = format_name(PATTERN, 7, 0)
            _put(cfg2.scanner.watch_dir, leftover, _dicom_bytes(tmp_path, small_run, 0, series=7, subject="01"))
            reason = "was recorded by another session (sub-01 ses-01, run 1)"
            assert wait_until(lambda: any(reason in line for line in live.rejected), 30), live.rejected
            assert not SessionFolder(tmp_path / "sessions", "02", "01").runs()
            _scan(cfg2.scanner.watch_dir, tmp_path, small_run, "02", series=8)
            assert wait_until(lambda: st.side.processed == N_VOLUMES, 60)
            runs = SessionFolder(tmp_path / "sessions", "02", "01").runs()
            assert [r["series_uid"] for r in runs] == [series_uid_for(8, subject="02")]
    finally:
        if all_day is not None:
            all_day.close()


def test_simulated_series_uids_are_each_participants_own():
    """8: one UID per series number whoever was scanned made a guard against left-over files collide."""
    uids = {series_uid_for(s, subject=p, session=e) for s in (7, 8) for p in ("01", "02") for e in ("01", "02")}
    assert len(uids) == 8
    assert series_uid_for(7, subject="01", session="02") == series_uid_for(7, subject="01", session="02")
    assert all(len(u) <= 64 and all(part and (part == "0" or part[0] != "0") for part in u.split(".")) for u in uids)


def _picture(k: int) -> np.ndarray:
    """A small seeded picture, unequal sides."""
    return np.random.default_rng(k).integers(0, 256, (24, 20, 3), dtype=np.uint8)


def _join(address: str, until, seconds: float = 60) -> list[Message]:
    """What a console joining ``address`` takes until ``until(messages)`` holds (bounded)."""
    sub, got = Subscriber(address), []
    try:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not until(got):
            msg = sub.recv(timeout_ms=50)
            if msg is not None:
                got.append(msg)
    finally:
        sub.close()
    return got


def test_a_restarted_decoder_gives_a_late_console_every_trials_picture_with_its_tier(tmp_path):
    """1: a restarted decoder re-sent its newest 10 pictures and a late console got at most the 20 most
    recent messages, so early trials showed no picture; 3: the re-sent pictures lacked their tier."""
    import torch

    from models.folder import write_model_folder
    from models.mindeye2.config import standin_config
    from models.mindeye2.model import MindEye2
    from rtdecode.decoder.core import Decoder
    from rtdecode.decoder.results import ResultStore, session_folder
    from rtdecode.decoder.service import DecoderService
    from rtdecode.gallery.builtin import StimulusSet

    torch.manual_seed(0)
    model = write_model_folder(MindEye2(standin_config(["sim01"], [29], hidden=16)), tmp_path / "model", "sim01")
    StimulusSet().save(tmp_path / "gallery", range(8))
    session = {"subject": "01", "session": "01", "session_uid": "d" * 32}
    store = ResultStore(session_folder(tmp_path / "out", "01", "01"), session)
    n = 45  # beyond the recent-message window (20) and the old re-send (10)
    timings = {"backbone_ms": 1.0, "retrieval_ms": 1.0, "prior_ms": 1.0}
    for trial in range(n):  # written by the decoder's own store, as a decoder killed after them left them
        key = f"{'d' * 32}:1:{trial}:realtime"
        store.save_retrieval(key, {"run": 1, "trial": trial, "image": f"sim-{trial % 8:05d}"},
                             np.zeros((3, 4), np.float32), ["sim-00000"], [0.5], timings, time.time())
        store.save_image(key, _picture(trial), "standin")
    service = DecoderService(Decoder.from_folder(model, tmp_path / "gallery", cache=tmp_path / "cache"),
                             tmp_path / "out", "tcp://127.0.0.1:0", "tcp://127.0.0.1:0", heartbeat_s=0.2)
    thread = threading.Thread(target=service.run, daemon=True)
    thread.start()
    try:
        def pictures(got: list[Message]) -> dict[int, Message]:
            return {m.fields["trial"]: m for m in got if m.type == "result" and "reconstruction" in m.images}

        got = _join(service.publisher.address, lambda g: len(pictures(g)) >= n)
        shown = pictures(got)
        assert sorted(shown) == list(range(n)), f"{len(shown)} of {n} trials' pictures"
        for trial, msg in shown.items():
            assert msg.fields.get("tier") == "standin", msg.fields
            assert np.array_equal(decode_png(msg.images["reconstruction"])[..., :3], _picture(trial))
    finally:
        service.stop()
        thread.join(timeout=10)


def test_pictures_kept_for_late_joiners_are_bounded_by_bytes():
    """The bound on kept pictures: the newest within ``keep_bytes``; retrievals are not counted in it."""
    from rtdecode.decoder.service import keep_result

    pngs = [encode_png(_picture(k)) for k in range(10)]
    size = max(len(p) for p in pngs)
    pub = Publisher("tcp://127.0.0.1:0", replay=2, keep=keep_result, keep_bytes={"picture": 4 * size + 2000})
    try:
        for k, png in enumerate(pngs):
            pub.send(Message("result", {"run": 1, "trial": k, "stage": "retrieval", "top_ids": ["a"], "top_scores": [0.5]}))
            pub.send(Message("result", {"run": 1, "trial": k, "stage": "reconstruction"}, images={"reconstruction": png}))
        stop = threading.Event()
        server = threading.Thread(target=lambda: [pub.serve() or time.sleep(0.01) for _ in iter(stop.is_set, True)],
                                  daemon=True)
        server.start()
        got = _join(pub.address, lambda g: any(m.fields["trial"] == 9 and m.images for m in g), 20)  # the last sent
        stop.set()
        server.join(timeout=5)
        kept = sorted(m.fields["trial"] for m in got if "reconstruction" in m.images)
        assert 4 <= len(kept) < 10 and kept == list(range(10 - len(kept), 10)), kept  # the newest, in order
        assert sorted(m.fields["trial"] for m in got if m.fields.get("stage") == "retrieval") == list(range(10))
    finally:
        pub.close()


def test_a_live_screenshot_waits_for_the_replay(tmp_path):
    """2: ``rtdecode console --screenshot`` of a live console was taken before anything arrived."""
    pub = Publisher("tcp://127.0.0.1:0", replay=20, keep=keep_event, replay_skip=("beta", "heartbeat"))
    stop = threading.Event()
    try:
        who = {"subject": "01", "session": "01", "session_uid": "e" * 32}
        pub.send(Message("run_started", {"run": 1, "series": 7, "shape": [], "n_voxels": 200, "n_volumes": 40, **who}))
        for t in range(37):
            pub.send(Message("volume", {"run": 1, "index": t, "motion": [0.0] * 6, "fd": 0.1, "dvars": 1.0,
                                        "tsnr": 50.0, "latency_ms": 70.0}))

        def serve() -> None:
            while not stop.is_set():
                pub.serve()
                time.sleep(0.01)

        server = threading.Thread(target=serve, daemon=True)
        server.start()
        shot = tmp_path / "console.png"
        done = subprocess.run([str(ROOT / ".venv" / "bin" / "rtdecode"), "console", "--events", pub.address,
                               "--screenshot", str(shot)], capture_output=True, text=True, timeout=120,
                              env={**os.environ, "QT_QPA_PLATFORM": "offscreen"})
        assert done.returncode == 0, done.stderr[-2000:]
        assert "messages taken: 38 from the scanner" in done.stdout, done.stdout  # run_started and 37 volumes
        assert shot.stat().st_size > 0
    finally:
        stop.set()
        pub.close()
