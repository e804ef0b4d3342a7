"""A scanner day's edges, each on real files and sockets: odd files, operator commands, restarts, CURVE."""

import time

import pytest
from test_scanner_side import PATTERN, _dicom_bytes, _put

from gui.state import ConsoleState
from rtdecode.base.errors import ConfigError
from rtdecode.base.session import SessionFolder
from rtdecode.simulator.dicom_writer import write_enhanced
from rtdecode.simulator.scanner import format_name
from rtdecode.wire.control import send_command
from rtdecode.wire.protocol import Message
from rtdecode.wire.security import client_options, create_keys
from rtdecode.wire.sockets import Subscriber

from conftest import SideThread, drain, make_config, wait_until


def _feed(tmp_path, watch, run, series: int, indices, pause: float = 0.0) -> None:
    """Write volumes ``indices`` of ``run`` as series ``series`` into the watch folder, as a scanner would."""
    for t in indices:
        _put(watch, format_name(PATTERN, series, t), _dicom_bytes(tmp_path, run, t, series=series))
        time.sleep(pause)


_wait = wait_until


def test_a_single_slice_first_in_a_new_series_is_set_aside_and_the_run_goes_on(tmp_path, small_run):
    """On the round-1 main this ended `rtdecode run` with a numpy ValueError: ScannerSide._deliver caught
    only IngestError around RunPreprocessor(volume) for the run's reference."""
    cfg = make_config(tmp_path)
    watch = cfg.scanner.watch_dir
    one_slice = tmp_path / "one.dcm"
    write_enhanced(one_slice, small_run.volumes[0][:, :, 9:10], small_run.affine, series_number=7, instance=1)
    with SideThread(cfg, n=11, timeout=60) as st:
        _put(watch, format_name(PATTERN, 7, 0), one_slice.read_bytes())
        time.sleep(0.3)
        _feed(tmp_path, watch, small_run, 7, range(1, 12), pause=0.03)
        st.wait()
    assert st.thread.is_alive() is False and st.indices == [(1, t) for t in range(1, 12)]
    reasons = {r["file"]: r["reason"] for r in SessionFolder(cfg.session.root, "01", "01").rejected()}
    assert "not a volume" in reasons[format_name(PATTERN, 7, 0)] and "(26, 30, 1)" in reasons[format_name(PATTERN, 7, 0)]


def test_stop_run_ends_the_run_sets_its_later_files_aside_and_a_new_series_waits_for_start(tmp_path, small_run):
    """On the round-1 main later files of a stopped series were still processed into the ended run."""
    cfg = make_config(tmp_path)
    watch = cfg.scanner.watch_dir
    with SideThread(cfg, n=99, timeout=60) as st:
        _feed(tmp_path, watch, small_run, 7, range(4))
        assert _wait(lambda: st.side.processed == 4, 20)
        reply = send_command(st.side.control.address, "stop_run", timeout_ms=5000)
        assert reply.fields["ok"] and "run 1 ended by the operator after 4 volumes" in reply.fields["detail"]
        _feed(tmp_path, watch, small_run, 7, range(4, 7))  # the scanner goes on writing the stopped series
        _feed(tmp_path, watch, small_run, 8, range(3))  # and starts another series before anyone pressed start
        folder = st.side.folder
        assert _wait(lambda: len(folder.rejected()) == 3, 10)
        time.sleep(0.5)
        assert st.side.processed == 4 and 8 not in st.side.runs  # series 8 waits, unread and in place
        assert (watch / format_name(PATTERN, 8, 0)).exists()
        reply = send_command(st.side.control.address, "start_run", timeout_ms=5000)
        assert reply.fields["ok"]
        assert _wait(lambda: st.side.processed == 7, 20)
        st.side.stop()
    assert [(e.run, e.index) for e in st.events] == [(1, t) for t in range(4)] + [(2, t) for t in range(3)]
    reasons = [r["reason"] for r in folder.rejected()]
    assert all(r.startswith("run stopped by operator") for r in reasons)
    kept = sorted(p.name.split("_", 1)[1] for p in (tmp_path / "rejected").iterdir())
    assert kept == [format_name(PATTERN, 7, t) for t in range(4, 7)]  # kept, not deleted
    rows, _ = folder.run_store(1).load()
    assert len(rows) == 4
    assert [r["action"] for r in folder.operator_log()] == ["stop_run", "start_run"]


def test_a_stopped_run_stays_stopped_after_a_restart(tmp_path, small_run):
    cfg = make_config(tmp_path)
    watch = cfg.scanner.watch_dir
    with SideThread(cfg, n=99, timeout=60) as st:
        _feed(tmp_path, watch, small_run, 7, range(3))
        assert _wait(lambda: st.side.processed == 3, 20)
        assert send_command(st.side.control.address, "stop_run", timeout_ms=5000).fields["ok"]
        st.side.stop()
    with SideThread(cfg, n=99, timeout=20) as st2:
        _put(watch, format_name(PATTERN, 7, 3), _dicom_bytes(tmp_path, small_run, 3))
        assert _wait(lambda: any(r["file"] == format_name(PATTERN, 7, 3)
                                 for r in st2.side.folder.rejected()), 10)
        assert st2.side.processed == 0 and not st2.side.book.armed
        st2.side.stop()


def test_ended_runs_release_their_preprocessor_and_glm(tmp_path, small_run):
    """On the round-1 main each ended run kept its RunPreprocessor and IncrementalGLM for the whole session."""
    cfg = make_config(tmp_path)
    watch = cfg.scanner.watch_dir
    with SideThread(cfg, n=12 + 2, timeout=60) as st:
        _feed(tmp_path, watch, small_run, 7, range(12), pause=0.02)
        _feed(tmp_path, watch, small_run, 8, range(2))
        st.wait()
    first, second = st.side.runs[7], st.side.runs[8]
    assert first.ended and first.preprocessor is None and first.held == []
    assert 1 not in st.side.betas.glms
    assert second.preprocessor is not None or second.ended


def _keys(tmp_path):
    for name in ("scanner", "console", "intruder"):
        create_keys(tmp_path / "keys" / name, name)
    allowed = tmp_path / "keys" / "allowed"
    allowed.mkdir()
    (allowed / "console.key").write_bytes((tmp_path / "keys" / "console" / "console.key").read_bytes())
    return tmp_path / "keys"


def test_curve_on_the_scanner_sides_events_and_control(tmp_path, small_run):
    """An unknown key can neither read events nor stop a run; an allowed console can do both.

    On the round-1 main these sockets had no CURVE at all (rtdecode/scanner/live.py, rtdecode/control.py)."""
    keys = _keys(tmp_path)
    cfg = make_config(tmp_path, network={"curve_secret": str(keys / "scanner" / "scanner.key_secret"),
                                         "curve_allowed": str(keys / "allowed")})
    scanner_public = keys / "scanner" / "scanner.key"
    console = client_options(keys / "console" / "console.key_secret", scanner_public)
    intruder = client_options(keys / "intruder" / "intruder.key_secret", scanner_public)
    with SideThread(cfg, n=99, timeout=60) as st:
        events = st.side.publisher.address
        friend, spy = Subscriber(events, curve=console), Subscriber(events, curve=intruder)
        plain = Subscriber(events)
        try:
            time.sleep(0.5)
            _feed(tmp_path, cfg.scanner.watch_dir, small_run, 7, range(3))
            assert _wait(lambda: st.side.processed == 3, 20)
            got_friend = drain(friend, 3.0, n_volumes=3)
            assert sum(m.type == "volume" for m in got_friend) == 3
            assert drain(spy, 1.0) == [] and drain(plain, 0.5) == []
            control = st.side.control.address
            assert send_command(control, "stop_run", timeout_ms=1500, curve=intruder) is None
            assert send_command(control, "stop_run", timeout_ms=1500) is None  # plain TCP: refused too
            assert not st.side.runs[7].ended
            reply = send_command(control, "stop_run", timeout_ms=5000, curve=console)
            assert reply is not None and reply.fields["ok"] and st.side.runs[7].ended
            assert st.side.net.refused >= 2
        finally:
            for sub in (friend, spy, plain):
                sub.close()
            st.side.stop()


@pytest.mark.parametrize("network, message", [
    ({"host": "0.0.0.0"}, "network.host = '0.0.0.0' lets other hosts reach"),
    ({"decoder": "tcp://10.1.2.3:5556"}, "network.decoder = 'tcp://10.1.2.3:5556' is another host"),
    ({"curve_allowed": "."}, "network.curve_allowed needs network.curve_secret"),
])
def test_plain_tcp_off_the_host_is_refused_in_one_line(tmp_path, network, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        make_config(tmp_path, network=network)
    if "curve_allowed" not in network:
        make_config(tmp_path, network={**network, "allow_plaintext": True})  # said on purpose: accepted


def test_decoder_refuses_a_plain_off_host_bind(tmp_path, capsys):
    from rtdecode.cli import main

    (tmp_path / "gallery").mkdir()
    assert main(["decode", "--model", str(tmp_path / "m"), "--gallery", str(tmp_path / "gallery"), "--out",
                 str(tmp_path / "out"), "--betas", "tcp://0.0.0.0:0", "--results", "tcp://127.0.0.1:0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--betas tcp://0.0.0.0:0: reachable from other hosts without CURVE" in err[0]


def test_the_console_sees_restarts_and_survives_any_field(tmp_path, small_run):
    """On the round-1 main, 0 of the messages after a restart were applied (seq filter kept forever)."""
    state = ConsoleState()
    cfg = make_config(tmp_path)
    for attempt in range(2):  # the scanner side, then the same session after a restart
        with SideThread(cfg, n=3, timeout=60) as st:
            sub = Subscriber(st.side.publisher.address)
            time.sleep(0.4)
            _feed(tmp_path, cfg.scanner.watch_dir, small_run, 7, range(3 * attempt, 3 * attempt + 3))
            got, deadline = [], time.monotonic() + 10  # after the restart the first 3 come again, as history
            while len({m.fields["index"] for m in got if m.type == "volume"}) < 3 * (attempt + 1) and time.monotonic() < deadline:
                msg = sub.recv(timeout_ms=100)
                got += [msg] if msg is not None else []
            sub.close()
            st.wait()
        for msg in got:
            state.apply(msg, "scanner")
    assert state.volume_index == list(range(6)) and state.restarts == {"scanner": 1}
    assert any(e.text == "scanner side restarted" and e.severity == "warning" for e in state.log)
    # A message whose fields no handler expected: refused and counted, never raised.
    boot = got[0].boot
    for i, bad in enumerate([{"run": 1, "index": "x"}, {"run": None}, {}]):
        assert state.apply(Message("volume", bad, seq=10_000 + i, boot=boot), "scanner") is False
    assert state.refused == 3 and "volume from scanner" in state.last_refused
    assert state.apply(Message("heartbeat", {"service": "decoder", "queue": 2, "decoded": 5},
                               seq=1, boot="0" * 16), "decoder")
    assert state.decoder_queue == 2


def test_the_console_window_stays_up_on_malformed_messages(qtbot, windows):
    """A raw publisher sends valid envelopes with wrong fields: the feed refuses and counts them.

    On the round-1 main a malformed field raised inside the Qt timer callback and aborted the process."""
    import zmq

    from gui.console import ConsoleWindow
    from gui.feed import LiveFeed
    from rtdecode.wire.protocol import encode

    raw = zmq.Context.instance().socket(zmq.PUB)
    raw.setsockopt(zmq.LINGER, 0)
    port = raw.bind_to_random_port("tcp://127.0.0.1")
    state = ConsoleState()
    window = windows(ConsoleWindow(state))
    feed = LiveFeed(state, [window], f"tcp://127.0.0.1:{port}", None, interval_ms=20)
    good = encode(Message("volume", {"run": 1, "index": 0, "motion": [0.0] * 6, "fd": 0.0, "dvars": 1.0,
                                     "tsnr": 1.0, "latency_ms": 3.0}))
    bad = good[1].replace(b'"fd":0.0', b'"fd":"lots"')
    try:
        deadline = time.monotonic() + 10
        while state.refused < 3 and time.monotonic() < deadline:
            raw.send_multipart([good[0], bad])
            raw.send_multipart([b"volume", b"{]"])
            qtbot.wait(30)
        raw.send_multipart(good)
        qtbot.waitUntil(lambda: len(state.volume_index) == 1, timeout=5000)
    finally:
        feed.close()
        raw.close(linger=0)
    assert state.refused >= 3 and "refused" in window.status.text()


@pytest.mark.slow
def test_bench_endurance_drives_the_whole_scanner_side():
    # Through rtdecode.tools.bench, which hands the simulator's volumes to the scanner side's bench.
    from rtdecode.tools.bench import bench_endurance

    result = bench_endurance(volumes=40, run_volumes=20, shape=(40, 46, 36), n_voxels=1500)
    assert result["runs"] == 2 and result["volumes"] == 40
    assert result["betas_acknowledged"] > 0  # real-time and end-of-run betas went over the channel
    assert result["rss_last_run_mb"] > 0 and isinstance(result["within_target"], bool)


def test_console_curve_options_need_both_halves(capsys):
    from gui.app import main as gui_main

    assert gui_main(["--curve-scanner-key", "x.key"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "need --curve-secret" in err[0]
