"""Put one run's volumes in order: buffer early arrivals, skip duplicates, give up on missing ones.

Pure bookkeeping with the clock passed in, so the ordering rules are tested without threads or files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Delivery:
    """The next thing a run should process: a volume, or the news that ``index`` never came."""

    index: int
    item: Any = None  # None when missing

    @property
    def missing(self) -> bool:
        return self.item is None


@dataclass
class RunSequencer:
    """In-order delivery of volume indices starting at ``next_index``.

    A gap is declared missing once a later volume has waited ``missing_timeout`` seconds for it;
    a volume that turns up after its slot was given up is reported as late and not processed.
    """

    missing_timeout: float
    next_index: int = 0
    done: set[int] = field(default_factory=set)
    _buffer: dict[int, tuple[Any, float]] = field(default_factory=dict)

    def add(self, index: int, item: Any, now: float) -> str:
        """Offer a volume; returns 'buffered', 'duplicate' or 'late'."""
        if index in self.done or index in self._buffer:
            return "duplicate"
        if index < self.next_index:
            return "late"
        self._buffer[index] = (item, now)
        return "buffered"

    def holds(self, index: int) -> bool:
        """Whether ``index`` was delivered or waits in the buffer (a later copy is a duplicate)."""
        return index in self.done or index in self._buffer

    def pop_ready(self, now: float) -> list[Delivery]:
        out: list[Delivery] = []
        while True:
            if self.next_index in self._buffer:
                item, _ = self._buffer.pop(self.next_index)
                out.append(Delivery(self.next_index, item))
                self.done.add(self.next_index)
                self.next_index += 1
                continue
            waiting = [t for i, (_, t) in self._buffer.items() if i > self.next_index]
            if waiting and now - min(waiting) >= self.missing_timeout:
                out.append(Delivery(self.next_index))
                self.next_index += 1
                continue
            return out

    def take_buffered(self) -> dict[int, tuple[Any, float]]:
        """Remove and return what waits for an earlier volume (index -> (item, arrival time))."""
        out, self._buffer = self._buffer, {}
        return out

    @property
    def pending(self) -> int:
        return len(self._buffer)
