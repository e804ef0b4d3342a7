"""Restarts and silences in the console's log, heard live or rebuilt from a sender's start record
(rtdecode.wire.lifecycle): one line each, at the time the sender recorded, whoever shows it. No Qt here."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from gui.views import LogEntry
from rtdecode.wire.protocol import Message

if TYPE_CHECKING:
    from gui.state import ConsoleState

SOURCE_NAMES = {"scanner": "scanner side", "decoder": "decoder"}


def elided(name: str, keep: int = 32) -> str:
    """``name`` with its middle replaced by '…' when longer than ``keep`` characters (both ends stay)."""
    if len(name) <= keep:
        return name
    head = (keep - 1) // 2
    return f"{name[:head]}…{name[len(name) - (keep - 1 - head):]}"


def silence_line(service: str, limit_s: float) -> str:
    """The log line of a silence: the limit, not the moment a console checked, so every console says the same."""
    return f"{SOURCE_NAMES.get(service, service)} silent for over {limit_s:.0f} s"


def restart_record(state: ConsoleState, f: dict, msg: Message) -> None:
    """A start's record: the restart, and the silence before it, as a console open at the time logged
    them. A restart this console heard live (its boot id) is not counted again: its lines take the
    recorded times."""
    service, boot, when = str(f.get("service", "")), str(f.get("boot_id", "")), msg.time or time.time()
    name = SOURCE_NAMES.get(service, service)
    last = float(f["last_heard"]) if f.get("last_heard") is not None else None
    if boot in state.restart_boots:
        for entry in state._boot_lines.pop(boot, []):
            silence = " silent for " in entry.text
            if not silence or last is not None:
                _retime(state, entry, last + state.silence_s if silence else when)
        return
    state.restart_boots.add(boot)
    state.restarts[service] = state.restarts.get(service, 0) + 1
    silent = last is not None and when - last > state.silence_s
    if silent:
        state.add_log("warning", silence_line(service, state.silence_s), last + state.silence_s)
    state.add_log("warning", f"{name} restarted", when)
    if silent:
        state.add_log("info", f"{name} heard from again", when)


def session_started(state: ConsoleState, f: dict, msg: Message) -> None:
    """The session's line ("session sub-01 ses-01") at the scanner side's first start, not at the first
    message this console heard of it (a run's start, for a console opened later)."""
    if f.get("service") != "scanner" or not msg.time or not state.identity:
        return
    line = f"session sub-{state.identity.get('subject')} ses-{state.identity.get('session')}"
    for entry in list(state.log):
        if entry.text == line and entry.time > msg.time:
            _retime(state, entry, msg.time)


def _retime(state: ConsoleState, entry: LogEntry, when: float) -> None:
    for i, e in enumerate(state.log):
        if e is entry:
            state.log[i] = LogEntry(when, e.severity, e.text)
            return
