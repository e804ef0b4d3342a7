"""Operator commands (console -> scanner side): a ROUTER the scanner side polls from its own loop."""

from __future__ import annotations

import logging
from collections.abc import Callable

import zmq

from rtdecode.base.errors import ProtocolError
from rtdecode.wire.protocol import MAX_FRAME_BYTES, Message, decode, encode, new_boot_id
from rtdecode.wire.sockets import bind, make_socket

log = logging.getLogger(__name__)


class ControlServer:
    """Answers each valid ``command`` with a ``reply``; anything else is logged, counted and answered
    with a ``reply`` of action ``refused`` naming the field at fault, so a console shows why."""

    def __init__(self, address: str, context: zmq.Context | None = None, curve: dict | None = None,
                 max_bytes: int = 64 * 1024) -> None:
        self._sock = make_socket(zmq.ROUTER, context, curve, max_bytes)  # commands are small
        self.address = bind(self._sock, address)
        self.boot = new_boot_id()
        self.refused = 0

    def serve(self, handle: Callable[[str, dict], tuple[bool, str]]) -> bool:
        """Answer every waiting command with ``handle(action, fields)`` (fields validated by the
        schema); True if any came."""
        did = False
        while self._sock.poll(0, zmq.POLLIN):
            peer, *frames = self._sock.recv_multipart()
            try:
                if not frames:
                    raise ProtocolError("empty message")
                msg = decode(frames)
                if msg.type != "command":
                    raise ProtocolError(f"expected a command, got {msg.type!r}")
            except ProtocolError as exc:
                self.refused += 1
                log.warning("control: rejected message: %s", exc)
                refusal = Message("reply", {"action": "refused", "ok": False, "detail": f"refused: {exc}"[:2000]},
                                  boot=self.boot)
                self._sock.send_multipart([peer, *encode(refusal)])
                did = True
                continue
            action = msg.fields["action"]
            ok, detail = handle(action, {k: v for k, v in msg.fields.items() if k != "action"})
            log.info("operator command %s: %s", action, detail)
            reply = Message("reply", {"action": action, "ok": ok, "detail": detail[:2000]}, boot=self.boot)
            self._sock.send_multipart([peer, *encode(reply)])
            did = True
        return did

    def close(self) -> None:
        self._sock.close(linger=0)


def send_command(address: str, action: str, timeout_ms: int = 2000, curve: dict | None = None,
                 fields: dict | None = None) -> Message | None:
    """One command (with its ``fields``, e.g. a mark's run and trial), one reply (None if the scanner
    side did not answer in time, or refused our key)."""
    sock = make_socket(zmq.DEALER, curve=curve, max_bytes=MAX_FRAME_BYTES)
    sock.connect(address)
    try:
        # A peer that refused our key leaves no pipe to send on: wait for one, never block forever.
        if not sock.poll(timeout_ms, zmq.POLLOUT):
            return None
        try:
            sock.send_multipart(encode(Message("command", {**(fields or {}), "action": action})), flags=zmq.NOBLOCK)
        except zmq.Again:
            return None
        if not sock.poll(timeout_ms, zmq.POLLIN):
            return None
        try:
            return decode(sock.recv_multipart())
        except ProtocolError as exc:
            log.warning("control: malformed reply: %s", exc)
            return None
    finally:
        sock.close(linger=0)
