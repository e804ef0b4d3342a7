"""Which session a console or display shows: one at a time, nothing carried from one to the next.

A decoder serves a whole day and replays every session's results to whoever joins, so a result is
taken only for the session shown. Who names that session: the scanner side (``follow = "scanner"``, a
console with an events address or a replay), or, for a display that hears only the decoder
(``follow = "decoder"``), the session of the newest result produced. A result of a session not yet
named is held, not shown, and applied if that session is named later; a change of session starts a
clean page (trials with their images and marks, runs, alignment).
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

from rtdecode.wire.protocol import Message

if TYPE_CHECKING:
    from gui.state import ConsoleState

HELD_PER_SESSION = 20000  # a day's session is a few thousand results; beyond that the oldest go
HELD_SESSIONS = 8  # sessions whose results are held at once; beyond that the earliest named go (hostile uids)


class SessionFilter:
    """Holds results until their session is the one shown; :meth:`switch` changes the session shown."""

    def __init__(self, follow: str = "scanner") -> None:
        if follow not in ("scanner", "decoder"):
            raise ValueError(f"follow must be 'scanner' or 'decoder', got {follow!r}")
        self.follow = follow
        self.held: dict[str, deque[tuple[str, Message]]] = {}
        self.newest = 0.0  # follow = decoder: when the newest result of the session shown was produced

    def admit(self, state: ConsoleState, msg: Message, source: str, uid: str) -> bool:
        """True when ``msg`` (of session ``uid``) is to be applied now; else it is held or dropped."""
        shown = state.identity.get("session_uid")
        if uid == shown:
            self.newest = max(self.newest, msg.time)
            return True
        if self.follow == "decoder" and (shown is None or msg.time > self.newest):
            self.switch(state, {k: str(msg.fields[k]) for k in ("subject", "session", "session_uid")
                                if k in msg.fields})
            self.newest = msg.time
            return True
        if self.follow == "scanner":  # its session may be named later: kept, not shown
            if uid not in self.held and len(self.held) >= HELD_SESSIONS:
                self.held.pop(next(iter(self.held)))
            self.held.setdefault(uid, deque(maxlen=HELD_PER_SESSION)).append((source, msg))
        return False  # follow = decoder: an older session's result

    def switch(self, state: ConsoleState, identity: dict[str, str]) -> None:
        """Show ``identity``'s session: a clean page, then the results held for it."""
        if state.identity:  # another session was shown: nothing of it stays on the page
            state.runs.clear()
            state.alignment.clear()
            state.run_warnings.clear()
            state.rejected.clear()
            state.run, state.volumes_expected = None, 0
        state.trials.clear()  # a result can only have come from a session shown, or been held
        state.current = None
        state.last_result = None
        state.identity = dict(identity)
        self.newest = 0.0
        for source, msg in self.held.pop(identity.get("session_uid", ""), ()):
            _handle(state, msg, source)


def _handle(state: ConsoleState, msg: Message, source: str) -> None:
    """Apply a held message now (it passed the duplicate filter when it arrived)."""
    handler = getattr(state, f"_on_{msg.type}", None)
    if handler is None:
        return
    state._at = msg.time or None
    try:
        handler(msg.fields, msg)
    except Exception as exc:  # as ConsoleState.apply: counted and shown, never fatal
        state.refuse(f"{msg.type} from {source}: {type(exc).__name__}: {exc}")
    finally:
        state._at = None
