"""A finished session as a console would have received it: messages rebuilt from the folders.

``rtdecode console --replay`` and ``rtdecode screenshots`` hand these to the console, which only
draws messages: the GUI reads no session or decoder folder itself.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from rtdecode.decoder.results import open_results, retrieval_message
from rtdecode.scanner.history import (
    alignment_fields,
    mark_events,
    read_rows,
    run_events,
    stored_betas,
    stored_tr,
)
from rtdecode.wire.protocol import Message, encode_png


def session_messages(session: str | Path) -> list[Message]:
    """Scanner-side messages of a finished session folder (``.../sub-XX/ses-YY``), in order: each run
    counted on its own, every trial, the operator's marks, the alignment figures where stored."""
    session = Path(session)
    deriv = session / "derivatives" / "rtdecode" / "func"
    out: list[Message] = []
    for run_row in read_rows(session / "runs.tsv"):
        run = int(run_row["run"])
        prefix = next((p.name.split("_desc-confounds")[0] for p in deriv.glob(f"*_run-{run:02d}_desc-confounds_timeseries.tsv")), None)
        if prefix is None:
            continue
        confounds = read_rows(deriv / f"{prefix}_desc-confounds_timeseries.tsv")
        betas = stored_betas(deriv, prefix)
        events = run_events(run, int(run_row["series"]), confounds, betas, "", len(confounds),
                            alignment_fields(deriv / f"{prefix}_desc-alignment.json"),
                            stored_tr(deriv / f"{prefix}_desc-realtime_betas.json"))
        png = deriv / f"{prefix}_desc-alignment.png"
        if png.exists():
            events[0].images["alignment"] = png.read_bytes()
        out += events
    out += mark_events(read_rows(session / "marks.tsv"))
    for seq, msg in enumerate(out, start=1):
        msg.seq = seq
    return out


def decoder_messages(decoded: str | Path) -> list[Message]:
    """Decoder results of one session: its folder under ``rtdecode decode --out``, or an --out holding one."""
    store = open_results(decoded)
    out: list[Message] = []
    for r in store.rows():
        fields = {"run": int(r["run"]), "trial": int(r["trial"]), "version": r["version"], "image": r["image"],
                  **store.identity}
        out.append(retrieval_message(r, store.identity))
        png = store.image_path(r["key"])
        if png.exists():
            with Image.open(png) as im:
                image = np.asarray(im.convert("RGB"))
            out.append(Message("result", {**fields, "stage": "reconstruction"}, images={"reconstruction": encode_png(image)}))
    out += evaluation_messages(store.folder / "evaluation" / "trials.csv", store.identity)
    for seq, msg in enumerate(out, start=1):
        msg.seq = seq
    return out


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


def replayed(session: Path | None, decoded: Path | None) -> list[tuple[str, Message]]:
    """``(source, message)`` pairs: the scanner side's from ``session``, then the decoder's from ``decoded``."""
    out = [("scanner", m) for m in (session_messages(session) if session else [])]
    return out + [("decoder", m) for m in (decoder_messages(decoded) if decoded else [])]
