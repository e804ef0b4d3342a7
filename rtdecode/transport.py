"""ZeroMQ sockets that speak :mod:`rtdecode.protocol`.

Thin shells: they own sockets and sequence numbers; encoding and validation live in the protocol
module. Every receive takes a timeout so no caller can hang forever.
"""

from __future__ import annotations

import logging
import threading
from collections import deque

import zmq

from rtdecode.errors import ProtocolError
from rtdecode.protocol import Message, decode, encode

log = logging.getLogger(__name__)


def bind(sock: zmq.Socket, address: str) -> str:
    """Bind ``address``; a port of 0 means any free port. Returns the address actually bound."""
    if address.endswith(":0"):
        host = address.rsplit(":", 1)[0]
        return f"{host}:{sock.bind_to_random_port(host)}"
    sock.bind(address)
    return address


class Publisher:
    """PUB socket for events, QA and results, to any number of subscribers.

    With ``replay`` > 0 it is an XPUB that keeps its last ``replay`` messages and sends them again
    when a subscriber joins, so a display that starts late shows the current state at once. Replayed
    messages keep their sequence numbers; subscribers already connected see them twice and can drop
    repeats by ``seq``. Call :meth:`serve` from the sending loop to notice new subscribers.
    """

    def __init__(self, address: str, context: zmq.Context | None = None, curve: dict | None = None,
                 replay: int = 0) -> None:
        self._ctx = context or zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.XPUB if replay else zmq.PUB)
        self._sock.setsockopt(zmq.LINGER, 0)
        if replay:
            self._sock.setsockopt(zmq.XPUB_VERBOSE, 1)  # every subscription, even to a topic already wanted
        for option, value in (curve or {}).items():  # rtdecode.security.server_options
            self._sock.setsockopt(option, value)
        self._sock.setsockopt(zmq.SNDHWM, 10_000)
        self.address = bind(self._sock, address)
        self._seq = 0
        self._lock = threading.Lock()
        self._recent: deque[list] = deque(maxlen=replay) if replay else deque(maxlen=0)
        self.replayed = 0

    def send(self, message: Message) -> None:
        """Publish a message, stamping it with this publisher's next sequence number."""
        with self._lock:
            self._seq += 1
            message.seq = self._seq
            frames = encode(message)
            self._sock.send_multipart(frames, copy=False)
            if self._recent.maxlen:
                self._recent.append(frames)
        self.serve()

    def serve(self) -> int:
        """Replay the recent messages for each new subscription; returns how many joins were served."""
        if not self._recent.maxlen:
            return 0
        joins = 0
        with self._lock:
            while self._sock.poll(0, zmq.POLLIN):
                event = self._sock.recv()
                if event[:1] == b"\x01":  # a subscription (0 is an unsubscription)
                    joins += 1
                    for frames in self._recent:
                        self._sock.send_multipart(frames, copy=False)
                        self.replayed += 1
        return joins

    def close(self) -> None:
        self._sock.close(linger=0)


class Subscriber:
    """SUB socket; :meth:`recv` returns a validated message, or None on timeout or bad input."""

    def __init__(self, address: str, topics: tuple[str, ...] = ("",), context: zmq.Context | None = None,
                 curve: dict | None = None) -> None:
        self._ctx = context or zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.SUB)
        self._sock.setsockopt(zmq.LINGER, 0)
        for option, value in (curve or {}).items():  # rtdecode.security.client_options
            self._sock.setsockopt(option, value)
        for topic in topics:
            self._sock.setsockopt(zmq.SUBSCRIBE, topic.encode())
        self._sock.connect(address)
        self.rejected = 0

    def recv(self, timeout_ms: int) -> Message | None:
        if not self._sock.poll(timeout_ms, zmq.POLLIN):
            return None
        frames = self._sock.recv_multipart(copy=True)
        try:
            return decode(frames)
        except ProtocolError as exc:
            self.rejected += 1
            log.warning("rejected message: %s", exc)
            return None

    def close(self) -> None:
        self._sock.close(linger=0)
