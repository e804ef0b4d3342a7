"""CURVE: an allow-listed client receives results; a client with another key, or none, receives nothing."""

from __future__ import annotations

import logging
import time

import zmq

from rtdecode.cli import main
from rtdecode.wire.protocol import Message
from rtdecode.wire.security import client_options, server_options, start_authenticator
from rtdecode.wire.sockets import Publisher, Subscriber


def test_only_allow_listed_peers_receive(tmp_path, caplog):
    for name in ("decoder", "console", "intruder"):
        assert main(["keys", name, "--folder", str(tmp_path / name)]) == 0
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / "console.key").write_bytes((tmp_path / "console" / "console.key").read_bytes())
    ctx = zmq.Context()
    auth = start_authenticator(allowed, ctx)
    server_public = tmp_path / "decoder" / "decoder.key"
    pub = Publisher("tcp://127.0.0.1:0", context=ctx, curve=server_options(tmp_path / "decoder" / "decoder.key_secret"))
    console = Subscriber(pub.address, context=ctx,
                         curve=client_options(tmp_path / "console" / "console.key_secret", server_public))
    intruder = Subscriber(pub.address, context=ctx,
                          curve=client_options(tmp_path / "intruder" / "intruder.key_secret", server_public))
    plain = Subscriber(pub.address, context=ctx)
    got = {"console": 0, "intruder": 0, "plain": 0}
    try:
        with caplog.at_level(logging.WARNING, logger="rtdecode.wire.security"):
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                pub.send(Message("heartbeat", {"service": "decoder"}))
                for name, sub in (("console", console), ("intruder", intruder), ("plain", plain)):
                    if sub.recv(timeout_ms=20) is not None:
                        got[name] += 1
                if got["console"] >= 5 and "refused a CURVE peer" in caplog.text:
                    break
    finally:
        for s in (console, intruder, plain, pub):
            s.close()
        auth.stop()
        ctx.term()
    assert got["console"] >= 5
    assert got["intruder"] == 0 and got["plain"] == 0
    assert "refused a CURVE peer with unknown public key" in caplog.text


def test_betas_channel_refuses_a_sender_without_the_right_key(tmp_path):
    import numpy as np

    from rtdecode.wire.reliable import BetaReceiver, BetaSender, beta_key, beta_message

    for name in ("decoder", "scanner", "other"):
        main(["keys", name, "--folder", str(tmp_path / name)])
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / "scanner.key").write_bytes((tmp_path / "scanner" / "scanner.key").read_bytes())
    ctx = zmq.Context()
    auth = start_authenticator(allowed, ctx)
    receiver = BetaReceiver("tcp://127.0.0.1:0", context=ctx, curve=server_options(tmp_path / "decoder" / "decoder.key_secret"))
    server_public = tmp_path / "decoder" / "decoder.key"
    good = BetaSender(receiver.address, tmp_path / "good.keys", resend_s=0.2, context=ctx,
                      curve=client_options(tmp_path / "scanner" / "scanner.key_secret", server_public))
    bad = BetaSender(receiver.address, tmp_path / "bad.keys", resend_s=0.2, context=ctx,
                     curve=client_options(tmp_path / "other" / "other.key_secret", server_public))
    beta = np.zeros(4, np.float32)
    seen = []
    try:
        session = {"subject": "01", "session": "01", "session_uid": "d" * 32}
        good.send(beta_message(1, 0, beta, session, image="a"))
        bad.send(beta_message(1, 1, beta, session, image="b"))
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not good.acked.keys:
            got = receiver.recv(timeout_ms=50)
            if got is not None:
                seen.append(got[1].fields["trial"])
                receiver.ack(got[0], beta_key(got[1].fields))
            good.pump(0)
            bad.pump(0)
    finally:
        for s in (good, bad, receiver):
            s.close()
        auth.stop()
        ctx.term()
    assert seen == [0] and good.acked.keys == {f"{'d' * 32}:1:0:realtime"} and not bad.acked.keys
