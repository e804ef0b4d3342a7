"""A session's events rebuilt from its folder, and which events a late-joining console keeps.

The scanner side publishes every event once; a console that starts (or restarts) late still needs
the whole session: every volume's QA, every missing volume, every trial, every mark. The events
publisher keeps the latest copy of each such event by key (:func:`keep_event`) and sends them to each
new subscriber; after a restart of the scanner side they are rebuilt from the session folder
(:func:`run_events`, :func:`mark_events`) before the first new file is read. ``rtdecode console
--replay`` uses the same builders for a finished session.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from rtdecode.errors import ProtocolError
from rtdecode.session import read_tsv
from rtdecode.wire.protocol import Message
from rtdecode.wire.schema import check_fields

log = logging.getLogger(__name__)

MOTION = ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z")
MARK_COLUMNS = ("time", "run", "trial", "version", "bad", "note")


def read_rows(path: Path) -> list[dict]:
    """A session table's rows, read as rtdecode.session wrote them (fields unescaped)."""
    return read_tsv(path)


def stored_betas(derivatives: Path, prefix: str) -> list[dict]:
    """Every beta row of a run as stored: the real-time, end-of-run and refinement tables, in that order."""
    return [row for version in ("realtime", "endofrun", "refine")
            for row in read_rows(derivatives / f"{prefix}_desc-{version}_betas.tsv")]


def keep_event(msg: Message) -> tuple[str, Message] | None:
    """The key under which a late joiner gets this event (the latest per key), and the copy to keep."""
    f = msg.fields
    if msg.type in ("run_started", "run_ended"):
        return f"{msg.type}:{f['run']}", msg
    if msg.type in ("volume", "volume_missing"):
        return f"volume:{f['run']}:{f['index']}", msg
    if msg.type == "volume_rejected":
        return f"rejected:{f['path']}", msg
    if msg.type == "qa_map":
        return f"qa_map:{f['run']}", msg
    if msg.type == "mark":
        return f"mark:{f['run']}:{f['trial']}:{f['version']}", msg
    if msg.type == "beta":  # the description, not the values (they go to the decoder)
        fields = {k: f[k] for k in ("run", "trial", "image", "version", "onset", "subject", "session", "session_uid")
                  if k in f}
        return f"trial:{f['run']}:{f['trial']}:{f['version']}", Message("trial", fields)
    if msg.type == "status" and f.get("state") in ("glm_error", "no_betas", "storage_low", "storage_error"):
        return f"{f['state']}:{f.get('run')}", msg
    return None


def run_events(run: int, series: int, confounds: list[dict], betas: list[dict], ended: str | None,
               expected: int | None = None, alignment: dict | None = None, tr_s: float | None = None) -> list[Message]:
    """One run's events from its stored rows: start, every volume or missing volume, every trial, and
    its end when ``ended`` is not None (the reason, or "" when unknown)."""
    started = {"run": run, "series": series, "shape": [], "n_voxels": 0, **(alignment or {})}
    if expected:
        started["n_volumes"] = expected
    if tr_s:
        started["tr_s"] = float(tr_s)
    out = [Message("run_started", started)]
    n_ok = 0
    for r in confounds:
        if r["status"] == "ok":
            n_ok += 1
            out.append(Message("volume", {"run": run, "index": int(r["volume"]), "motion": [float(r[c]) for c in MOTION],
                                          "fd": float(r["framewise_displacement"] or 0), "dvars": float(r["dvars"] or 0),
                                          "tsnr": float(r["tsnr"] or 0), "latency_ms": float(r["latency_ms"] or 0)}))
        else:
            out.append(Message("volume_missing", {"run": run, "index": int(r["volume"])}))
    for r in betas:
        fields = {"run": run, "trial": int(r["trial"]), "image": r["image"], "version": r.get("version") or "realtime"}
        if r.get("onset"):
            fields["onset"] = float(r["onset"])
        out.append(Message("trial", fields))
    if ended is not None:
        out.append(Message("run_ended", {"run": run, "n_volumes": n_ok, **({"reason": ended} if ended else {})}))
    return out


def mark_events(rows: list[dict]) -> list[Message]:
    """The latest mark of each trial, from the session's marks.tsv. A row that does not make a valid
    mark (written by an older rtdecode, or edited by hand) is skipped with one line, never fatal."""
    latest: dict[tuple, dict] = {}
    for r in rows:
        latest[(r["run"], r["trial"], r["version"])] = r
    out = []
    for r in latest.values():
        try:
            fields = {"run": int(r["run"]), "trial": int(r["trial"]), "version": r["version"], "bad": r["bad"] == "1",
                      **({"note": r["note"]} if r.get("note") else {})}
            check_fields("mark", fields)
        except (ProtocolError, ValueError, TypeError) as exc:
            log.warning("marks.tsv: row %r skipped: %s", r, exc)
            continue
        out.append(Message("mark", fields))
    return out


def stored_tr(path: Path) -> float | None:
    """The TR a run's betas were estimated with (their ``_betas.json``), or None."""
    try:
        return float(json.loads(path.read_text())["glm"]["t_r"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def alignment_fields(path: Path) -> dict:
    """A run's stored alignment figures (written at run start), or {} when none were stored."""
    try:
        return {k: v for k, v in json.loads(path.read_text()).items() if k != "alignment_png"}
    except (OSError, ValueError):
        return {}
