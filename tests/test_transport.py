import time

import numpy as np
import zmq

from rtdecode.protocol import Message
from rtdecode.transport import Publisher, Subscriber


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
        got = _recv_first(sub, pub, Message("status", {"state": "watching"}, arrays={"a": np.ones((2, 3), np.float32)}))
        assert got is not None and got.fields["state"] == "watching"
        assert got.arrays["a"].shape == (2, 3)
        assert got.seq >= 1
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
