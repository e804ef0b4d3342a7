"""The scanner side's sockets: events out (XPUB with replay), operator commands in, betas to a decoder.

All three are made here from ``[network]``, with CURVE when the config gives keys: the events and
control sockets are served with ``curve_secret`` and accept only the keys in ``curve_allowed``; the
betas channel connects as a CURVE client to ``curve_decoder_key``. Every socket refuses frames larger
than ``max_message_mb``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from rtdecode.base.session import SessionFolder
from rtdecode.base.settings import SessionConfig
from rtdecode.scanner.history import keep_event
from rtdecode.wire.protocol import Message
from rtdecode.wire.sockets import Publisher

log = logging.getLogger(__name__)

REPLAY = 200  # events a console that joins late is sent at once


class ScannerNetwork:
    def __init__(self, config: SessionConfig, folder: SessionFolder, publisher: Publisher | None = None) -> None:
        from rtdecode.wire.security import CurveServer, client_options

        net = config.network
        self.config = config
        self.max_bytes = int(net.max_message_mb * 2**20)
        self.server = CurveServer(net.curve_secret if net.curve_allowed else None, net.curve_allowed)
        self._own_publisher = publisher is None and net.events_port >= 0
        self.publisher = publisher
        self.control = None
        self.beta_sender = None
        try:
            if self._own_publisher:
                self.publisher = Publisher(f"tcp://{net.host}:{net.events_port}", context=self.server.context,
                                           curve=self.server.options, replay=REPLAY, max_bytes=self.max_bytes,
                                           replay_skip=("beta", "heartbeat"), keep=keep_event)
            if net.decoder:
                from rtdecode.wire.reliable import BetaSender

                curve = client_options(net.curve_secret, net.curve_decoder_key) if net.curve_decoder_key else None
                self.beta_sender = BetaSender(net.decoder, folder.derivatives / "betas_acked.keys",
                                              resend_s=net.resend_s, curve=curve, max_bytes=self.max_bytes,
                                              queued=folder.derivatives / "betas_queued.keys")
        except Exception:
            self.close()
            raise

    @property
    def deliver(self) -> Callable[..., None] | None:
        """The acknowledged channel's send, or None when no decoder is configured."""
        return self.beta_sender.send if self.beta_sender is not None else None

    @property
    def secure(self) -> bool:
        return self.server.secure

    def bind_control(self) -> None:
        port = self.config.network.control_port
        if port >= 0 and self.control is None:
            from rtdecode.wire.control import ControlServer

            self.control = ControlServer(f"tcp://{self.config.network.host}:{port}", context=self.server.context,
                                         curve=self.server.options)

    def publish(self, message: Message) -> None:
        if self.publisher is not None:
            self.publisher.send(message)

    def serve(self, handle: Callable[[str, dict], tuple[bool, str]]) -> bool:
        """Acknowledgements in, stale betas out, late joiners served, operator commands answered."""
        if self.beta_sender is not None:
            self.beta_sender.pump(0)
        if self.publisher is not None:
            self.publisher.serve()
        return self.control.serve(handle) if self.control is not None else False

    @property
    def refused(self) -> int:
        """Messages and peers refused on the sockets served here (malformed commands, unknown keys)."""
        return (self.control.refused if self.control is not None else 0) + self.server.refused

    def close(self) -> None:
        if self.control is not None:
            self.control.close()
            self.control = None
        if self.beta_sender is not None:
            # Let the decoder acknowledge what is in flight; anything left is resent on the next start.
            deadline = time.monotonic() + self.config.network.drain_s
            while self.beta_sender.outbox and time.monotonic() < deadline:
                self.beta_sender.pump(100)
            if self.beta_sender.outbox:
                log.warning("%d beta(s) not yet acknowledged by the decoder; they are resent on the next start",
                            len(self.beta_sender.outbox))
            self.beta_sender.close()
            self.beta_sender = None
        if self._own_publisher and self.publisher is not None:
            self.publisher.close()
            self.publisher = None
        self.server.close()
