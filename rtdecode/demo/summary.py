"""The demo's scores, latencies and report, all read back from what the visit left on disk and the wire."""

from __future__ import annotations

import csv
import glob
from pathlib import Path

import numpy as np


def _table(pattern: str) -> list[dict]:
    rows = []
    for path in sorted(glob.glob(pattern)):
        with open(path, newline="") as fh:
            rows += list(csv.DictReader(fh, delimiter="\t"))
    return rows


def realtime_retrieval(decoded: Path, run: int, seed: int = 0) -> dict:
    """Top-1 of the decoder's real-time predictions over the run's images: 50-way (30 random draws, as
    Real-time MindEye), 2-way (every pair) and the run's full gallery; with chance for each."""
    from models.retrieval import n_way_top1, similarity
    from models.standin import StandInEmbedder
    from rtdecode.decoder.results import open_results
    from rtdecode.gallery.builtin import StimulusSet, index_of

    store = open_results(decoded)
    rows = [r for r in store.rows() if r["version"] == "realtime" and int(r["run"]) == run]
    rows.sort(key=lambda r: int(r["trial"]))
    pred = np.stack([store.clip_tokens(r["key"]) for r in rows])
    images = [r["image"] for r in rows]
    truth = StandInEmbedder().embed(StimulusSet().images([index_of(i) for i in images]))
    sim = similarity(pred, truth)
    n = len(rows)
    diag = np.diag(sim)
    two_way = float(np.mean(diag[:, None] > sim)) * n / (n - 1) if n > 1 else float("nan")  # off-diagonal pairs
    out = {"trials": n, "two_way": two_way, "gallery_top1": float(np.mean(sim.argmax(1) == np.arange(n))),
           "gallery_size": n, "top5": [r["top_ids"].split(",")[:5] for r in rows], "images": images,
           "keys": [r["key"] for r in rows]}
    if n >= 50:
        fwd, bwd = n_way_top1(pred, truth, n_way=50, seed=seed)
        out.update(fifty_way=fwd, fifty_way_image_to_brain=bwd)
    return out


def _stats(values) -> tuple[float, float, int]:
    v = np.asarray([x for x in values if np.isfinite(x)], float)
    if not len(v):
        return float("nan"), float("nan"), 0
    return float(np.median(v)), float(np.percentile(v, 99)), len(v)


def latencies(session: Path, run: int, decoded: Path, listener) -> list[tuple[str, float, float, int]]:
    """(stage, median ms, p99 ms, count) for the real-time run."""
    func = session / "derivatives" / "rtdecode" / "func"
    confounds = _table(str(func / f"*_run-{run:02d}_desc-confounds_timeseries.tsv"))
    betas = _table(str(func / f"*_run-{run:02d}_desc-realtime_betas.tsv"))
    t_file = {int(r["volume"]): float(r["t_file"]) for r in confounds if r["status"] == "ok" and r["t_file"]}
    done = {int(r["trial"]): float(r["t_done"]) for r in betas}
    trigger = {int(r["trial"]): t_file.get(int(r["n_frames"]) - 1, float("nan")) for r in betas}
    got = {k[1]: v for k, v in listener.retrievals.items() if k[0] == run and k[2] == "realtime"}
    recon = {k[1]: v for k, v in listener.reconstructions.items() if k[0] == run and k[2] == "realtime"}
    return [
        ("volume file -> preprocessed and stored", *_stats(float(r["latency_ms"]) for r in confounds
                                                          if r["status"] == "ok")),
        ("single-trial GLM estimate (AR(1))", *_stats(float(r["estimate_ms"]) for r in betas)),
        ("beta sent -> retrieval received (wire + decoder)", *_stats((got[t][0] - done[t]) * 1e3 for t in got if t in done)),
        ("reconstruction (stand-in inversion of prior tokens)",
         *_stats(v[1].get("timings_ms", {}).get("reconstruction_ms", np.nan) for v in recon.values())),
        ("trial's last volume file -> retrieval on screen", *_stats((got[t][0] - trigger[t]) * 1e3 for t in got if t in trigger)),
        ("trial's last volume file -> reconstruction on screen",
         *_stats((recon[t][0] - trigger[t]) * 1e3 for t in recon if t in trigger)),
    ]


def report_grid(decoded: Path, scores: dict, out: Path, rows: int = 10) -> Path:
    """Rows of: the image shown, the reconstruction, the top-5 retrievals (a green frame marks a hit)."""
    from PIL import Image, ImageDraw

    from rtdecode.decoder.results import open_results
    from rtdecode.gallery.builtin import StimulusSet, index_of

    stimuli, store = StimulusSet(), open_results(decoded)
    cell, pad, head = 96, 6, 16
    picks = list(range(min(rows, scores["trials"])))
    canvas = Image.new("RGB", (7 * (cell + pad) + pad, len(picks) * (cell + pad) + pad + head), "white")
    draw = ImageDraw.Draw(canvas)
    for c, title in enumerate(["shown", "reconstructed", "top 1", "2", "3", "4", "5"]):
        draw.text((pad + c * (cell + pad), 3), title, fill="black")
    for r, i in enumerate(picks):
        y = head + pad + r * (cell + pad)
        shown = scores["images"][i]
        tiles = [Image.fromarray(stimuli.image(index_of(shown)))]
        path = store.image_path(scores["keys"][i])
        tiles.append(Image.open(path).convert("RGB") if path.exists() else Image.new("RGB", (cell, cell), "#ddd"))
        tiles += [Image.fromarray(stimuli.image(index_of(t))) for t in scores["top5"][i]]
        for c, tile in enumerate(tiles):
            x = pad + c * (cell + pad)
            canvas.paste(tile.resize((cell, cell)), (x, y))
            if c >= 2 and scores["top5"][i][c - 2] == shown:
                draw.rectangle([x - 3, y - 3, x + cell + 2, y + cell + 2], outline=(0, 160, 0), width=3)
    canvas.save(out)
    return out


def pct(x: float) -> str:
    return f"{100 * x:.0f}%" if np.isfinite(x) else "n/a"
