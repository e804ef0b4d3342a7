"""A session's events rebuilt from its folder, and which events a late-joining console keeps.

The scanner side publishes every event once; a console that starts (or restarts) late still needs
the whole session: every volume's QA, every missing volume, every trial, every mark. The events
publisher keeps the latest copy of each such event by key (:func:`keep_event`) and sends them to each
new subscriber; after a restart of the scanner side they are rebuilt from the session folder
(:func:`run_events`, :func:`mark_events`) before the first new file is read. ``rtdecode console
--replay`` uses the same builders for a finished session. Every rebuilt event carries the time it
happened (from the folder's tables), so a late console's log and ages read as a console's open all day.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from rtdecode.base.errors import ProtocolError
from rtdecode.base.session import read_tsv
from rtdecode.wire.lifecycle import lifecycle_messages
from rtdecode.wire.protocol import Message
from rtdecode.wire.schema import check_fields

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

log = logging.getLogger(__name__)

MOTION = ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z")
MARK_COLUMNS = ("time", "run", "trial", "version", "bad", "note")


def volume_name(index: int) -> str:
    """A volume as an operator reads it: numbered from 1, with the 0-based index BIDS and the tables use."""
    return f"volume {index + 1} (index {index})"


def read_rows(path: Path) -> list[dict]:
    """A session table's rows, read as rtdecode.base.session wrote them (fields unescaped)."""
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
    if msg.type == "mark":  # every mark, in order: a late console logs each as the all-day one did
        return f"mark:{f['run']}:{f['trial']}:{f['version']}:{msg.time!r}", msg
    if msg.type == "beta":  # the description, not the values (they go to the decoder)
        fields = {k: f[k] for k in ("run", "trial", "image", "version", "onset", "subject", "session", "session_uid")
                  if k in f}
        return f"trial:{f['run']}:{f['trial']}:{f['version']}", Message("trial", fields)
    if msg.type == "status" and f.get("state") in ("started", "restarted", "warning"):  # rtdecode.wire.lifecycle
        return f"{f['state']}:{f.get('boot_id', '')}:{msg.time!r}", msg
    if msg.type == "status" and f.get("state") in ("glm_error", "no_betas", "storage_low", "storage_error"):
        return f"{f['state']}:{f.get('run')}", msg
    return None


def run_events(run: int, series: int, confounds: list[dict], betas: list[dict], ended: str | None,
               expected: int | None = None, alignment: dict | None = None, tr_s: float | None = None,
               fd_threshold_mm: float | None = None, times: dict[str, float | None] | None = None) -> list[Message]:
    """One run's events from its stored rows: start, every volume or missing volume, every trial, and
    its end when ``ended`` is not None (the reason, or "" when unknown). Each carries the time it
    happened where the folder says (``times``: 'started', 'ended'; a volume's own t_done), so a
    late console logs it then."""
    times = times or {}
    started = {"run": run, "series": series, "shape": [], "n_voxels": 0, **(alignment or {})}
    if expected:
        started["n_volumes"] = expected
    if tr_s:
        started["tr_s"] = float(tr_s)
    if fd_threshold_mm is not None:
        started["fd_threshold_mm"] = float(fd_threshold_mm)
    # Sent just before its first volume was (runs.tsv's time is earlier, before the first volume was read):
    # a file set aside in between came before the run on every console that was open.
    first = next((epoch(r.get("t_done")) for r in confounds if r["status"] == "ok" and epoch(r.get("t_done"))), None)
    out = [Message("run_started", started, time=(first - 1e-3) if first else (times.get("started") or 0.0))]
    n_ok, last = 0, out[0].time
    for r in confounds:
        if r["status"] == "ok":
            n_ok += 1
            fd = float(r["framewise_displacement"] or 0)
            fields = {"run": run, "index": int(r["volume"]), "motion": [float(r[c]) for c in MOTION], "fd": fd,
                      "dvars": float(r["dvars"] or 0), "tsnr": float(r["tsnr"] or 0),
                      "latency_ms": float(r["latency_ms"] or 0)}
            if fd_threshold_mm is not None:
                fields["fd_alarm"] = fd > fd_threshold_mm  # as it was sent: the session's threshold, not the console's
            last = epoch(r.get("t_done")) or last
            out.append(Message("volume", fields, time=last))
        else:  # a missing volume's row has no time of its own: the volume before it is the nearest
            out.append(Message("volume_missing", {"run": run, "index": int(r["volume"])}, time=last))
    for r in betas:
        fields = {"run": run, "trial": int(r["trial"]), "image": r["image"], "version": r.get("version") or "realtime"}
        if r.get("onset"):
            fields["onset"] = float(r["onset"])
        out.append(Message("trial", fields, time=last))
    if ended is not None:
        when = max(epoch(times.get("ended")) or 0.0, last)  # run_ends.tsv counts whole seconds
        out.append(Message("run_ended", {"run": run, "n_volumes": n_ok, **({"reason": ended} if ended else {})},
                           time=when))
    return out


def epoch(value: object) -> float | None:
    """A stored time as seconds since the epoch: a number, or a local ``%Y-%m-%dT%H:%M:%S[.fff]``; None if neither."""
    if isinstance(value, (int, float)):
        return float(value)
    if not isinstance(value, str) or not value:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    whole, _, fraction = value.partition(".")  # rtdecode.base.session.local_stamp: milliseconds since round 3
    try:
        return time.mktime(time.strptime(whole, "%Y-%m-%dT%H:%M:%S")) + (float(f"0.{fraction}") if fraction else 0.0)
    except (ValueError, OverflowError):
        return None


def rejected_events(rows: list[dict]) -> list[Message]:
    """Every file set aside (the session's rejected.tsv), as it was announced, at the time it was."""
    out = []
    for r in rows:
        fields = {"path": str(r.get("file", ""))[:255], "reason": announced_reason(str(r.get("reason", "")))[:2000]}
        try:
            check_fields("volume_rejected", fields)
        except ProtocolError as exc:
            log.warning("rejected.tsv: row %r skipped: %s", r, exc)
            continue
        out.append(Message("volume_rejected", fields, time=epoch(r.get("time")) or 0.0))
    return out


def announced_reason(stored: str) -> str:
    """A rejected.tsv reason as it was sent: without the note of where the file went (rtdecode.scanner.side)."""
    for note in (" (moved to ", " (left in place: watch folder not writable)"):
        head, found, _ = stored.rpartition(note)
        if found:
            return head
    return stored


def in_time_order(messages: list[Message]) -> list[Message]:
    """Rebuilt events in the order they happened (a message without a time stays after the one before it)."""
    last, keyed = 0.0, []
    for i, msg in enumerate(messages):
        last = msg.time or last
        keyed.append((last, i, msg))
    return [m for _, _, m in sorted(keyed, key=lambda k: (k[0], k[1]))]


def session_settings(path: Path) -> dict[str, float | None]:
    """What a console needs of the configuration a session ran with (its ``config.toml``):
    ``fd_threshold_mm``, ``volumes_per_run``, ``tr_s``; None for what the file does not say (a
    session recorded before rtdecode kept it: the console's own threshold, each run's stored count)."""
    raw: dict = {}
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        pass
    except (OSError, ValueError) as exc:
        log.warning("%s: not read (%s); a replay shows no session thresholds", path, exc)
    pre, scanner = raw.get("preprocess", {}), raw.get("scanner", {})
    try:
        return {"fd_threshold_mm": float(pre["fd_threshold_mm"]) if "fd_threshold_mm" in pre else None,
                "volumes_per_run": int(scanner["volumes_per_run"]) if "volumes_per_run" in scanner else None,
                "tr_s": float(scanner["tr_s"]) if "tr_s" in scanner else None}
    except (TypeError, ValueError) as exc:
        log.warning("%s: not read (%s); a replay shows no session thresholds", path, exc)
        return {"fd_threshold_mm": None, "volumes_per_run": None, "tr_s": None}


def mark_events(rows: list[dict]) -> list[Message]:
    """Every mark, in the order made (the newest of a trial last), from the session's marks.tsv. A row
    that does not make a valid mark (written by an older rtdecode, or edited by hand) is skipped with
    one line, never fatal."""
    out = []
    for r in rows:
        try:
            fields = {"run": int(r["run"]), "trial": int(r["trial"]), "version": r["version"], "bad": r["bad"] == "1",
                      **({"note": r["note"]} if r.get("note") else {})}
            check_fields("mark", fields)
        except (ProtocolError, ValueError, TypeError) as exc:
            log.warning("marks.tsv: row %r skipped: %s", r, exc)
            continue
        out.append(Message("mark", fields, time=epoch(r.get("time")) or 0.0))
    return out


def stored_voxels(path: Path) -> int:
    """The voxel count of a run's mask as stored with its vectors (0: not stored, as a run_started says)."""
    try:
        n = int(json.loads(path.read_text())["n_voxels"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0
    return n if 0 <= n <= 10**8 else 0


def stored_tr(path: Path) -> float | None:
    """The TR a run's betas were estimated with (their ``_betas.json``), or None."""
    try:
        return float(json.loads(path.read_text())["glm"]["t_r"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def recorded_elsewhere(session: Path, series_uid: str) -> str | None:
    """Which other session of the same sessions folder recorded a run of ``series_uid`` ('sub-01 ses-01,
    run 2'), or None (also for a file without one, e.g. NIfTI)."""
    if not series_uid:
        return None
    own = session.resolve()
    for table in sorted(session.parent.parent.glob("sub-*/ses-*/runs.tsv")):
        if table.parent.resolve() == own:
            continue
        for row in read_rows(table):
            if row.get("series_uid") == series_uid:
                return f"{table.parent.parent.name} {table.parent.name}, run {row.get('run', '?')}"
    return None


def tsnr_paths(derivatives: Path, prefix: str) -> tuple[Path, Path]:
    """Where a run's newest temporal-SNR mosaic is kept: its figures (JSON) and its picture (PNG)."""
    return derivatives / f"{prefix}_desc-tsnr.json", derivatives / f"{prefix}_desc-tsnr.png"


def store_tsnr(derivatives: Path, prefix: str, fields: dict, png: bytes) -> None:
    """Keep the qa_map just sent (picture first, then its figures, each renamed into place)."""
    figures, picture = tsnr_paths(derivatives, prefix)
    for path, data in ((picture, png), (figures, json.dumps(fields).encode())):
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(data)
        tmp.replace(path)


def tsnr_event(derivatives: Path, prefix: str, run: int, events: list[Message]) -> list[Message]:
    """The run's newest qa_map as it was sent, just after the volume it was made at; [] if none was kept."""
    figures, picture = tsnr_paths(derivatives, prefix)
    try:
        raw = json.loads(figures.read_text())
        fields = {"run": run, "index": int(raw["index"]), "median_tsnr": float(raw["median_tsnr"])}
        check_fields("qa_map", fields)
        png = picture.read_bytes()
    except FileNotFoundError:
        return []
    except (OSError, ValueError, KeyError, TypeError, ProtocolError) as exc:
        log.warning("%s: not replayed (%s)", figures, exc)
        return []
    at = next((m.time for m in events if m.type == "volume" and m.fields["index"] == fields["index"]), 0.0)
    return [Message("qa_map", fields, images={"tsnr": png}, time=at + 1e-4 if at else 0.0)]


def alignment_fields(path: Path) -> dict:
    """A run's stored alignment figures (written at run start), or {} when none were stored."""
    try:
        return {k: v for k, v in json.loads(path.read_text()).items() if k != "alignment_png"}
    except (OSError, ValueError):
        return {}


def session_events(session: Path, settings: dict[str, float | None], ends: dict[int, str | None] | None = None) -> list[Message]:
    """A session folder's whole history, in the order it happened: each run (started, volumes, trials,
    its end with the reason and the expected count), every file set aside, the newest mark of each
    trial. ``ends``: run -> its end reason, or None for a run still open (default: run_ends.tsv, and
    "" for a run that ended before it was kept)."""
    deriv = session / "derivatives" / "rtdecode" / "func"
    ended_at: dict[int, str] = {}
    recorded: dict[int, str] = {}
    for row in read_rows(session / "run_ends.tsv"):
        if row.get("run", "").isdigit():
            recorded[int(row["run"])], ended_at[int(row["run"])] = row.get("reason", ""), row.get("time", "")
    out: list[Message] = []
    for run_row in read_rows(session / "runs.tsv"):
        run = int(run_row["run"])
        prefix = next((p.name.split("_desc-confounds")[0]
                       for p in deriv.glob(f"*_run-{run:02d}_desc-confounds_timeseries.tsv")), None)
        if prefix is None:
            continue
        ended = ends.get(run) if ends is not None else recorded.get(run, "")
        confounds = read_rows(deriv / f"{prefix}_desc-confounds_timeseries.tsv")
        events = run_events(run, int(run_row["series"]), confounds, stored_betas(deriv, prefix), ended,
                            settings.get("volumes_per_run") or len(confounds),  # not kept: the run's own count
                            alignment_fields(deriv / f"{prefix}_desc-alignment.json"),
                            stored_tr(deriv / f"{prefix}_desc-realtime_betas.json") or settings.get("tr_s"),
                            settings.get("fd_threshold_mm"),
                            {"started": epoch(run_row.get("started")), "ended": epoch(ended_at.get(run))})
        png = deriv / f"{prefix}_desc-alignment.png"
        if png.exists():
            events[0].images["alignment"] = png.read_bytes()
        events[0].fields["n_voxels"] = stored_voxels(deriv / f"{prefix}_desc-masked_bold.json")
        out += events + tsnr_event(deriv, prefix, run, events)
    out += rejected_events(read_rows(session / "rejected.tsv"))
    out += mark_events(read_rows(session / "marks.tsv"))
    out += lifecycle_messages(session, "scanner")  # its restarts and warnings
    return in_time_order(out)
