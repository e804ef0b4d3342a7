import time

import numpy as np
import zmq

from rtdecode.wire.protocol import Message
from rtdecode.wire.reliable import beta_message
from rtdecode.wire.sockets import Publisher, Subscriber

from conftest import ephemeral_range, free_port

SESSION = {"subject": "01", "session": "01", "session_uid": "ab" * 16}


def _recv_first(sub, pub, message, timeout=5.0):
    # PUB/SUB drops what is sent before the subscription is in place: resend until one arrives.
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pub.send(message)
        got = sub.recv(timeout_ms=100)
        if got is not None:
            return got
    return None


def test_pub_sub_over_loopback_with_random_port():
    pub = Publisher("tcp://127.0.0.1:0")
    sub = Subscriber(pub.address)
    try:
        assert pub.address.startswith("tcp://127.0.0.1:") and not pub.address.endswith(":0")
        got = _recv_first(sub, pub, beta_message(1, 2, np.ones(3), SESSION))
        assert got is not None and got.fields["session_uid"] == SESSION["session_uid"]
        assert got.arrays["beta"].shape == (3,)
        assert got.seq >= 1 and got.boot == pub.boot
    finally:
        sub.close()
        pub.close()


def test_subscriber_logs_and_survives_malformed_messages(caplog):
    ctx = zmq.Context.instance()
    raw = ctx.socket(zmq.PUB)
    raw.setsockopt(zmq.LINGER, 0)
    port = raw.bind_to_random_port("tcp://127.0.0.1")
    sub = Subscriber(f"tcp://127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + 5
        while sub.rejected == 0 and time.monotonic() < deadline:
            raw.send_multipart([b"volume", b"{not json"])
            assert sub.recv(timeout_ms=100) is None
        assert sub.rejected >= 1
        assert "rejected message" in caplog.text
        assert sub.recv(timeout_ms=10) is None  # nothing else pending, and no exception
    finally:
        sub.close()
        raw.close(linger=0)


def test_a_late_subscriber_catches_up_from_the_latest_state():
    import time

    from rtdecode.wire.sockets import Publisher, Subscriber

    pub = Publisher("tcp://127.0.0.1:0", replay=3)
    try:
        for trial in range(5):  # nobody listens yet
            pub.send(Message("result", {"run": 1, "trial": trial}))
        late = Subscriber(pub.address, topics=("result",))
        got = []
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and len(got) < 3:
            pub.serve()
            msg = late.recv(timeout_ms=50)
            if msg is not None:
                got.append(msg)
        late.close()
    finally:
        pub.close()
    assert [m.fields["trial"] for m in got] == [2, 3, 4]  # the latest three, in order, with their own seq
    assert [m.seq for m in got] == [3, 4, 5]


def test_bench_wire_runs_and_reports_every_figure():
    import numpy as np

    from rtdecode.wire.bench import bench_wire

    picture = np.random.default_rng(0).integers(0, 256, (96, 128, 3), dtype=np.uint8)
    result = bench_wire(picture, n_voxels=300, n=20)
    assert result["betas"] == 20 and result["png_bytes"] > 0
    assert 0 < result["beta_one_way_median_ms"] <= result["beta_one_way_p99_ms"]


def test_after_a_restart_only_betas_handed_to_a_decoder_are_sent_again(tmp_path):
    """A beta queued for a decoder and never acknowledged is resent; one recorded with no decoder is not."""
    import numpy as np

    from rtdecode.wire.reliable import BetaReceiver, BetaSender

    receiver = BetaReceiver("tcp://127.0.0.1:0")

    def beta(trial: int) -> Message:
        return beta_message(1, trial, np.zeros(3), SESSION, image="a")

    first = BetaSender("tcp://127.0.0.1:1", tmp_path / "acked.keys")  # no decoder listens there
    first.send(beta(0))
    first.close()
    second = BetaSender(receiver.address, tmp_path / "acked.keys", resend_s=0.2)
    try:
        second.send(beta(0), resumed=True)  # handed over before the restart: resent
        second.send(beta(1), resumed=True)  # recorded while no decoder was attached: not sent
        second.send(beta(2))  # new
        got = []
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and len(got) < 2:
            second.pump(0)
            msg = receiver.recv(timeout_ms=50)
            if msg is not None:
                got.append(msg[1].fields["trial"])
                receiver.ack(msg[0], f"{'ab' * 16}:1:{msg[1].fields['trial']}:realtime")
        assert sorted(got) == [0, 2]
        assert receiver.recv(timeout_ms=300) is None
    finally:
        second.close()
        receiver.close()


def test_ports_for_late_binding_servers_lie_below_the_source_port_range():
    # A client that connects before its server binds (the operator-day test, a restarted decoder) must not
    # be able to connect to itself: ports handed out as source ports are never chosen.
    low, _ = ephemeral_range()
    ports = {free_port() for _ in range(20)}
    assert all(1024 < p < low for p in ports) and len(ports) > 1
