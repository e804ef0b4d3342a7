"""Live feed: subscribers polled from a Qt timer, every message applied to the state, then one redraw.

Nothing that arrives can end the process: messages are validated by the subscribers (rejections are
counted into ``state.refused``), the state's handlers are guarded, and a redraw that fails is logged
and retried at the next tick.
"""

from __future__ import annotations

import logging
import time

from PyQt6 import QtCore

from gui.state import ConsoleState
from rtdecode.wire.sockets import Subscriber

log = logging.getLogger(__name__)


class LiveFeed(QtCore.QObject):
    def __init__(self, state: ConsoleState, views: list, events: str | None, results: str | None,
                 interval_ms: int = 50, curve: dict | None = None, events_curve: dict | None = None,
                 results_curve: dict | None = None) -> None:
        """``events_curve`` / ``results_curve``: CURVE client options for each socket (``curve``: both)."""
        super().__init__()
        self.state, self.views = state, views
        self.subs = []
        if events:
            self.subs.append(("scanner", Subscriber(events, curve=events_curve or curve)))
        if results:
            self.subs.append(("decoder", Subscriber(results, curve=results_curve or curve)))
        self._rejected = {source: 0 for source, _ in self.subs}
        self.received = {source: 0 for source, _ in self.subs}  # messages taken from each source
        self.last_history = time.monotonic()  # when the last message other than a heartbeat came
        self.timer = QtCore.QTimer(self)
        self.timer.timeout.connect(self.poll)
        self.timer.start(interval_ms)

    def poll(self) -> int:
        changed = 0
        for source, sub in self.subs:
            for _ in range(500):  # drain what arrived, bounded so the window stays responsive
                msg = sub.recv(timeout_ms=0)
                if msg is None:
                    break
                self.received[source] += 1
                if msg.type != "heartbeat":
                    self.last_history = time.monotonic()
                changed += self.state.apply(msg, source)
            if sub.rejected != self._rejected[source]:
                self.state.refuse(f"from {source}: {sub.last_error}", sub.rejected - self._rejected[source])
                self._rejected[source] = sub.rejected
        for view in self.views:
            try:
                view.refresh()  # also ages the connection lights when nothing arrived
            except Exception:
                log.exception("console: redraw failed; trying again at the next tick")
        return changed

    def drain(self, seconds: float, quiet_s: float = 0.5) -> list[str]:
        """Take the senders' replays before a screenshot: poll until every source was heard from, the
        decoder's heartbeat (its gallery: top-1 chance) came where there is a decoder, and no history
        (anything but heartbeats) came for ``quiet_s``, at most ``seconds``. Returns the sources never
        heard from."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.poll()
            heard = all(self.received.values()) and ("decoder" not in self.received or self.state.gallery_from == "decoder")
            if heard and time.monotonic() - self.last_history >= quiet_s:
                break
            time.sleep(0.02)
        return [source for source, n in self.received.items() if not n]

    def close(self) -> None:
        self.timer.stop()
        for _, sub in self.subs:
            sub.close()
