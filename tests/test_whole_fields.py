"""Whole-field validation (issue 27, defect 6): no received field can make a later start fail.

Real processes on 127.0.0.1: ``rtdecode run`` started from ``rtdecode config template``'s file, stopped
and started again on the folder it wrote; the console's state fed through a real subscriber, and
``rtdecode console --replay`` on the folder. Hostile fields go as raw frames (our own encoder refuses
them): trailing and leading newlines, \\r, \\t, NUL, U+2028, lone surrogates, very long and empty
strings, wrong types. The decoder's side is in test_whole_fields_decoder.py.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import zmq
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st
from test_scanner_side import PATTERN, _dicom_bytes, _put

from gui.state import ConsoleState
from rtdecode.base.ids import IMAGE_ID
from rtdecode.base.session import SessionFolder, read_tsv
from rtdecode.cli import main as cli_main
from rtdecode.scanner.history import mark_events
from rtdecode.simulator.scanner import format_name
from rtdecode.wire.control import send_command
from rtdecode.wire.protocol import Message, decode, encode
from rtdecode.wire.schema import UID, VERSION
from rtdecode.wire.sockets import Subscriber, make_socket

from conftest import free_port

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
    assert all(re.fullmatch(r"realtime|endofrun|rt[0-9]{1,2}\.[0-9]", r["version"]) for r in rows)  # own oracle
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
                outcomes.add(reply.fields["action"] == "refused")
            pytest.fail("more than one reply to one command")

        outcomes: set[bool] = set()
        one()
        assert outcomes == {True, False}, "the fuzz must both pass and fail the schema"
        sock.close(linger=0)
        published = []
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and len(published) < len(folder.marks()):
            msg = sub.recv(timeout_ms=100)
            published += [msg] if msg is not None else []
        sub.close()
        assert proc.poll() is None
    _scanner_marks_read_back(folder, published)
    newest = {}  # every mark is re-sent in order (round 4): a trial's newest comes last
    for m in mark_events(folder.marks()):
        newest[(m.fields["run"], m.fields["trial"], m.fields["version"])] = m.fields
    with _process(cmd, log) as proc:
        _ping(proc, control, log)
        late = Subscriber(events, topics=("mark",))
        replayed = {}
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (len(replayed) < len(newest) or replayed != newest):
            msg = late.recv(timeout_ms=100)
            if msg is not None:
                replayed[(msg.fields["run"], msg.fields["trial"], msg.fields["version"])] = msg.fields
        late.close()
    assert replayed == newest
    shot = tmp_path / "replay.png"
    done = subprocess.run([sys.executable, "-m", "rtdecode.cli", "console", "--replay", str(folder.path),
                           "--screenshot", str(shot)], capture_output=True, text=True, timeout=120)
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


# -- the pieces under them -----------------------------------------------------------------------------
@settings(max_examples=300, derandomize=True, database=None)
@given(values=st.lists(st.text() | st.sampled_from(JUNK) | st.sampled_from(["\\n", "\\\\t", "\\u2028", "n/a"]),
                       min_size=2, max_size=4))
def test_a_session_table_reads_back_every_field_it_wrote(tmp_path_factory, values):
    """append_tsv / read_tsv: tabs, newlines, backslashes, quotes and lone surrogates come back equal."""
    from rtdecode.base.session import append_tsv

    path = tmp_path_factory.mktemp("tsv") / "marks.tsv"
    columns = tuple(f"c{i}" for i in range(len(values)))
    append_tsv(path, columns, dict(zip(columns, values, strict=True)))
    append_tsv(path, columns, dict(zip(columns, reversed(values), strict=True)))
    assert [list(r.values()) for r in read_tsv(path)] == [values, values[::-1]]


@pytest.mark.parametrize("field, value", [("note", "\ud800"), ("version", "endofrun\n"), ("action", "\nmark"),
                                          ("version", "real\u2028time")])
def test_a_field_is_taken_whole_and_text_only_as_utf8(field, value):
    from rtdecode.base.errors import ProtocolError

    fields = {"action": "mark", "run": 1, "trial": 0, "version": "realtime", "bad": True, field: value}
    with pytest.raises(ProtocolError, match=f"command.{field}: expected"):
        decode(_header("command", fields))


def test_our_own_text_with_an_undecodable_file_name_is_sent_visibly_escaped():
    """A file name the OS gave with bytes that are not UTF-8 never stops its sender; receivers get it
    escaped (the console refuses a lone surrogate, which a Qt label cannot show)."""
    got = decode(encode(Message("volume_rejected", {"path": "001_\udcff.dcm", "reason": "not a volume"})))
    assert got.fields["path"] == "001_\\udcff.dcm"


def test_a_session_label_or_a_file_name_with_a_final_newline_is_not_taken(tmp_path, capsys):
    """`$` let 'sub-01\\n' become a folder name; a file name matched before its final newline."""
    from rtdecode.base.naming import compile_pattern, parse_name

    assert cli_main(["config", "check", str(_template(tmp_path, {"session.subject": "01\n"}))]) == 2
    assert "session.subject must be letters and digits only" in capsys.readouterr().err
    regex = compile_pattern(PATTERN)
    assert parse_name(regex, format_name(PATTERN, 7, 1) + "\n") is None
    assert parse_name(regex, format_name(PATTERN, 7, 1)).volume == 1
