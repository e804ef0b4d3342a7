"""The calibration report: ``report.md`` with PNG plots, written into the model folder's ``report/``.

Loss curves, held-out retrieval (both directions, 300-way and 50-way), a from-scratch comparison when
one was trained, per-run motion and tSNR when the model came from a recorded session, and a grid of
held-out images with their top-5 retrievals among the held-out set.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from rtdecode.gallery.builtin import builtin_images
from rtdecode.gallery.embed import ImageSource


def builtin_or_none(ids: list[str]) -> np.ndarray | None:
    """The built-in gallery's images by id (None when an id is not one of them: no grid then)."""
    try:
        return builtin_images(ids)
    except (KeyError, ValueError, IndexError):
        return None


def run_quality(session: str | Path) -> list[dict]:
    """Per run of a session folder: volumes, missing, mean and max framewise displacement, final tSNR."""
    rows = []
    for path in sorted(Path(session).glob("derivatives/rtdecode/func/*_desc-confounds_timeseries.tsv")):
        with open(path, newline="") as fh:
            table = list(csv.DictReader(fh, delimiter="\t"))
        ok = [r for r in table if r["status"] == "ok"]
        fd = np.array([float(r["framewise_displacement"] or 0) for r in ok])
        tsnr = [float(r["tsnr"]) for r in ok if r.get("tsnr") not in (None, "", "nan")]
        run = path.name.split("_run-")[1].split("_")[0]
        rows.append({"run": run, "volumes": len(table), "missing": len(table) - len(ok), "fd": fd,
                     "fd_mean": float(fd.mean()) if len(fd) else float("nan"),
                     "fd_max": float(fd.max()) if len(fd) else float("nan"),
                     "tsnr": tsnr[-1] if tsnr else float("nan")})
    return rows


def _loss_plot(folder: Path, out: Path) -> None:
    import matplotlib.pyplot as plt

    history = np.load(folder / "history.npz")
    panels = [("clip", "contrastive (BiMixCo, then SoftCLIP)"), ("prior", "prior MSE")]
    if "blurry" in history and np.any(history["blurry"]):
        panels.append(("blurry", "blurry branch L1 (VAE latents)"))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.2))
    for ax, (key, title) in zip(axes, panels, strict=True):
        y = history[key]
        ax.plot(np.arange(1, len(y) + 1), y, lw=0.8, color="#888")
        if len(y) >= 10:  # a running mean, so the trend reads through batch noise
            k = max(len(y) // 20, 5)
            ax.plot(np.arange(k, len(y) + 1), np.convolve(y, np.ones(k) / k, mode="valid"), color="C0")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)


def _quality_plot(runs: list[dict], out: Path) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.0), gridspec_kw={"width_ratios": [3, 1]})
    for r in runs:
        axes[0].plot(r["fd"], lw=0.8, label=f"run {r['run']}")
    axes[0].set_title("framewise displacement (mm)", fontsize=9)
    axes[0].set_xlabel("volume")
    axes[1].bar([r["run"] for r in runs], [r["tsnr"] for r in runs], color="C2")
    axes[1].set_title("tSNR at run end", fontsize=9)
    if len(runs) <= 8:
        axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)


def _grid(held: list[dict], images: ImageSource, out: Path, rows: int = 8) -> bool:
    from PIL import Image, ImageDraw

    held = held[:rows]
    ids = sorted({h["image"] for h in held} | {t for h in held for t in h["top5"]})
    pictures = images(ids)
    if pictures is None:
        return False
    cell, pad = 96, 6
    lookup = {i: Image.fromarray(p).convert("RGB").resize((cell, cell)) for i, p in zip(ids, pictures, strict=True)}
    canvas = Image.new("RGB", (6 * (cell + pad) + pad, len(held) * (cell + pad) + pad + 14), "white")
    draw = ImageDraw.Draw(canvas)
    for c, title in enumerate(["shown", "1st", "2nd", "3rd", "4th", "5th"]):
        draw.text((pad + c * (cell + pad), 2), title, fill="black")
    for r, h in enumerate(held):
        y = 14 + pad + r * (cell + pad)
        for c, im in enumerate([h["image"], *h["top5"]]):
            x = pad + c * (cell + pad)
            canvas.paste(lookup[im], (x, y))
            if c and im == h["image"]:  # the correct image among the retrievals
                draw.rectangle([x - 3, y - 3, x + cell + 2, y + cell + 2], outline=(0, 160, 0), width=3)
    canvas.save(out)
    return True


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def write_report(folder: str | Path, session: str | Path | None = None,
                 images: ImageSource | None = builtin_or_none) -> Path:
    """Write ``<folder>/report/report.md`` (and its PNGs) for a model folder written by calibrate."""
    folder = Path(folder)
    out = folder / "report"
    out.mkdir(exist_ok=True)
    summary = json.loads((folder / "training.json").read_text())
    ev, train = summary.get("evaluation", {}), summary["train"]
    overlap = summary.get("held_out_overlap") or {}
    warning = []
    if summary.get("overlap_allowed"):
        found = ", ".join(f"{n} in the {k} set" for k, n in overlap.items() if n)
        warning = [f"**Held-out images were trained on ({found}; --allow-overlap): the held-out figures below "
                   "measure memory of those images as much as generalisation.**", ""]
    if summary.get("seen_person"):  # first of all: the figures are not about a new person
        warning = [f"**Not a new person: {summary['seen_person']} (--allow-seen-person). The figures below say "
                   "nothing about calibrating a new person's hour.**", "", *warning]
    lines = warning + [f"# Calibration report: {json.loads((folder / 'subject.json').read_text())['subject']}", "",
             f"{summary['steps']} steps, {train['epochs']} epochs, batch {train['batch_size']}, "
             f"{summary.get('processes', 1)} process(es), precision {train.get('precision', 'no')}, "
             f"{summary.get('seconds', float('nan')):.0f} s; started from "
             f"{summary.get('pretrained') or 'scratch'}.", ""]
    tuning = summary.get("tuning")
    if tuning:
        tried = ", ".join(f"{r['max_lr']:g} x {r['epochs']} ep. {_pct(r['score'])}" for r in tuning["grid"])
        lines += [f"Learning rate {tuning['best']['max_lr']:g} and {tuning['best']['epochs']} epochs were chosen on "
                  f"{len(tuning['validation_images'])} validation images of the training trials (never the held-out "
                  f"ones), {tuning['grid'][0]['n_way']}-way top-1 both ways: {tried}.", ""]
    seen = summary.get("calibration_images_in_pretraining")
    if seen:
        lines += [f"Of the {seen['images']} images this hour trained on, {seen['in_pretraining']} were pretraining "
                  "images too.", ""]
    if (folder / "history.npz").exists():
        _loss_plot(folder, out / "loss.png")
        lines += ["## Training losses", "", "![losses](loss.png)", ""]
    if ev:
        lines += ["## Held-out retrieval", "",
                  f"{ev['held_out_images']} held-out images (every repeat of an image kept out of training; "
                  "repeats averaged), top-1 over 30 random draws of N images. Held-out images found in each "
                  "training set: " + (", ".join(f"{k} {'not listed' if n is None else n}" for k, n in overlap.items())
                                      or "not recorded") + ".", "",
                  "| model | N-way | brain -> image | image -> brain | chance |", "| --- | --- | --- | --- | --- |"]
        models = [("this model", ev)] + ([("from scratch, same data", summary["scratch"])]
                                         if summary.get("scratch") else [])
        for name, e in models:
            for r in e["retrieval"]:
                lines.append(f"| {name} | {r['n_way']} | {_pct(r['top1_brain_to_image'])} | "
                             f"{_pct(r['top1_image_to_brain'])} | {_pct(r['chance'])} |")
        lines.append("")
        blurry = [(name, e["blurry"]) for name, e in models if e.get("blurry")]
        if blurry:
            lines += ["## Blurry branch (held out)", "",
                      "Predicted SD-VAE latents against the shown images' latents: mean L1, mean Pearson r per "
                      "image, and 2-way identification by correlation (chance 50%).", "",
                      "| model | L1 | Pearson r | 2-way |", "| --- | --- | --- | --- |"]
            lines += [f"| {name} | {b['l1']:.3f} | {b['pearson']:.2f} | {_pct(b['two_way'])} |" for name, b in blurry]
            lines.append("")
    if session is not None:
        runs = run_quality(session)
        if runs:
            _quality_plot(runs, out / "quality.png")
            lines += ["## Scan quality per run", "", "| run | volumes | missing | mean FD (mm) | max FD (mm) | tSNR |",
                      "| --- | --- | --- | --- | --- | --- |"]
            lines += [f"| {r['run']} | {r['volumes']} | {r['missing']} | {r['fd_mean']:.2f} | {r['fd_max']:.2f} | "
                      f"{r['tsnr']:.0f} |" for r in runs]
            lines += ["", "![motion and tSNR](quality.png)", ""]
    held_path = folder / "held_out.json"
    if held_path.exists() and images is not None:
        if _grid(json.loads(held_path.read_text()), images, out / "held_out_top5.png"):
            lines += ["## Held-out images and their top-5 retrievals", "",
                      "Each row: the image shown, then the five held-out images whose tokens lie nearest the "
                      "prediction; a green frame marks the right one.", "", "![top-5](held_out_top5.png)", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path
