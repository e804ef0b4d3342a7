"""Whole-field validation (issue 27, defect 6): no received field can make a later start fail.

Real processes on 127.0.0.1: ``rtdecode run`` started from ``rtdecode config template``'s file and
``rtdecode decode``, each stopped and started again on the folder it wrote; the console's state fed
through a real subscriber, and ``rtdecode console --replay`` on both folders. Hostile fields are sent
as raw frames (our own encoder refuses them): trailing and leading newlines, \\r, \\t, NUL, U+2028,
lone surrogates, very long and empty strings, wrong types.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
import zmq
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st
from test_scanner_side import PATTERN, _dicom_bytes, _put

from gui.state import ConsoleState
from models.folder import write_model_folder
from models.mindeye2.config import standin_config
from models.mindeye2.model import MindEye2
from rtdecode.cli import main as cli_main
from rtdecode.decoder.results import retrieval_message, session_stores, stem
from rtdecode.gallery.builtin import StimulusSet
from rtdecode.scanner.history import mark_events
from rtdecode.session import SessionFolder, read_tsv
from rtdecode.simulator.scanner import format_name
from rtdecode.wire.control import send_command
from rtdecode.wire.protocol import Message, decode, encode
from rtdecode.wire.reliable import beta_message
from rtdecode.wire.schema import IMAGE_ID, LABEL, UID, VERSION
from rtdecode.wire.sockets import Subscriber, make_socket

from conftest import free_port

N_VOXELS = 40
UID_A = "a" * 32
SESSION_A = {"subject": "01", "session": "01", "session_uid": UID_A}
JUNK = ["\n", "\r", "\t", "\x00", "\u2028", "\u2029", "\x85", "\ud800", " ", "\r\n", "\x0b", "/", "..", ":", '"']
FUZZ = settings(max_examples=40, derandomize=True, deadline=None, database=None, phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck))


def fuzz(valid: str) -> st.SearchStrategy:
    """A field near ``valid``: itself, with junk before, after or inside, anything, or not a string."""
    junk = st.sampled_from(JUNK) | st.text(min_size=1, max_size=6)
    return st.one_of(st.just(valid), st.builds(lambda j: valid + j, junk), st.builds(lambda j: j + valid, junk),
                     st.builds(lambda i, j: valid[:i] + j + valid[i:], st.integers(0, len(valid)), junk),
                     st.text(max_size=40), st.just(""), st.just(valid * 400), st.integers() | st.none() | st.booleans())


def _header(mtype: str, fields: dict, seq: int = 1) -> list[bytes]:
    """Raw frames of a message, fields unchecked (what a hostile or broken peer can send)."""
    head = {"v": 2, "type": mtype, "seq": seq, "time": time.time(), "boot": "0123456789abcdef", "frames": [], **fields}
    return [mtype.encode(), json.dumps(head).encode()]


def _recv(sock: zmq.Socket, seconds: float) -> Message | None:
    if not sock.poll(int(seconds * 1000), zmq.POLLIN):
        return None
    return decode(sock.recv_multipart())


# -- the scanner side ----------------------------------------------------------------------------------
def _template(tmp_path: Path, values: dict[str, object]) -> Path:
    """``rtdecode config template``'s file with ``values`` ({"section.key": value}) set in place."""
    path = tmp_path / "session.toml"
    assert cli_main(["config", "template", str(path)]) == 0
    lines, section, values = path.read_text().splitlines(), "", dict(values)
    for i, line in enumerate(lines):
        if line.startswith("["):
            section = line.strip("[]")
        elif f"{section}.{line.split(' = ')[0]}" in values:
            lines[i] = f"{line.split(' = ')[0]} = {json.dumps(values.pop(section + '.' + line.split(' = ')[0]))}"
    assert not values, f"not in the template: {values}"
    path.write_text("\n".join(lines) + "\n")
    return path


@contextmanager
def _process(cmd: list[str], log: Path):
    """A real process, stopped as an operator would (Ctrl-C) when the block ends."""
    with open(log, "a") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env={**os.environ})
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)


def _scanner(tmp_path: Path) -> tuple[list[str], str, str]:
    ports = {"network.events_port": free_port(), "network.control_port": free_port()}
    cfg = _template(tmp_path, {"session.root": str(tmp_path / "sessions"), "scanner.watch_dir": str(tmp_path / "watch"),
                               "scanner.volumes_per_run": 12, "scanner.quarantine_dir": str(tmp_path / "rejected"),
                               **ports, "network.betas_port": free_port(), "network.results_port": free_port()})
    (tmp_path / "watch").mkdir()
    cmd = [sys.executable, "-m", "rtdecode.cli", "run", "--config", str(cfg), "--quiet"]
    return cmd, f"tcp://127.0.0.1:{ports['network.control_port']}", f"tcp://127.0.0.1:{ports['network.events_port']}"


def _ping(proc: subprocess.Popen, control: str, log: Path, seconds: float = 90) -> None:
    """Wait until the scanner side answers a harmless command; fail with its log if it died."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and proc.poll() is None:
        fields = {"run": 99, "trial": 0, "version": "realtime", "bad": False}
        if send_command(control, "mark", timeout_ms=1000, fields=fields) is not None:
            return
    pytest.fail(f"rtdecode run did not answer (exit {proc.poll()}):\n{log.read_text()[-3000:]}")


def _first_run(tmp_path: Path, small_run, folder: SessionFolder) -> None:
    for t in range(3):
        _put(tmp_path / "watch", format_name(PATTERN, 7, t), _dicom_bytes(tmp_path, small_run, t, series=7))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (folder.runs() and len(folder.run_store(1).load()[0]) == 3):
        time.sleep(0.1)
    assert folder.runs(), "run 1 was not stored"


def _command(control: str, fields: dict, seconds: float = 10) -> Message | None:
    sock = make_socket(zmq.DEALER)
    sock.connect(control)
    try:
        sock.send_multipart(_header("command", fields))
        return _recv(sock, seconds)
    finally:
        sock.close(linger=0)


@pytest.mark.slow
def test_a_mark_with_a_trailing_newline_is_refused_and_the_next_start_succeeds(tmp_path, small_run):
    """Before: the mark was stored as version 'realtime ' and the next `rtdecode run` refused the session."""
    cmd, control, _ = _scanner(tmp_path)
    log = tmp_path / "run.log"
    folder = SessionFolder(tmp_path / "sessions", "01", "01")
    with _process(cmd, log) as proc:
        _ping(proc, control, log)
        _first_run(tmp_path, small_run, folder)
        reply = _command(control, {"action": "mark", "run": 1, "trial": 0, "version": "realtime\n", "bad": True})
        _ping(proc, control, log)
    with _process(cmd, log) as proc:
        _ping(proc, control, log)
        assert proc.poll() is None
    assert reply is not None and reply.fields["ok"] is False and "command.version" in reply.fields["detail"]
    assert folder.marks() == []


def _scanner_marks_read_back(folder: SessionFolder, published: list[Message]) -> None:
    """Every stored mark rebuilds a valid message equal to the one published when it was taken."""
    rows = folder.marks()
    stored = [(int(r["run"]), int(r["trial"]), r["version"], r["bad"] == "1", r["note"]) for r in rows]
    sent = [(m.fields["run"], m.fields["trial"], m.fields["version"], m.fields["bad"], m.fields.get("note", ""))
            for m in published if m.type == "mark"]
    assert stored == sent
    for msg in mark_events(rows):
        encode(msg)
    for row in folder.operator_log():
        assert set(row) == {"time", "action", "run", "detail"} and None not in row.values()


@pytest.mark.slow
def test_fuzzed_commands_never_poison_the_session_folder(tmp_path, small_run):
    """Property: whatever the control socket took is stored so it reads back through the schema, equal
    to what was published, and `rtdecode run` and `rtdecode console --replay` start on that folder."""
    cmd, control, events = _scanner(tmp_path)
    log = tmp_path / "run.log"
    folder = SessionFolder(tmp_path / "sessions", "01", "01")
    with _process(cmd, log) as proc:
        _ping(proc, control, log)
        _first_run(tmp_path, small_run, folder)
        sub = Subscriber(events, topics=("mark",))
        time.sleep(0.5)
        sock = make_socket(zmq.DEALER)
        sock.connect(control)

        @FUZZ
        @given(action=st.sampled_from(["mark"] * 4 + ["stop_run", "start_run"]) | fuzz("mark"),
               run=st.just(1) | fuzz("1"), trial=st.integers(0, 3) | fuzz("2"), version=fuzz("realtime"),
               bad=st.booleans() | fuzz("true"), note=st.none() | fuzz("moved") | st.text(max_size=300))
        @example(action="mark", run=1, trial=0, version="realtime\n", bad=True, note=None)
        @example(action="mark", run=1, trial=1, version="endofrun", bad=True, note="\ud800")
        @example(action="mark", run=1, trial=1, version="endofrun", bad=True, note='"quoted\tnote\\n"\x00\u2028')
        def one(action, run, trial, version, bad, note) -> None:
            fields = {"action": action, "run": run, "trial": trial, "version": version, "bad": bad}
            sock.send_multipart(_header("command", fields if note is None else {**fields, "note": note}))
            sock.send_multipart(encode(Message("command", {"action": "mark", "run": 99, "trial": 0,
                                                           "version": "realtime", "bad": False})))
            for _ in range(3):  # the command's reply (if it gets one), then the ping's
                reply = _recv(sock, 20)
                assert reply is not None, f"no reply; rtdecode run exit {proc.poll()}:\n{log.read_text()[-2000:]}"
                if "no run 99" in reply.fields["detail"]:
                    return
            pytest.fail("more than one reply to one command")

        one()
        sock.close(linger=0)
        published = []
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and len(published) < len(folder.marks()):
            msg = sub.recv(timeout_ms=100)
            published += [msg] if msg is not None else []
        sub.close()
        assert proc.poll() is None
    _scanner_marks_read_back(folder, published)
    with _process(cmd, log) as proc:
        _ping(proc, control, log)
        late = Subscriber(events, topics=("mark",))
        replayed = {}
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and len(replayed) < len(mark_events(folder.marks())):
            msg = late.recv(timeout_ms=100)
            if msg is not None:
                replayed[(msg.fields["run"], msg.fields["trial"], msg.fields["version"])] = msg.fields
        late.close()
    assert list(replayed.values()) == [m.fields for m in mark_events(folder.marks())]
    shot = tmp_path / "replay.png"
    done = subprocess.run([sys.executable, "-m", "rtdecode.cli", "console", "--replay", str(folder.path),
                           "--screenshot", str(shot)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and shot.exists(), done.stderr[-2000:]


# -- the decoder ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    torch.manual_seed(0)
    folder = write_model_folder(MindEye2(standin_config(["sim01"], [N_VOXELS], hidden=32)),
                                tmp_path_factory.mktemp("model"), "sim01")
    gallery = tmp_path_factory.mktemp("gallery")
    StimulusSet().save(gallery, range(12))
    return folder, gallery


def _decoder(tmp_path: Path, model_folder) -> tuple[list[str], str, str]:
    betas, results = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    folder, gallery = model_folder
    return ([sys.executable, "-m", "rtdecode.cli", "decode", "--model", str(folder), "--gallery", str(gallery),
             "--out", str(tmp_path / "out"), "--betas", betas, "--results", results], betas, results)


def _beta(trial: int, run: int = 1, changes: dict | None = None) -> list[bytes]:
    """A beta's frames with header fields replaced by ``changes`` (unchecked)."""
    frames = encode(beta_message(run, trial, np.random.default_rng(trial).normal(size=N_VOXELS), SESSION_A,
                                 image=f"sim-{trial % 12:05d}"))
    header = json.loads(frames[1])
    header.update(changes or {})
    return [frames[0], json.dumps(header).encode(), *frames[2:]]


def _acked(sock: zmq.Socket, probe: int, proc: subprocess.Popen, log: Path) -> list[str]:
    """Send a good beta (trial ``probe``) and take acks up to its own: what came before it, in order."""
    sock.send_multipart(_beta(probe))
    refs = []
    while True:
        ack = _recv(sock, 30)
        assert ack is not None, f"no ack; rtdecode decode exit {proc.poll()}:\n{log.read_text()[-3000:]}"
        if ack.fields["ref"] == f"{UID_A}:1:{probe}:realtime":
            return refs
        refs.append(ack.fields["ref"])


@contextmanager
def _betas_socket(address: str):
    sock = make_socket(zmq.DEALER)
    sock.connect(address)
    try:
        yield sock
    finally:
        sock.close(linger=0)


@pytest.mark.slow
def test_betas_with_a_trailing_newline_are_refused_and_the_decoder_serves_on_and_restarts(tmp_path, model_folder):
    """Before: a session_uid ending in '\\n' made the decoder exit at once (its ack failed the schema); an
    image id 'sim-00001\\n' was stored as 'sim-00001 ' and the next `rtdecode decode` on that --out exited."""
    cmd, betas, _ = _decoder(tmp_path, model_folder)
    log = tmp_path / "decode.log"
    with _process(cmd, log) as proc, _betas_socket(betas) as sock:
        sock.send_multipart(_beta(5, changes={"session_uid": UID_A + "\n"}))
        assert _acked(sock, 0, proc, log) == []
        sock.send_multipart(_beta(6, changes={"image": "sim-00001\n"}))
        assert _acked(sock, 1, proc, log) == []
        assert proc.poll() is None
    with _process(cmd, log) as proc, _betas_socket(betas) as sock:
        assert _acked(sock, 2, proc, log) == []
    text = log.read_text()
    assert "beta.session_uid: expected" in text and "beta.image: expected" in text
    assert [r["key"] for r in read_tsv(tmp_path / "out" / "sub-01" / "ses-01" / "results.tsv")] == \
        [f"{UID_A}:1:{t}:realtime" for t in range(3)]


def _decoder_folder_reads_back(out: Path) -> int:
    """Every decoded session folder: its identity and every row rebuild valid messages; rows in all."""
    n = 0
    for store in session_stores(out, readonly=True):
        ident = store.identity
        encode(Message("status", {"state": "ok", **ident}))
        assert store.folder == out / f"sub-{ident['subject']}" / f"ses-{ident['session']}"
        for row in store.rows():
            encode(retrieval_message(row, ident))
            encode(Message("ack", {"ref": row["key"]}))
            assert row["key"].startswith(ident["session_uid"] + ":")
            assert (store.folder / "tokens" / f"{stem(row['key'])}.npy").exists()
            n += 1
        for row in read_tsv(store.folder / "refused.tsv"):
            encode(Message("ack", {"ref": row["key"]}))
    return n


@pytest.mark.slow
def test_fuzzed_betas_never_stop_the_decoder_or_poison_its_out(tmp_path, model_folder):
    """Property: the decoder serves on through every fuzzed beta; what it stored reads back through the
    schema equal to what came, and `rtdecode decode` and `rtdecode console --decoded` start on it."""
    cmd, betas, results = _decoder(tmp_path, model_folder)
    log = tmp_path / "decode.log"
    sent: dict[str, dict] = {}
    with _process(cmd, log) as proc, _betas_socket(betas) as sock:
        count = iter(range(1, 10**6))

        @FUZZ
        @given(changes=st.fixed_dictionaries({}, optional={
            "image": fuzz("sim-00003") | st.from_regex(IMAGE_ID, fullmatch=True),
            "version": fuzz("endofrun") | st.from_regex(VERSION, fullmatch=True),
            "subject": fuzz("01") | st.from_regex(LABEL, fullmatch=True),
            "session": fuzz("01"), "session_uid": fuzz(UID_A) | st.from_regex(UID, fullmatch=True),
            "run": fuzz("2"), "trial": fuzz("7")}))
        @example(changes={"session_uid": UID_A + "\n"})
        @example(changes={"image": "sim-00001\n", "version": "realtime\n"})
        @example(changes={"subject": "02\n", "session_uid": "b" * 32})
        def one(changes: dict) -> None:
            i = next(count)
            fields = {"run": 2, "trial": i, "image": f"sim-{i % 12:05d}", "version": "realtime", **SESSION_A, **changes}
            sock.send_multipart(_beta(i, run=2, changes=changes))
            for ref in _acked(sock, 1000 + i, proc, log):
                sent[ref] = fields

        one()
        assert proc.poll() is None
    n_rows = _decoder_folder_reads_back(tmp_path / "out")
    rows = {r["key"]: r for s in session_stores(tmp_path / "out", readonly=True) for r in s.rows()}
    for ref, fields in sent.items():  # every beta taken reads back equal to what came
        assert (rows[ref]["image"], rows[ref]["version"]) == (fields["image"], fields["version"])
    with _process(cmd, log) as proc, _betas_socket(betas) as sock:
        late = Subscriber(results, topics=("result",))
        assert _acked(sock, 99_999, proc, log) == []
        got = set()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len(got) < n_rows + 1:
            msg = late.recv(timeout_ms=100)
            if msg is not None:
                got.add((msg.fields["session_uid"], msg.fields["run"], msg.fields["trial"], msg.fields["version"]))
        late.close()
    assert len(got) == n_rows + 1  # every stored row published again by the restarted decoder
    shot = tmp_path / "decoded.png"
    done = subprocess.run([sys.executable, "-m", "rtdecode.cli", "console", "--decoded",
                           str(tmp_path / "out" / "sub-01" / "ses-01"), "--screenshot", str(shot)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and shot.exists(), done.stderr[-2000:]


# -- the console ---------------------------------------------------------------------------------------
CONSOLE_BASE = {
    "run_started": {"run": 1, "series": 7, "shape": [26, 30, 20], "n_voxels": 100, **SESSION_A},
    "trial": {"run": 1, "trial": 2, "image": "sim-00002", "version": "realtime", "onset": 3.0},
    "mark": {"run": 1, "trial": 2, "version": "realtime", "bad": True, "note": "moved"},
    "status": {"state": "watching", "service": "scanner", "reason": "ok"},
    "volume_rejected": {"path": "001_000007_000003.dcm", "reason": "not a volume"},
    "result": {"run": 1, "trial": 2, "version": "realtime", "image": "sim-00002", "stage": "retrieval",
               "top_ids": ["sim-00002", "sim-00004"], "top_scores": [0.5, 0.25], "tier": "standin", **SESSION_A},
    "heartbeat": {"service": "decoder", "model": "sim01", "gallery": 12},
}


def test_fuzzed_events_and_results_never_stop_the_console_or_enter_its_state(tmp_path):
    """Property: through a real subscriber, every fuzzed field is refused or taken whole; the console
    state keeps serving and holds only values its schema allows."""
    pub = make_socket(zmq.PUB)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    sub = Subscriber(f"tcp://127.0.0.1:{port}")
    state = ConsoleState()
    seq = iter(range(1, 10**6))
    time.sleep(0.3)

    def deliver(frames: list[bytes], marker: int) -> None:
        pub.send_multipart(frames)
        pub.send_multipart(_header("heartbeat", {"service": "decoder", "decoded": marker}, next(seq)))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and state.decoder_decoded != marker:
            msg = sub.recv(timeout_ms=50)
            if msg is not None:
                state.apply(msg, "decoder" if msg.type in ("result", "heartbeat") else "scanner")
        assert state.decoder_decoded == marker, "the console stopped taking messages"

    @FUZZ
    @given(mtype=st.sampled_from(sorted(CONSOLE_BASE)), data=st.data())
    def one(mtype: str, data) -> None:
        fields = dict(CONSOLE_BASE[mtype])
        name = data.draw(st.sampled_from(sorted(fields)))
        fields[name] = data.draw(fuzz(str(fields[name])) | st.lists(fuzz("sim-00002"), max_size=3))
        n = next(seq)
        deliver(_header(mtype, fields, n), n)

    try:
        deliver(_header("trial", {**CONSOLE_BASE["trial"], "image": "sim-00002\n"}, next(seq)), 0)
        one()
    finally:
        sub.close()
        pub.close(linger=0)
    values = [*state.identity.values()]
    for view in state.trials.values():
        values += [view.image, view.version, *view.top_ids]
        assert IMAGE_ID.fullmatch(view.image) and VERSION.fullmatch(view.version)
    assert all("\n" not in v for v in values)
    assert not state.identity or UID.fullmatch(state.identity["session_uid"])
