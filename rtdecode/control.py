"""Operator commands (console -> scanner side): a ROUTER the scanner side polls from its own loop."""

from __future__ import annotations

import logging
from collections.abc import Callable

import zmq

from rtdecode.errors import ProtocolError
from rtdecode.protocol import Message, decode, encode
from rtdecode.transport import bind

log = logging.getLogger(__name__)


class ControlServer:
    def __init__(self, address: str, context: zmq.Context | None = None) -> None:
        self._sock = (context or zmq.Context.instance()).socket(zmq.ROUTER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self.address = bind(self._sock, address)

    def serve(self, handle: Callable[[str], tuple[bool, str]]) -> bool:
        """Answer every waiting command with ``handle(action)``; True if any came."""
        did = False
        while self._sock.poll(0, zmq.POLLIN):
            peer, *frames = self._sock.recv_multipart()
            try:
                msg = decode(frames)
                if msg.type != "command":
                    raise ProtocolError(f"expected a command, got {msg.type!r}")
            except ProtocolError as exc:
                log.warning("control: rejected message: %s", exc)
                continue
            action = str(msg.fields["action"])
            ok, detail = handle(action)
            log.info("operator command %s: %s", action, detail)
            self._sock.send_multipart([peer, *encode(Message("reply", {"action": action, "ok": ok, "detail": detail}))])
            did = True
        return did

    def close(self) -> None:
        self._sock.close(linger=0)


def send_command(address: str, action: str, timeout_ms: int = 2000) -> Message | None:
    """One command, one reply (None if the scanner side did not answer in time)."""
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(address)
    try:
        sock.send_multipart(encode(Message("command", {"action": action})))
        if not sock.poll(timeout_ms, zmq.POLLIN):
            return None
        return decode(sock.recv_multipart())
    finally:
        sock.close(linger=0)
