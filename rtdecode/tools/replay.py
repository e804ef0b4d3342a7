"""A finished session as a console would have received it: messages rebuilt from the folders.

``rtdecode console --replay`` and ``rtdecode screenshots`` hand these to the console, which only
draws messages: the GUI reads no session or decoder folder itself.
"""

from __future__ import annotations

from pathlib import Path

from rtdecode.decoder.results import open_results, reconstruction_message, retrieval_message
from rtdecode.scanner.history import session_events, session_settings
from rtdecode.wire.lifecycle import STARTS, lifecycle_messages
from rtdecode.wire.protocol import Message


def session_messages(session: str | Path) -> list[Message]:
    """Scanner-side messages of a finished session folder (``.../sub-XX/ses-YY``), in the order they
    happened: each run with its end reason and the count it expected, every trial, the files set
    aside, the operator's newest marks, the session's FD threshold, the alignment figures where stored."""
    session = Path(session)
    out = session_events(session, session_settings(session / "config.toml"))
    identity = _identity(session)
    for seq, msg in enumerate(out, start=1):
        msg.seq = seq
        if msg.type == "run_started" or msg.type == "status":  # whose session it is, as the live ones say
            msg.fields.update(identity)
    return out


def _identity(session: Path) -> dict[str, str]:
    """The session's subject, session and uid (its folder names and session.json); {} if it has none."""
    import json

    from rtdecode.base.errors import ProtocolError
    from rtdecode.wire.schema import check_identity

    try:
        identity = {"subject": session.parent.name.removeprefix("sub-"), "session": session.name.removeprefix("ses-"),
                    "session_uid": json.loads((session / "session.json").read_text(encoding="utf-8"))["uid"]}
        check_identity(identity, str(session / "session.json"))
    except (OSError, ValueError, KeyError, TypeError, ProtocolError):
        return {}
    return identity


def decoder_messages(decoded: str | Path) -> list[Message]:
    """Decoder results of one session: its folder under ``rtdecode decode --out``, or an --out holding one."""
    store = open_results(decoded)
    out: list[Message] = []
    for r in store.rows():
        out.append(retrieval_message(r, store.identity))
        png = store.image_path(r["key"])
        if png.exists():  # as it was published: when it was drawn, with the tier that drew it
            out.append(reconstruction_message(r, store.identity, png))
    out += evaluation_messages(store.folder / "evaluation" / "trials.csv", store.identity)
    out += caption_score_messages(store.folder / "evaluation" / "captions.csv", store.identity)
    for seq, msg in enumerate(out, start=1):
        msg.seq = seq
    return out


def caption_score_messages(captions_csv: Path, identity: dict) -> list[Message]:
    """Each trial's caption score (rtdecode evaluate's captions.csv), shown beside its caption."""
    from rtdecode.evaluate.captions import caption_score_messages as messages

    return messages(captions_csv, identity)


def evaluation_messages(trials_csv: Path, identity: dict) -> list[Message]:
    """Per-trial scores of ``rtdecode evaluate`` (its default --out), by the metric a grid ranks with."""
    import csv
    import math

    from rtdecode.wire.schema import EVALUATION_METRICS

    if not trials_csv.exists():
        return []
    with open(trials_csv, newline="") as fh:
        rows = list(csv.DictReader(fh))
    metric = next((m for m in EVALUATION_METRICS if any(r.get(m) for r in rows)), None)
    if metric is None:
        return []
    return [Message("result", {"run": int(r["run"]), "trial": int(r["trial"]), "version": r["version"],
                               "image": r["image"], "stage": "evaluation", "metric": metric,
                               "score": float(r[metric]), **identity})
            for r in rows if r.get(metric) and math.isfinite(float(r[metric]))]  # a constant image's PixCorr is nan


def decoded_for(decoded: Path, session: Path | None) -> Path:
    """The results folder of ``session`` (``.../sub-XX/ses-YY``): a decoder --out kept for the whole day holds
    one folder per session, so the replayed session's own is taken; otherwise ``decoded`` as given."""
    if session is not None and not (decoded / "session.json").exists():
        own = decoded / session.parent.name / session.name
        if (own / "session.json").exists():
            return own
    return decoded


def replayed(session: Path | None, decoded: Path | None) -> list[tuple[str, Message]]:
    """``(source, message)`` pairs: the scanner side's from ``session``, then the decoder's from ``decoded``."""
    out = [("scanner", m) for m in (session_messages(session) if session else [])]
    if decoded is None:
        return out
    own = decoded_for(Path(decoded), session)
    # The decoder's starts are kept in its --out: the folder given, or the one above a session's folder.
    root = next((p for p in (Path(decoded), own.parent.parent) if (p / STARTS).exists()), None)
    starts = lifecycle_messages(root, "decoder") if root is not None else []
    decoder = starts + decoder_messages(own)
    for seq, msg in enumerate(decoder, start=1):  # one sender: one sequence
        msg.seq = seq
    return out + [("decoder", m) for m in decoder]
