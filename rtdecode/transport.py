"""ZeroMQ sockets that speak :mod:`rtdecode.protocol`.

Thin shells: they own sockets and sequence numbers; encoding and validation live in the protocol
module. Every receive takes a timeout so no caller can hang forever.
"""

from __future__ import annotations

import logging
import threading

import zmq

from rtdecode.errors import ProtocolError
from rtdecode.protocol import Message, decode, encode

log = logging.getLogger(__name__)


class Publisher:
    """PUB socket for events, QA and results (any number of subscribers; late ones miss history)."""

    def __init__(self, address: str, context: zmq.Context | None = None, curve: dict | None = None) -> None:
        self._ctx = context or zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.PUB)
        self._sock.setsockopt(zmq.LINGER, 0)
        for option, value in (curve or {}).items():  # rtdecode.security.server_options
            self._sock.setsockopt(option, value)
        self._sock.setsockopt(zmq.SNDHWM, 10_000)
        if address.endswith(":0"):
            port = self._sock.bind_to_random_port(address.rsplit(":", 1)[0])
            address = f"{address.rsplit(':', 1)[0]}:{port}"
        else:
            self._sock.bind(address)
        self.address = address
        self._seq = 0
        self._lock = threading.Lock()

    def send(self, message: Message) -> None:
        """Publish a message, stamping it with this publisher's next sequence number."""
        with self._lock:
            self._seq += 1
            message.seq = self._seq
            self._sock.send_multipart(encode(message), copy=False)

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
