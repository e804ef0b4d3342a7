"""The betas channel: acknowledged delivery from the scanner side to the decoder.

The decoder binds a ROUTER; the scanner side connects a DEALER (ZeroMQ reconnects by itself when a
decoder restarts). Every beta carries a key (session uid:run:trial:version, from validated fields only).
The sender keeps each beta until
the decoder acknowledges that key, resends what is unacknowledged every ``resend_s``, and records
acknowledged keys in a ledger file so a restarted scanner side does not resend them. The decoder
records each key it has decoded before acknowledging it, and acknowledges a repeat without decoding
it again: delivery is at least once, decoding exactly once.
"""

from __future__ import annotations

import logging
import os
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
import zmq

from rtdecode.base.errors import ProtocolError
from rtdecode.wire.protocol import MAX_FRAME_BYTES, Message, decode, encode, new_boot_id
from rtdecode.wire.sockets import bind, make_socket

log = logging.getLogger(__name__)


def beta_key(fields: dict) -> str:
    """``uid:run:trial:version`` of a validated beta (see rtdecode.wire.schema.KEY)."""
    return f"{fields['session_uid']}:{int(fields['run'])}:{int(fields['trial'])}:{fields.get('version', 'realtime')}"


def beta_message(run: int, trial: int, beta, identity: dict[str, str], image: str = "", version: str = "realtime",
                 **extra) -> Message:
    """A ``beta`` message: the fields every beta needs, ``identity`` (subject, session, session_uid) and extras."""
    return Message("beta", {"run": run, "trial": trial, "image": image, "version": version, **identity, **extra},
                   arrays={"beta": np.asarray(beta, np.float32)})


class Ledger:
    """An append-only file of keys (one per line, fsynced). A line torn by a crash was never committed:
    it is cut off when the ledger is opened, so the next key starts on a line of its own."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.keys: set[str] = set()
        if self.path.exists():
            data = self.path.read_bytes()
            if data and not data.endswith(b"\n"):
                data = data[: data.rfind(b"\n") + 1]
                with open(self.path, "r+b") as fh:
                    fh.truncate(len(data))
                    os.fsync(fh.fileno())
            self.keys = {line for line in data.decode(errors="replace").split("\n") if line}

    def __contains__(self, key: str) -> bool:
        return key in self.keys

    def add(self, key: str) -> None:
        if key not in self.keys:
            with open(self.path, "ab") as fh:
                fh.write(key.encode() + b"\n")
                fh.flush()
                os.fsync(fh.fileno())
            self.keys.add(key)


class BetaSender:
    """DEALER side (scanner side). Call :meth:`send` for each beta and :meth:`pump` from the loop."""

    def __init__(self, address: str, ledger: str | Path, resend_s: float = 2.0,
                 context: zmq.Context | None = None, curve: dict | None = None, queued: str | Path | None = None,
                 max_bytes: int = MAX_FRAME_BYTES) -> None:
        self._sock = make_socket(zmq.DEALER, context, curve, max_bytes)
        self._sock.setsockopt(zmq.SNDHWM, 100_000)
        self._sock.connect(address)
        self.boot = new_boot_id()
        self.acked = Ledger(ledger)
        # Betas handed over for a decoder: after a restart only these are sent again, so a session's
        # earlier runs recorded with no decoder attached (a calibration hour) are not decoded late.
        self.queued = Ledger(queued or Path(ledger).with_name(Path(ledger).stem + "-queued.keys"))
        self.outbox: OrderedDict[str, tuple[Message, float]] = OrderedDict()
        self.resend_s = resend_s
        self.sent = 0

    def send(self, message: Message, resumed: bool = False) -> None:
        """Queue a beta until the decoder acknowledges it; ``resumed``: one read back after a restart."""
        key = beta_key(message.fields)
        if key in self.acked or key in self.outbox or (resumed and key not in self.queued):
            return
        if not resumed:
            self.queued.add(key)
        message.boot = self.boot
        self.outbox[key] = (message, time.monotonic())
        self._transmit(message)

    def _transmit(self, message: Message) -> None:
        try:
            self._sock.send_multipart(encode(message), flags=zmq.NOBLOCK, copy=False)
            self.sent += 1
        except zmq.Again:
            pass  # the decoder is away; the resend timer tries again

    def pump(self, timeout_ms: int = 0) -> int:
        """Take acknowledgements (waiting up to ``timeout_ms`` for the first) and resend stale betas."""
        taken = 0
        while self._sock.poll(timeout_ms if taken == 0 else 0, zmq.POLLIN):
            frames = self._sock.recv_multipart()
            try:
                msg = decode(frames)
            except ProtocolError as exc:
                log.warning("betas channel: rejected reply: %s", exc)
                continue
            if msg.type == "ack":
                key = msg.fields["ref"]
                self.acked.add(key)
                self.outbox.pop(key, None)
                taken += 1
        now = time.monotonic()
        for key, (message, last) in list(self.outbox.items()):
            if now - last >= self.resend_s:
                self.outbox[key] = (message, now)
                self._transmit(message)
        return taken

    def close(self) -> None:
        self._sock.close(linger=0)


class BetaReceiver:
    """ROUTER side (decoder). :meth:`recv` gives (peer, message) or None; :meth:`ack` answers a peer."""

    def __init__(self, address: str, context: zmq.Context | None = None, curve: dict | None = None,
                 max_bytes: int = MAX_FRAME_BYTES) -> None:
        self._sock = make_socket(zmq.ROUTER, context, curve, max_bytes)
        self.address = bind(self._sock, address)
        self.boot = new_boot_id()
        self.rejected = 0

    def recv(self, timeout_ms: int) -> tuple[bytes, Message] | None:
        if not self._sock.poll(timeout_ms, zmq.POLLIN):
            return None
        peer, *frames = self._sock.recv_multipart()
        try:
            if not frames:
                raise ProtocolError("empty message")
            return peer, decode(frames)
        except ProtocolError as exc:
            self.rejected += 1
            log.warning("betas channel: rejected message: %s", exc)
            return None

    def ack(self, peer: bytes, key: str) -> None:
        self._sock.send_multipart([peer, *encode(Message("ack", {"ref": key}, boot=self.boot))])

    def close(self) -> None:
        self._sock.close(linger=0)
