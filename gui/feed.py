"""Live feed: subscribers polled from a Qt timer, every message applied to the state, then one redraw."""

from __future__ import annotations

from PyQt6 import QtCore

from gui.state import ConsoleState
from rtdecode.transport import Subscriber


class LiveFeed(QtCore.QObject):
    def __init__(self, state: ConsoleState, views: list, events: str | None, results: str | None,
                 interval_ms: int = 50, curve: dict | None = None) -> None:
        super().__init__()
        self.state, self.views = state, views
        self.subs = []
        if events:
            self.subs.append(("scanner", Subscriber(events, curve=curve)))
        if results:
            self.subs.append(("decoder", Subscriber(results, curve=curve)))
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
                changed += self.state.apply(msg, source)
        for view in self.views:
            view.refresh()  # also ages the connection lights when nothing arrived
        return changed

    def close(self) -> None:
        self.timer.stop()
        for _, sub in self.subs:
            sub.close()
