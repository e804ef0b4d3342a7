"""A finished session as a console would have received it: messages rebuilt from the folders.

``rtdecode console --replay`` and ``rtdecode screenshots`` hand these to the console, which only
draws messages: the GUI reads no session or decoder folder itself.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

from rtdecode.decoder.results import open_results
from rtdecode.wire.protocol import Message, encode_png

MOTION = ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z")


def _rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def session_messages(session: str | Path) -> list[Message]:
    """Scanner-side messages of a session folder (``.../sub-XX/ses-YY``), in order."""
    session = Path(session)
    deriv = session / "derivatives" / "rtdecode" / "func"
    out: list[Message] = []
    for run_row in _rows(session / "runs.tsv"):
        run = int(run_row["run"])
        prefix = next((p.name.split("_desc-confounds")[0] for p in deriv.glob(f"*_run-{run:02d}_desc-confounds_timeseries.tsv")), None)
        if prefix is None:
            continue
        confounds = _rows(deriv / f"{prefix}_desc-confounds_timeseries.tsv")
        started = {"run": run, "series": int(run_row["series"]), "shape": [], "n_voxels": 0}
        out.append(Message("run_started", {**started, "n_volumes": len(confounds)} if confounds else started))
        first = len(out)
        for r in confounds:
            if r["status"] == "ok":
                out.append(Message("volume", {"run": run, "index": int(r["volume"]), "motion": [float(r[c]) for c in MOTION],
                                              "fd": float(r["framewise_displacement"] or 0), "dvars": float(r["dvars"] or 0),
                                              "tsnr": float(r["tsnr"] or 0), "latency_ms": float(r["latency_ms"] or 0)}))
            else:
                out.append(Message("volume_missing", {"run": run, "index": int(r["volume"])}))
        for r in _rows(deriv / f"{prefix}_desc-realtime_betas.tsv"):
            out.append(Message("beta", {"run": run, "trial": int(r["trial"]), "image": r["image"], "version": "realtime"}))
        out.append(Message("run_ended", {"run": run, "n_volumes": sum(m.type == "volume" for m in out[first:])}))
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
        scores = [float(s) for s in r["top_scores"].split(",") if s]
        out.append(Message("result", {**fields, "stage": "retrieval", "top_ids": r["top_ids"].split(","),
                                      "top_scores": scores, "timings_ms": {"prior_ms": float(r["prior_ms"])}}))
        png = store.image_path(r["key"])
        if png.exists():
            with Image.open(png) as im:
                image = np.asarray(im.convert("RGB"))
            out.append(Message("result", {**fields, "stage": "reconstruction"}, images={"reconstruction": encode_png(image)}))
    for seq, msg in enumerate(out, start=1):
        msg.seq = seq
    return out


def replayed(session: Path | None, decoded: Path | None) -> list[tuple[str, Message]]:
    """``(source, message)`` pairs: the scanner side's from ``session``, then the decoder's from ``decoded``."""
    out = [("scanner", m) for m in (session_messages(session) if session else [])]
    return out + [("decoder", m) for m in (decoder_messages(decoded) if decoded else [])]
