"""Each sending process's starts and warnings, kept beside what it writes (issue 28).

A console open all day sees a restart (a new boot id) and a silence (no message for a while) as they
happen; one that joins later, reopens or replays would not. So the scanner side (in its session folder)
and the decoder (in its --out) append a row to ``starts.tsv`` each time they start publishing, with when
they were last heard from before (``.alive``, rewritten at each heartbeat), and the scanner side adds
its warnings there. :func:`lifecycle_messages` turns the table into the ``status`` messages a console
rebuilds the restarts, silences and warnings from, at the times they happened.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from rtdecode.base.errors import ProtocolError
from rtdecode.base.session import append_tsv, read_tsv
from rtdecode.wire.protocol import Message
from rtdecode.wire.schema import check_fields

log = logging.getLogger(__name__)

STARTS = "starts.tsv"
ALIVE = ".alive"
COLUMNS = ("time", "service", "boot", "last_heard", "event", "text")


def note_alive(folder: Path, when: float | None = None) -> None:
    """When this process was last heard from (its heartbeat): the next start reads it as the silence's start."""
    path = Path(folder) / ALIVE
    tmp = path.with_name(f"{ALIVE}.tmp")
    try:
        tmp.write_text(f"{when if when is not None else time.time():.3f}\n", encoding="ascii")
        tmp.replace(path)
    except OSError as exc:  # liveness, not data: a full disk is reported by what stores data
        log.debug("%s not written: %s", path, exc)


def _last_alive(folder: Path) -> float | None:
    try:
        return float((Path(folder) / ALIVE).read_text(encoding="ascii").strip())
    except (OSError, ValueError):
        return None


def record_start(folder: Path, service: str, boot: str, when: float | None = None) -> None:
    """A start of ``service`` (boot id ``boot``), with when the process before it was last heard from."""
    last = _last_alive(folder)
    append_tsv(Path(folder) / STARTS, COLUMNS,
               {"time": f"{when if when is not None else time.time():.3f}", "service": service, "boot": boot,
                "last_heard": "" if last is None else f"{last:.3f}", "event": "started", "text": ""}, fsync=True)


def record_warning(folder: Path, service: str, text: str, when: float) -> None:
    """A warning a console open at the time logged (e.g. a run left open at shutdown), kept for later ones."""
    append_tsv(Path(folder) / STARTS, COLUMNS,
               {"time": f"{when:.3f}", "service": service, "boot": "", "last_heard": "", "event": "warning",
                "text": " ".join(text.split())[:2000]}, fsync=True)


def lifecycle_messages(folder: Path, service: str) -> list[Message]:
    """``service``'s first start ('started': when the session began), its restarts (every start after
    the first) and warnings, as ``status`` messages at the times they happened; a row that does not
    make a valid message is skipped with one line."""
    out: list[Message] = []
    first = True
    for row in read_tsv(Path(folder) / STARTS):
        if row.get("service") != service:
            continue
        try:
            when = float(row["time"])
            if row.get("event") == "started":
                fields = {"state": "started" if first else "restarted", "service": service, "boot_id": row["boot"]}
                if row.get("last_heard") and not first:
                    fields["last_heard"] = float(row["last_heard"])
            elif row.get("event") == "warning":
                fields = {"state": "warning", "service": service, "reason": row["text"]}
            else:
                raise ValueError(f"event {row.get('event')!r}, expected started or warning")
            check_fields("status", fields)
        except (KeyError, ValueError, ProtocolError) as exc:
            log.warning("%s: row %r skipped: %s", Path(folder) / STARTS, row, exc)
            continue
        first = first and fields["state"] != "started"
        out.append(Message("status", fields, time=when))
    return out
