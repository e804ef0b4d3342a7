"""The demo's scores, latencies and report, all read back from what the visit left on disk and the wire."""

from __future__ import annotations

import csv
import glob
import os
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


def caption_rows(table: Path | None, run: int) -> list[dict]:
    """The real-time run's captions and their scores, from the evaluation's captions.csv."""
    if table is None or not Path(table).is_file():
        return []
    with open(table, newline="", encoding="utf-8") as fh:
        return [r for r in csv.DictReader(fh) if r["run"] == str(run)]


def _caption_lines(rows: list[dict]) -> list[str]:
    """The report's caption table (and a few examples), or why there is none."""
    if not rows:
        return ["", "No captions were scored (the decoder ran without a captioner)."]
    from rtdecode.evaluate.captions import chance

    lines = ["", "| captions, real-time run (stand-in captioner; painter's captions as reference) | trials | METEOR | "
                 "ROUGE-1 | ROUGE-L | chance METEOR | chance ROUGE-L |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for version in sorted({r["version"] for r in rows}):
        mine = [r for r in rows if r["version"] == version]
        means = [sum(float(r[m]) for r in mine) / len(mine) for m in ("METEOR", "ROUGE-1", "ROUGE-L")]
        means += list(chance([dict(r) for r in mine]).values())  # copies: chance() sets its figures in the rows
        lines.append(f"| {version} | {len(mine)} | " + " | ".join(f"{v:.3f}" for v in means) + " |")
    lines += ["", "Chance: each caption against another trial's reference (the painter's captions share a template)."]
    lines += ["", "MindEye2 (subject 1, 40 h, GIT on COCO): METEOR 0.248. Not comparable: these are painted scenes, "
                  "a stand-in token space and a captioner of a few thousand numbers; refinement is off (no SDXL on "
                  "the CPU).", "", "| trial | shown | caption from the brain | the painter's caption |",
              "| --- | --- | --- | --- |"]
    for r in [r for r in rows if r["version"] == "realtime"][:6]:
        lines.append(f"| {r['trial']} | {r['image']} | {r['caption']} | {r['reference']} |")
    return lines


def report_lines(summary: dict) -> list[str]:
    """The demo's figures as Markdown tables and notes (printed, and the body of report.md)."""
    r, ev, tr = summary["retrieval"], summary["held_out_calibration"], summary["tr_s"]
    lines = ["| retrieval, real-time run (new images) | top-1 | chance |", "| --- | --- | --- |"]
    if "fifty_way" in r:
        lines.append(f"| 50-way, brain -> image (30 draws) | {pct(r['fifty_way'])} | 2% |")
    lines += [f"| 2-way (every pair) | {pct(r['two_way'])} | 50% |",
              f"| {r['gallery_size']}-way (the run's whole gallery) | {pct(r['gallery_top1'])} | "
              f"{pct(1 / r['gallery_size'])} |",
              f"| calibration held-out, {ev['n_way']}-way (repeats averaged), pretrained then fine-tuned, 1 seed | "
              f"{pct(ev['top1_brain_to_image'])} | {pct(ev['chance'])} |"]
    if summary.get("scratch"):
        sc = summary["scratch"]
        lines.append(f"| same held-out images, model trained from scratch on the hour, 1 seed | "
                     f"{pct(sc['top1_brain_to_image'])} | {pct(sc['chance'])} |")
    lines += ["", "Held-out and real-time images come from the built-in test pool, which no training set "
                  "draws from (pretraining included)."]
    if summary.get("evaluation"):
        lines += ["", "| rtdecode evaluate, real-time run (single-trial) | trials | PixCorr | SSIM | 50-way, for each "
                      "brain sample which image / for each image which brain sample | all-way, the same two |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for row in summary["evaluation"]:
            def both(a: str, b: str, row=row) -> str:
                return f"{pct(row.get(a, float('nan')))} / {pct(row.get(b, float('nan')))}"
            lines.append(f"| {row['version']} | {row['trials']} | {_num(row['PixCorr'])} | {_num(row['SSIM'])} | "
                         f"{both('image_for_brain_top1_50', 'brain_for_image_top1_50')} | "
                         f"{both('image_for_brain_top1_all', 'brain_for_image_top1_all')} "
                         f"(of {row.get('retrieval_images', 0)}) |")
        lines += ["", "AlexNet, InceptionV3, CLIP, EffNet-B and SwAV are not available in the demo (no feature-network "
                      "weights; docs/evaluation.md), and the stand-in's reconstructions are coarse by design."]
    lines += _caption_lines(summary.get("captions") or [])
    lines += ["", f"| stage (real-time run) | median ms | p99 ms | n | TR = {tr * 1e3:.0f} ms |",
              "| --- | --- | --- | --- | --- |"]
    for row in summary["latency_ms"]:
        ok = "within" if row["p99"] <= tr * 1e3 else "over"
        lines.append(f"| {row['stage']} | {row['median']:.0f} | {row['p99']:.0f} | {row['n']} | {ok} |")
    threads = summary["settings"].get("threads")
    if threads:
        lines += ["", f"Threads (torch, OpenMP, BLAS) in the real-time run: scanner side {threads['scanner']}, decoder "
                      f"{threads['decoder']} (0: every core; docs/real-scanner.md, one machine)."]
    dropped = summary.get("realtime_dropped") or []
    if dropped:
        named = ", ".join(f"{i + 1} (index {i})" for i in dropped)  # from 1, as the console; the index as in BIDS
        lines += ["", f"Volume(s) {named} of the real-time run were withheld on purpose "
                  "(an export that loses a file): the scanner side declared them missing, the GLM kept the time axis, "
                  "and the console marks the gap."]
    t = summary["timings_s"]
    lines += ["", f"Pretraining {t['pretraining_s']:.0f} s (0 when cached), calibration scan {t['calibration_scan_s']:.0f} s, "
              f"calibration {t['calibration_s']:.0f} s, real-time run {t['realtime_s']:.0f} s; "
              f"total {t['total_s'] / 60:.1f} min."]
    return lines


def _num(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def write_report(path: Path, summary: dict) -> Path:
    """report.md: the figures, the grid, the screenshots and where everything went."""
    p = summary["paths"]
    rel = {k: os.path.relpath(v, path.parent) for k, v in p.items() if isinstance(v, str)}
    lines = ["# rtdecode demo: one simulated visit", "",
             "Simulated data and a CPU-sized model in a stand-in token space (not CLIP); reconstructions are the "
             "stand-in's coarse inversion of the predicted tokens, not SDXL unCLIP images.", "", *report_lines(summary), "",
             "## Real-time run: shown, reconstructed, top-5 retrieved", "", f"![grid]({rel['grid']})", ""]
    for shot in p["screenshots"]:
        lines += [f"![{Path(shot).stem}]({os.path.relpath(shot, path.parent)})", ""]
    lines += ["## Where everything went", "",
              *[f"- {k.replace('_', ' ')}: `{v}`" for k, v in p.items() if isinstance(v, str)]]
    path.write_text("\n".join(lines) + "\n")
    return path
