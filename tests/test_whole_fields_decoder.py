"""Whole-field validation at the decoder (issue 27, defect 6): no beta's field can stop it or poison its --out.

A real ``rtdecode decode`` process on 127.0.0.1, fed raw frames (our own encoder refuses these fields),
stopped and started again on the --out it wrote; ``rtdecode console --decoded`` on that folder.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
import zmq
from hypothesis import example, given
from hypothesis import strategies as st
from test_whole_fields import FUZZ, _ping, _process, _recv, _scanner, fuzz

from models.folder import write_model_folder
from models.mindeye2.config import standin_config
from models.mindeye2.model import MindEye2
from rtdecode.base.ids import IMAGE_ID
from rtdecode.base.session import SessionFolder, read_tsv
from rtdecode.decoder.results import retrieval_message, session_stores, stem
from rtdecode.gallery.builtin import StimulusSet
from rtdecode.scanner.history import mark_events
from rtdecode.wire.protocol import Message, encode
from rtdecode.wire.reliable import beta_message
from rtdecode.wire.schema import LABEL, UID, VERSION
from rtdecode.wire.sockets import Subscriber, make_socket

from conftest import free_port

N_VOXELS = 40
UID_A = "a" * 32
SESSION_A = {"subject": "01", "session": "01", "session_uid": UID_A}


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
        assert 0 < len(sent) < next(count) - 1, "the fuzz must both pass and fail the schema"
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


@pytest.mark.slow
def test_folders_an_older_rtdecode_wrote_with_such_fields_still_start(tmp_path, small_run, model_folder):
    """Rows written before this fix ('realtime ' for 'realtime\\n') are skipped with one line at start."""
    cmd, control, _ = _scanner(tmp_path)
    folder = SessionFolder(tmp_path / "sessions", "01", "01").create()
    (folder.path / "marks.tsv").write_text("time\trun\ttrial\tversion\tbad\tnote\n1.0\t1\t0\trealtime \t1\t\n"
                                           "2.0\t1\t1\tendofrun\t1\tmoved\n")
    log = tmp_path / "run.log"
    with _process(cmd, log) as proc:
        _ping(proc, control, log)
    assert "marks.tsv: row" in log.read_text() and [m.fields["trial"] for m in mark_events(folder.marks())] == [1]
    out = tmp_path / "out"
    for label, uid, image in (("09", "c" * 32, "sim-00001 "), ("08", "d" * 32 + "\n", "sim-00001")):
        key = f"{uid}:1:0:realtime".replace("\n", " ")  # as the old writer wrote it
        (out / f"sub-{label}" / "ses-01").mkdir(parents=True)
        (out / f"sub-{label}" / "ses-01" / "session.json").write_text(json.dumps(
            {"subject": label, "session": "01", "session_uid": uid}))
        (out / f"sub-{label}" / "ses-01" / "results.tsv").write_text(
            "key\trun\ttrial\tversion\timage\ttop_ids\ttop_scores\tbackbone_ms\tretrieval_ms\tprior_ms\tt_received"
            f"\tt_done\n{key}\t1\t0\trealtime\t{image}\tsim-00001\t0.5\t1\t1\t1\t1.0\t1.0\n")
    cmd, betas, _ = _decoder(tmp_path, model_folder)
    log = tmp_path / "decode.log"
    with _process(cmd, log) as proc, _betas_socket(betas) as sock:
        assert _acked(sock, 0, proc, log) == []
    text = log.read_text()
    assert "not published again" in text and "sub-08/ses-01/session.json: not a session's identity" in text




def test_ctrl_c_stops_a_decoder_whose_parent_ignored_it(tmp_path, model_folder):
    """A child inherits an ignored SIGINT; the decoder then sat out every Ctrl-C until SIGKILL (30 s per stop
    inside the full test suite, whose runner had SIGINT ignored by then)."""
    import signal

    cmd, betas, _ = _decoder(tmp_path, model_folder)
    log = tmp_path / "decode.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
        try:
            with _betas_socket(betas) as sock:
                assert _acked(sock, 0, proc, log) == []  # up and serving
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                pytest.fail(f"rtdecode decode ignored Ctrl-C:\n{log.read_text()[-2000:]}")
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
