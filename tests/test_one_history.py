"""One history, whoever joins when (issue 28): a console that joins late, reopens after a restart of
either side, or replays the session shows what a console open all day shows, field by field.

Real parts throughout: DICOM files picked up by the watcher, ZeroMQ on 127.0.0.1, the decoder in its
own process (killed and started again), ``rtdecode console --replay``'s message builders on the folders.
"""

from __future__ import annotations

import copy
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from test_scanner_side import PATTERN, _dicom_bytes, _put

from gui.state import ConsoleState
from models.folder import write_model_folder
from models.mindeye2.config import standin_config
from models.mindeye2.model import MindEye2
from rtdecode.base.session import SessionFolder, read_tsv
from rtdecode.gallery.builtin import StimulusSet
from rtdecode.scanner.history import keep_event
from rtdecode.simulator.dicom_writer import write_enhanced
from rtdecode.simulator.scanner import format_name
from rtdecode.tools.replay import replayed
from rtdecode.wire.control import send_command
from rtdecode.wire.protocol import Message
from rtdecode.wire.sockets import Publisher, Subscriber

from conftest import SideThread, free_port, make_config, wait_until

N_VOLUMES = 12
ONSETS = (0.0, 3.0, 6.0)
STOP_AT = 6  # run 2 is stopped by the operator after this many volumes
KEPT_LINES = re.compile(r"^(run \d+ ended|file set aside|run \d+: FD alarm|run \d+: volume \d+ missing|"
                        r"run \d+ trial \d+ mark|run \d+ started|"  # started: with the mask's voxel count
                        r".* (restarted|silent for over \d+ s|heard from again)$|run \d+ left open|"
                        r"session sub-\w+ ses-\w+$)")  # the session's line: at its first start
SAME_TIME = re.compile(r"^(run \d+ ended|.* (restarted|silent for over \d+ s|heard from again)$|session sub-)")
SILENCE_S = 5.0  # as the console's light (gui.display.SILENT_S); each restart below waits longer than this


class Feed:
    """A console's ears: its events and results subscribers polled in one thread, each message applied."""

    def __init__(self, events: str, results: str, state: ConsoleState | None = None) -> None:
        self.state = state or ConsoleState()
        self.subs = [(Subscriber(events), "scanner"), (Subscriber(results), "decoder")]
        self._stop = threading.Event()
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for sub, source in self.subs:
                msg = sub.recv(timeout_ms=10)
                with self.lock:
                    if msg is not None:
                        self.state.apply(msg, source)
                    self.state.check_silence(SILENCE_S)  # as the console's refresh does

    def close(self) -> ConsoleState:
        self._stop.set()
        self.thread.join(timeout=10)
        for sub, _ in self.subs:
            sub.close()
        return self.state


def facts(s: ConsoleState) -> dict:
    """What an operator reads off a console, by field (not connection lights, not the order of arrival)."""
    return {
        "identity": dict(s.identity),
        "restarts": dict(s.restarts),  # the lights' "(restarted Nx)"
        "fd_threshold_mm": s.fd_threshold_mm,
        "rejected": sorted(s.rejected),
        "run_warnings": dict(s.run_warnings),
        **{f"run {r}.{name}": value for r, q in s.runs.items() for name, value in (
            ("index", q.index), ("fd", [round(x, 4) for x in q.fd]), ("alarm", q.alarm), ("missing", sorted(q.missing)),
            ("expected", q.expected), ("ended", q.ended), ("rejected", q.rejected))},
        **{f"trial {k}": (v.image, v.version, v.top_ids, v.bad, v.note) for k, v in s.trials.items() if v.top_ids},
        **{f"picture {k}": v.tier for k, v in s.trials.items() if v.reconstruction is not None},  # what drew it
        **{f"run {r}.tsnr": (a.tsnr_at, a.median_tsnr, None if a.tsnr is None else a.tsnr.shape)
           for r, a in s.alignment.items()},
    }


def differences(live: ConsoleState, other: ConsoleState) -> list[str]:
    a, b = facts(live), facts(other)
    return [f"{key}: all day {a.get(key)!r}, here {b.get(key)!r}" for key in sorted({*a, *b}) if a.get(key) != b.get(key)]


def history_differences(live: ConsoleState, other: ConsoleState) -> list[str]:
    """The log and the ages: each kept fact logged at the time it happened, each result aged from when
    the decoder produced it, and the pictures shown the pictures drawn."""
    out = []
    lines = {e.text: e.time for e in live.log if KEPT_LINES.match(e.text)}
    theirs = {e.text: e.time for e in other.log if KEPT_LINES.match(e.text)}
    out += [f"log: {t!r} missing" for t in lines if t not in theirs]  # every mark and its removal too
    out += [f"log: {t!r} at {theirs[t] - lines[t]:+.1f} s" for t in theirs if t in lines and abs(theirs[t] - lines[t]) > 2.5]
    # A run's end, a restart and a silence carry the time their sender recorded: the same to the 50 ms.
    out += [f"log: {t!r} at {theirs[t] - lines[t]:+.3f} s, not the recorded time" for t in theirs
            if t in lines and SAME_TIME.match(t) and abs(theirs[t] - lines[t]) > 0.05]
    out += [f"log: {t!r} never happened" for t in theirs if t not in lines]
    for key, view in other.trials.items():
        mine = live.trials.get(key)
        if view.top_ids and mine is not None and view.received is not None and mine.received is not None \
                and abs(view.received - mine.received) > 2.5:
            out.append(f"trial {key}: result aged from {view.received - mine.received:+.1f} s after it was produced")
        if view.reconstruction is not None and (mine is None or mine.reconstruction is None
                                                or not np.array_equal(view.reconstruction, mine.reconstruction)):
            out.append(f"trial {key}: a picture the all-day console did not show")
    if not any(v.reconstruction is not None for v in other.trials.values()):
        out.append("no reconstruction shown")
    return out


_wait = wait_until


def _settle(feed: Feed, all_day: Feed, seconds: float = 30) -> tuple[ConsoleState, ConsoleState]:
    """A joined console, once it shows what the all-day one shows (or the time is up: the diff says what
    not), and the all-day console as it was then (what happens later is not the joined one's to show)."""
    def same() -> bool:
        with feed.lock, all_day.lock:
            return not differences(all_day.state, feed.state) and not history_differences(all_day.state, feed.state)
    _wait(same, seconds)
    with all_day.lock:
        then = copy.deepcopy(all_day.state)
    return feed.close(), then


def _setup(tmp_path: Path, small_run) -> tuple:
    n_voxels = 200
    mask = np.zeros(small_run.volumes[0].shape, np.uint8)
    mask[8:18, 10:20, 8:10] = 1
    nib.save(nib.Nifti1Image(mask, small_run.affine), tmp_path / "roi.nii")
    StimulusSet().save(tmp_path / "gallery", range(12))
    events = tmp_path / "events"
    events.mkdir()
    for series in (7, 8):
        rows = [f"{o:.1f}\t1.0\tsim-{(series * 3 + i) % 12:05d}" for i, o in enumerate(ONSETS)]
        (events / f"series-{series:03d}.tsv").write_text("onset\tduration\timage\n" + "\n".join(rows) + "\n")
    torch.manual_seed(0)
    model = write_model_folder(MindEye2(standin_config(["sim01"], [n_voxels], hidden=32)), tmp_path / "model", "sim01")
    betas, results = free_port(), free_port()
    cfg = make_config(tmp_path, scanner={"volumes_per_run": N_VOLUMES},
                      preprocess={"mask": str(tmp_path / "roi.nii"), "fd_threshold_mm": 0.05,  # not the console's 0.5
                                  "tsnr_map_every": 5},
                      glm={"events": str(events / "series-{series:03d}.tsv")},
                      network={"events_port": free_port(), "control_port": free_port(),
                               "decoder": f"tcp://127.0.0.1:{betas}", "resend_s": 0.5, "drain_s": 30.0})
    cmd = [sys.executable, "-m", "rtdecode.cli", "decode", "--model", str(model), "--gallery", str(tmp_path / "gallery"),
           "--out", str(tmp_path / "decoded"), "--betas", f"tcp://127.0.0.1:{betas}",
           "--results", f"tcp://127.0.0.1:{results}"]
    return cfg, cmd, f"tcp://127.0.0.1:{results}"


def test_late_reopened_and_replayed_consoles_tell_the_all_day_story(tmp_path, small_run):
    cfg, cmd, results = _setup(tmp_path, small_run)
    events = f"tcp://127.0.0.1:{cfg.network.events_port}"
    control = f"tcp://127.0.0.1:{cfg.network.control_port}"
    env = {**os.environ, "RTDECODE_CACHE": str(tmp_path / "cache")}
    log = open(tmp_path / "decoder.log", "w")
    decoder = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    all_day = Feed(events, results)
    joined: dict[str, tuple[ConsoleState, ConsoleState]] = {}
    watch = cfg.scanner.watch_dir
    folder = SessionFolder(tmp_path / "sessions", "01", "01")
    out = tmp_path / "decoded" / "sub-01" / "ses-01"
    try:
        with SideThread(cfg, n=10_000, timeout=300) as st:
            assert _wait(lambda: st.side.publisher.boot in all_day.state.boots.values(), 20)
            one = tmp_path / "one.dcm"  # a stray single slice: set aside, and every console must say so
            write_enhanced(one, small_run.volumes[0][:, :, :1], small_run.affine, series_number=99, instance=1)
            _put(watch, format_name(PATTERN, 99, 0), one.read_bytes())
            for t in range(N_VOLUMES):
                _put(watch, format_name(PATTERN, 7, t), _dicom_bytes(tmp_path, small_run, t, series=7))
                time.sleep(0.1)
            assert _wait(lambda: st.side.processed == N_VOLUMES, 60)
            for t in range(STOP_AT):
                _put(watch, format_name(PATTERN, 8, t), _dicom_bytes(tmp_path, small_run, t, series=8))
                time.sleep(0.1)
            assert _wait(lambda: st.side.processed == N_VOLUMES + STOP_AT, 60)
            assert send_command(control, "stop_run", timeout_ms=5000).fields["ok"]
            for fields in ({"bad": True}, {"bad": False}):  # marked bad, then the mark removed
                assert send_command(control, "mark", 5000, fields={"run": 1, "trial": 0, "version": "realtime", **fields})
            for note in ("a", "b"):  # marked with one note, then another
                assert send_command(control, "mark", 5000,
                                    fields={"run": 1, "trial": 1, "version": "realtime", "bad": True, "note": note})
            # Everything sent decoded and drawn, and the all-day console has seen it.
            sent = sum(len(read_tsv(p)) for p in folder.derivatives.glob("*_betas.tsv"))
            assert sent > 0
            assert _wait(lambda: (out / "results.tsv").exists() and len(read_tsv(out / "results.tsv")) >= sent
                         and len(list((out / "images").glob("*.png"))) >= sent, 120)
            assert _wait(lambda: sum(v.reconstruction is not None for v in all_day.state.trials.values()) >= sent
                         and all_day.state.trials.get((1, 1, "realtime"), None) is not None
                         and all_day.state.trials[(1, 1, "realtime")].note == "b", 30)
            joined["late"] = _settle(Feed(events, results), all_day)
            st.side.stop()
        time.sleep(SILENCE_S + 2)  # a silence every console must log, at the same time
        with SideThread(cfg, n=10_000, timeout=300) as st2:  # the scanner side started again
            assert _wait(lambda: st2.side.publisher.boot in all_day.state.boots.values(), 20)
            joined["after a scanner-side restart"] = _settle(Feed(events, results), all_day)
            decoder.send_signal(signal.SIGTERM)
            decoder.wait(timeout=30)
            time.sleep(SILENCE_S + 2)
            decoder = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
            assert _wait(lambda: all_day.state.restarts.get("decoder") == 1, 60)
            joined["after a decoder restart"] = _settle(Feed(events, results), all_day)
            st2.side.stop()
    finally:
        live = all_day.close()
        decoder.send_signal(signal.SIGTERM)
        decoder.wait(timeout=30)
        log.close()
    replay = ConsoleState(replay=True)
    for source, msg in replayed(folder.path, out):
        replay.apply(msg, source)
    joined["replay"] = replay, live
    # The all-day console is the reference: it must itself have seen the day as it was.
    assert live.runs[2].ended.startswith("ended (") and live.runs[2].received == STOP_AT and live.runs[2].expected == N_VOLUMES
    assert live.rejected and live.fd_threshold_mm == 0.05
    assert not live.trials[(1, 0, "realtime")].bad and live.trials[(1, 1, "realtime")].note == "b"
    assert live.restarts == {"scanner": 1, "decoder": 1}
    said = [e.text for e in live.log]
    for line in ("scanner side silent for over 5 s", "scanner side restarted", "scanner side heard from again",
                 "decoder silent for over 5 s", "decoder restarted", "decoder heard from again",
                 "run 1 trial 0 marked bad", "run 1 trial 0 mark removed", "run 1 trial 1 marked bad (b)"):
        assert line in said, f"the all-day console did not log {line!r}: {said}"
    problems = {who: differences(then, s) + history_differences(then, s) for who, (s, then) in joined.items()}
    assert not any(problems.values()), "\n".join(f"{who}: {p}" for who, ps in problems.items() for p in ps)


def _keeping_publisher() -> Publisher:
    return Publisher("tcp://127.0.0.1:0", replay=20, keep=keep_event, replay_skip=("beta", "heartbeat"))


def _join(pub: Publisher) -> list[Message]:
    """A console joining ``pub``: all that the replay gives it (up to a marker sent once it has joined)."""
    sub = Subscriber(pub.address)
    deadline = time.monotonic() + 10
    while not pub.serve() and time.monotonic() < deadline:
        time.sleep(0.01)
    pub.send(Message("status", {"state": "marker"}))
    got: list[Message] = []
    while time.monotonic() < deadline and not (got and got[-1].fields.get("state") == "marker"):
        msg = sub.recv(timeout_ms=50)
        got += [msg] if msg is not None else []
    sub.close()
    return got[:-1]


def test_a_reopened_console_shows_each_marks_newest_value():
    """Issue 28.3: the kept copies went first and the recent messages after, so an undone mark came back."""
    pub = _keeping_publisher()
    try:
        pub.send(Message("run_started", {"run": 1, "series": 7, "shape": [], "n_voxels": 0}))
        for bad, trial, note in ((True, 0, ""), (False, 0, ""), (True, 1, "a"), (True, 1, "b")):
            pub.send(Message("mark", {"run": 1, "trial": trial, "version": "realtime", "bad": bad,
                                      **({"note": note} if note else {})}))
        got = _join(pub)
        state = ConsoleState()
        for msg in got:
            state.apply(msg, "scanner")
        assert [m.type for m in got] == ["run_started", "mark", "mark", "mark", "mark"]  # each, in order
        assert not state.trials[(1, 0, "realtime")].bad
        assert (state.trials[(1, 1, "realtime")].bad, state.trials[(1, 1, "realtime")].note) == (True, "b")
    finally:
        pub.close()


def test_heartbeats_never_take_a_late_joiners_reconstructions():
    """Issue 28.4: 25 s without results and the 20-message replay held only heartbeats."""
    pub = Publisher("tcp://127.0.0.1:0", replay=20)
    try:
        pub.send(Message("result", {"run": 1, "trial": 0, "stage": "retrieval", "top_ids": ["a"], "top_scores": [0.5]}))
        for _ in range(25):
            pub.send(Message("heartbeat", {"service": "decoder"}))
        got = _join(pub)
        assert [m.type for m in got] == ["result"]
    finally:
        pub.close()


def test_decoder_silence_is_logged_once_and_its_end_too():
    """Issue 28.4: a silent decoder changed a light and left nothing in the log."""
    state = ConsoleState()
    state.apply(Message("heartbeat", {"service": "decoder"}, seq=1, boot="1" * 16, time=100.0), "decoder")
    heard = state.last_seen["decoder"]
    assert state.check_silence(5.0, now=heard + 4.0) == []
    assert state.check_silence(5.0, now=heard + 6.0) == ["decoder"]
    assert state.check_silence(5.0, now=heard + 60.0) == ["decoder"]
    state.apply(Message("heartbeat", {"service": "decoder"}, seq=2, boot="1" * 16, time=200.0), "decoder")
    texts = [e.text for e in state.log]
    assert texts == ["decoder silent for over 5 s", "decoder heard from again"]
    assert state.log[0].time == heard + 5.0  # when it became a silence, as a rebuilt one says


def test_a_logged_event_and_a_results_age_keep_the_time_they_happened():
    """Issue 28.4: every past event showed the reopen time; re-sent results reset their ages."""
    state = ConsoleState()
    state.apply(Message("run_ended", {"run": 1, "n_volumes": 3, "reason": "complete"}, seq=1, boot="1" * 16,
                        time=1000.0), "scanner")
    state.apply(Message("result", {"run": 1, "trial": 0, "stage": "retrieval", "top_ids": ["a"], "top_scores": [0.5]},
                        seq=1, boot="2" * 16, time=1500.0), "decoder")
    assert [e.time for e in state.log] == [1000.0]
    assert state.trials[(1, 0, "realtime")].received == 1500.0 and state.result_age(now=1560.0) == 60.0


def test_a_replay_rebuilds_restarts_silences_and_the_left_open_warning(tmp_path):
    """Round 4: a late or replayed console showed no restart, no silence and no 'run 3 left open'."""
    from rtdecode.tools.replay import session_messages
    from rtdecode.wire.lifecycle import note_alive, record_start, record_warning

    folder = SessionFolder(tmp_path / "sessions", "01", "01").create()
    record_start(folder.path, "scanner", "a" * 16, when=1000.0)
    note_alive(folder.path, 1100.0)
    record_warning(folder.path, "scanner", "run 3 left open: series 9 was still arriving", 1100.5)
    record_start(folder.path, "scanner", "b" * 16, when=1130.0)  # 30 s without a word
    note_alive(folder.path, 1200.0)
    record_start(folder.path, "scanner", "c" * 16, when=1202.0)  # back within the limit: no silence
    state = ConsoleState(replay=True)
    for msg in session_messages(folder.path):
        state.apply(msg, "scanner")
    assert state.restarts == {"scanner": 2}
    assert [(e.time, e.text) for e in state.log] == [
        (1000.0, "session sub-01 ses-01"),  # when it began, not at its first run
        (1100.5, "run 3 left open: series 9 was still arriving"),
        (1105.0, "scanner side silent for over 5 s"), (1130.0, "scanner side restarted"),
        (1130.0, "scanner side heard from again"), (1202.0, "scanner side restarted")]


def test_a_file_set_aside_before_the_first_run_names_the_next_participant(tmp_path, small_run):
    """Round 4 (3): a console opened for participant 2 showed set-aside lines without the session."""
    cfg = make_config(tmp_path, session={"subject": "02"}, network={"events_port": free_port(), "control_port": 0})
    sub = Subscriber(f"tcp://127.0.0.1:{cfg.network.events_port}", topics=("volume_rejected",))
    try:
        with SideThread(cfg, n=10_000, timeout=120) as st:
            time.sleep(0.5)  # the subscription reaches the publisher
            one = tmp_path / "one.dcm"  # a stray single slice: set aside
            write_enhanced(one, small_run.volumes[0][:, :, :1], small_run.affine, series_number=99, instance=1)
            _put(cfg.scanner.watch_dir, format_name(PATTERN, 99, 0), one.read_bytes())
            got = None
            deadline = time.monotonic() + 60
            while got is None and time.monotonic() < deadline:
                got = sub.recv(timeout_ms=100)
            st.side.stop()
    finally:
        sub.close()
    assert got is not None, "no file set aside was announced"
    state = ConsoleState()
    state.apply(got, "scanner")
    assert state.identity.get("subject") == "02" and got.fields["subject"] == "02"
    assert state.log[-1].text.startswith("file set aside: not a volume"), state.log[-1].text


def test_a_runs_end_line_says_how_many_volumes_are_missing(tmp_path, small_run, caplog):
    """Round 4 (8): the scanner side's run-end line gave the volumes stored, not how many were missing."""
    cfg = make_config(tmp_path, scanner={"volumes_per_run": 6, "missing_timeout_s": 1.0})
    caplog.set_level(logging.INFO, logger="rtdecode.scanner.volumes")
    with SideThread(cfg, n=10_000, timeout=120) as st:
        for t in (0, 1, 2, 4, 5):  # volume 4 (index 3) never comes
            _put(cfg.scanner.watch_dir, format_name(PATTERN, 7, t), _dicom_bytes(tmp_path, small_run, t, series=7))
        assert _wait(lambda: any("ended" in r.getMessage() for r in caplog.records), 60)
        st.side.stop()
    ended = [r.getMessage() for r in caplog.records if "ended" in r.getMessage()]
    assert ended == ["run 1 ended (complete): 5 volumes stored, 1 missing"], ended
