"""ZeroMQ sockets that speak :mod:`rtdecode.wire.protocol`.

Thin shells: they own sockets, sequence numbers and boot ids; encoding and validation live in the
protocol module. Every receive takes a timeout so no caller can hang forever, and every socket is
made by :func:`make_socket`, which sets the size limit (``ZMQ_MAXMSGSIZE``: a peer sending a larger
frame is disconnected before it is buffered) and the CURVE options in one place.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable

import zmq

from rtdecode.base.errors import ProtocolError
from rtdecode.wire.protocol import MAX_FRAME_BYTES, Message, decode, encode, new_boot_id

log = logging.getLogger(__name__)

LOOPBACK_HOSTS = ("localhost", "::1", "[::1]")
NEVER_REPLAYED = frozenset({"heartbeat"})  # liveness: a replayed one would only crowd out history


def is_local(address: str) -> bool:
    """True for an address no other host can reach: ipc://, inproc://, or tcp on the loopback range."""
    if address.startswith(("ipc://", "inproc://")):
        return True
    host = address.split("://", 1)[-1].rsplit(":", 1)[0]
    return host.startswith("127.") or host in LOOPBACK_HOSTS


def make_socket(kind: int, context: zmq.Context | None = None, curve: dict | None = None,
                max_bytes: int = MAX_FRAME_BYTES) -> zmq.Socket:
    """A socket with LINGER 0, ``ZMQ_MAXMSGSIZE = max_bytes`` and the given CURVE options."""
    sock = (context or zmq.Context.instance()).socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.MAXMSGSIZE, int(max_bytes))
    for option, value in (curve or {}).items():  # rtdecode.wire.security server_options / client_options
        sock.setsockopt(option, value)
    return sock


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
    repeats by ``seq``. A replay is one history in send order: the kept copies and the recent
    messages merged by ``seq``, a recent message left out when a newer one of its key was kept (a
    removed mark never comes back), heartbeats never among them (liveness, not history). Each publisher has its own boot id, so a receiver tells a restarted sender
    (new boot id, ``seq`` from 1 again) from a repeat. Call :meth:`serve` from the sending loop to
    notice new subscribers.
    """

    def __init__(self, address: str, context: zmq.Context | None = None, curve: dict | None = None,
                 replay: int = 0, max_bytes: int = MAX_FRAME_BYTES, replay_skip: tuple[str, ...] = (),
                 keep: Callable[[Message], tuple[str, Message] | None] | None = None, keep_limit: int = 50_000,
                 keep_bytes: dict[str, int] | None = None) -> None:
        """``keep(message)``: for messages worth a late joiner's whole history (a session's volumes,
        decoded trials), a key and the copy to keep (the latest per key is kept, up to ``keep_limit``);
        these go to each new subscriber before the ``replay`` most recent messages. ``keep_bytes``: a
        bound on the bytes kept per group of keys (a key's text before its first ':'), for bulky ones
        (pictures): beyond it the oldest of that group go."""
        replay = max(replay, 1) if keep is not None else replay
        self._sock = make_socket(zmq.XPUB if replay else zmq.PUB, context, curve, max_bytes)
        if replay:
            self._sock.setsockopt(zmq.XPUB_VERBOSE, 1)  # every subscription, even to a topic already wanted
        self._sock.setsockopt(zmq.SNDHWM, 10_000)
        self.address = bind(self._sock, address)
        self.boot = new_boot_id()
        self.replay_skip = frozenset(replay_skip)  # types not worth replaying (bulky, and in the session folder)
        self._seq = 0
        self._lock = threading.Lock()
        self._recent: deque[tuple[int, str | None, list]] = deque(maxlen=replay) if replay else deque(maxlen=0)
        self._keep = keep
        self._kept: OrderedDict[str, tuple[int, list]] = OrderedDict()  # key -> (seq, frames) of its newest
        self._keep_limit = keep_limit
        self._keep_bytes = dict(keep_bytes or {})
        self._group_sizes: dict[str, OrderedDict[str, int]] = {g: OrderedDict() for g in self._keep_bytes}
        self.replayed = 0

    def send(self, message: Message) -> None:
        """Publish a message, stamping it with this publisher's next sequence number."""
        with self._lock:
            self._seq += 1
            message.seq = self._seq
            message.boot = self.boot
            message.time = message.time or time.time()  # a re-sent message keeps the time it was produced
            frames = encode(message)
            self._sock.send_multipart(frames, copy=False)
            kept = self._keep(message) if self._keep is not None else None
            key = kept[0] if kept is not None else None
            if self._recent.maxlen and message.type not in self.replay_skip and message.type not in NEVER_REPLAYED:
                self._recent.append((message.seq, key, frames))
            if kept is not None:
                copy = kept[1]
                copy.seq, copy.boot, copy.time = message.seq, message.boot, message.time
                self._kept.pop(key, None)
                self._kept[key] = (message.seq, frames if copy is message else encode(copy))
                self._bound_group(key)
                while len(self._kept) > self._keep_limit:
                    self._forget(self._kept.popitem(last=False)[0])
        self.serve()

    def _bound_group(self, key: str) -> None:
        """Count a kept copy against its group's ``keep_bytes``; the group's oldest go beyond it."""
        sizes = self._group_sizes.get(key.split(":", 1)[0])
        if sizes is None:
            return
        sizes.pop(key, None)
        sizes[key] = sum(len(f) for f in self._kept[key][1])
        limit = self._keep_bytes[key.split(":", 1)[0]]
        while len(sizes) > 1 and sum(sizes.values()) > limit:
            self._kept.pop(sizes.popitem(last=False)[0], None)

    def _forget(self, key: str) -> None:
        sizes = self._group_sizes.get(key.split(":", 1)[0])
        if sizes is not None:
            sizes.pop(key, None)

    def serve(self) -> int:
        """Replay the recent messages for each new subscription; returns how many joins were served."""
        if not self._recent.maxlen:
            return 0
        joins = 0
        with self._lock:
            while self._sock.poll(0, zmq.POLLIN):
                event = self._sock.recv()  # subscriptions only: XPUB takes no messages
                if event[:1] == b"\x01":  # a subscription (0 is an unsubscription)
                    joins += 1
                    for frames in self._history():
                        self._sock.send_multipart(frames, copy=False)
                        self.replayed += 1
        return joins

    def _history(self) -> list[list]:
        """What a joiner gets: kept and recent merged in send order, each key at its newest only."""
        merged = dict(self._kept.values())
        for seq, key, frames in self._recent:
            newest = self._kept.get(key) if key is not None else None
            if newest is None or newest[0] == seq:  # an older value of a kept key would undo the newer one
                merged.setdefault(seq, frames)
        return [merged[seq] for seq in sorted(merged)]

    def close(self) -> None:
        self._sock.close(linger=0)


class Subscriber:
    """SUB socket; :meth:`recv` returns a validated message, or None on timeout or bad input."""

    def __init__(self, address: str, topics: tuple[str, ...] = ("",), context: zmq.Context | None = None,
                 curve: dict | None = None, max_bytes: int = MAX_FRAME_BYTES) -> None:
        self._sock = make_socket(zmq.SUB, context, curve, max_bytes)
        for topic in topics:
            self._sock.setsockopt(zmq.SUBSCRIBE, topic.encode())
        self._sock.connect(address)
        self.rejected = 0
        self.last_error = ""

    def recv(self, timeout_ms: int) -> Message | None:
        if not self._sock.poll(timeout_ms, zmq.POLLIN):
            return None
        frames = self._sock.recv_multipart(copy=True)
        try:
            return decode(frames)
        except ProtocolError as exc:
            self.rejected += 1
            self.last_error = str(exc)
            log.warning("rejected message: %s", exc)
            return None

    def close(self) -> None:
        self._sock.close(linger=0)
