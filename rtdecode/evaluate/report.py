"""Writing an evaluation: summary (markdown, CSV, JSON), per-trial CSV, a grid and histograms."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np

from models.features import SPECS
from rtdecode.evaluate.retrieval import DIRECTIONS, REPEATS
from rtdecode.evaluate.score import NETWORK_METRICS, PIXEL_METRICS, RETRIEVAL_WAYS, Scores
from rtdecode.wire.schema import EVALUATION_METRICS

RETRIEVAL_COLUMNS = ("retrieval_images", "retrieval_brains",
                     *(f"{d}_top1_{w}" for w in ("all", *RETRIEVAL_WAYS) for d in DIRECTIONS))
SUMMARY_COLUMNS = ("version", "run", "repeats", "trials", "images", "reconstructions", *PIXEL_METRICS,
                   *NETWORK_METRICS, *RETRIEVAL_COLUMNS)
TRIAL_COLUMNS = ("version", "run", "trial", "image", "reconstruction", *PIXEL_METRICS, *NETWORK_METRICS,
                 "rank_of_image", "rank_of_brain", "retrieval_images")
PERCENT = {m for m, s in SPECS.items() if s.kind == "two_way"} | {c for c in RETRIEVAL_COLUMNS if "top1" in c}

# MindEye2, Table 1 (mean of subjects 1, 2, 5, 7; ../shared/reference/mindeye2.md) and Real-time MindEye
# (50-way top-1; realtime-fmri.md), each figure beside the column its code computed: MindEye2's "image
# retrieval" is its fwd_sim, one row per image, i.e. for each image which brain sample (brain_for_image);
# its "brain retrieval" is image_for_brain. Real-time MindEye's are placed the same way (its paper takes
# MindEye2's evaluation; its own evaluation code was not checked here).
PAPERS = [
    ("MindEye2, 40 h", {"repeats": "averaged", "PixCorr": .322, "SSIM": .431, "AlexNet(2)": .961, "AlexNet(5)": .986,
                        "InceptionV3": .954, "CLIP": .930, "EffNet-B": .619, "SwAV": .344,
                        "brain_for_image_top1_300": .988, "image_for_brain_top1_300": .983}),
    ("MindEye2, 1 h pretrained", {"repeats": "averaged", "PixCorr": .195, "SSIM": .419, "AlexNet(2)": .842,
                                  "AlexNet(5)": .906, "InceptionV3": .812, "CLIP": .792, "EffNet-B": .810,
                                  "SwAV": .468, "brain_for_image_top1_300": .790, "image_for_brain_top1_300": .574}),
    ("Real-time MindEye, end of run", {"repeats": "single-trial", "brain_for_image_top1_50": .66,
                                       "image_for_brain_top1_50": .64}),
    ("Real-time MindEye, fast (7.5 s)", {"repeats": "single-trial", "brain_for_image_top1_50": .36,
                                         "image_for_brain_top1_50": .40}),
]
LEGEND = [
    *(f"- `{d}_top1_*`: {what} (top-1)." for d, what in DIRECTIONS.items()),
    "  MindEye2's code reports `brain_for_image` first, as \"image retrieval\" (its `fwd_sim` has one row per "
    "image), and `image_for_brain` as \"brain retrieval\".",
    *(f"- repeats `{way}`: {what}." for way, what in REPEATS.items()),
]


def _fmt(column: str, value) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if column in PERCENT:
        return f"{100 * value:.1f}%"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def _chance(row: dict) -> str:
    """Chance for the columns this row has a figure in, and for no other."""
    parts = ["2-way 50%"] if any(row.get(m) is not None for m in NETWORK_METRICS if SPECS[m].kind == "two_way") else []
    n = row.get("retrieval_images") or 0
    if n >= 2 and any(row.get(f"{d}_top1_all") is not None for d in DIRECTIONS):
        parts.append(f"all-way 1/{n} = {100 / n:.1f}%")
    parts += [f"{w}-way {100 / w:.2g}%" for w in RETRIEVAL_WAYS
              if n >= w and any(row.get(f"{d}_top1_{w}") is not None for d in DIRECTIONS)]
    return "; ".join(parts) or "n/a"


def write_tables(scores: Scores, out: Path, title: str) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {"summary_md": out / "summary.md", "summary_csv": out / "summary.csv", "summary_json": out / "summary.json",
             "trials_csv": out / "trials.csv"}
    for name, columns, rows in (("summary_csv", SUMMARY_COLUMNS, scores.summary), ("trials_csv", TRIAL_COLUMNS, scores.per_trial)):
        with open(paths[name], "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            for row in rows:
                writer.writerow({c: ("" if row.get(c) is None else row.get(c)) for c in columns})
    paths["summary_json"].write_text(json.dumps({"title": title, "summary": scores.summary, "notes": scores.notes},
                                                indent=1, default=float))
    shown = SUMMARY_COLUMNS  # every column, n/a where not computed (the notes say why)
    lines = [f"# {title}", "", "| " + " | ".join(shown) + " | chance |", "|" + " --- |" * (len(shown) + 1)]
    for row in scores.summary:
        lines.append("| " + " | ".join(_fmt(c, row.get(c)) for c in shown) + f" | {_chance(row)} |")
    lines += ["", "Lower is better for EffNet-B and SwAV (correlation distance); higher for every other column.",
              "", *LEGEND, "", "## For reference: the papers' figures (not this session's)", ""]
    paper_cols = [c for c in SUMMARY_COLUMNS if any(c in p for _, p in PAPERS)]
    lines += ["| source | " + " | ".join(paper_cols) + " |", "|" + " --- |" * (len(paper_cols) + 1)]
    for name, figures in PAPERS:
        lines.append(f"| {name} | " + " | ".join(_fmt(c, figures.get(c)) for c in paper_cols) + " |")
    if scores.notes:
        lines += ["", "## Not evaluated, and why", ""] + [f"- {n}" for n in scores.notes]
    paths["summary_md"].write_text("\n".join(lines) + "\n")
    return paths


def ranking_metric(scores: Scores) -> str | None:
    """CLIP 2-way as the issue asks; failing that the first image metric every scored trial has."""
    for m in EVALUATION_METRICS:
        if any(m in r for r in scores.per_trial):
            return m
    return None


def write_grid(scores: Scores, shown_image, recon_image, out: Path, per_version: int = 3,
               banner: str | None = None) -> Path | None:
    """Rows of the best, median and worst trials of each version by :func:`ranking_metric`: shown | reconstructed.
    ``banner`` heads the picture (an oracle check's)."""
    from PIL import Image, ImageDraw

    metric = ranking_metric(scores)
    if metric is None:
        return None
    cell, pad, head = 128, 8, 18
    rows = []
    for version in sorted({r["version"] for r in scores.per_trial}):
        scored = sorted((r for r in scores.per_trial if r["version"] == version and metric in r), key=lambda r: r[metric])
        if not scored:
            continue
        picks = {"best": scored[-1], "median": scored[len(scored) // 2], "worst": scored[0]}
        rows += [(f"{version} {label}", r) for label, r in list(picks.items())[:per_version]]
    canvas = Image.new("RGB", (2 * (cell + pad) + pad + 220, len(rows) * (cell + pad) + pad + head), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((pad, 3), f"{banner + '   ' if banner else ''}shown | reconstructed   (ranked by {metric})", fill="black")
    for i, (label, r) in enumerate(rows):
        y = head + pad + i * (cell + pad)
        canvas.paste(Image.fromarray(shown_image(r["image"])).resize((cell, cell)), (pad, y))
        canvas.paste(Image.fromarray(recon_image(r)).resize((cell, cell)), (2 * pad + cell, y))
        draw.text((3 * pad + 2 * cell, y + 4), f"{label}\nrun {r['run']} trial {r['trial']}\n{r['image']}\n"
                                               f"{metric} {_fmt(metric, r[metric])}", fill="black")
    canvas.save(out)
    return out


def write_histograms(scores: Scores, out: Path, banner: str | None = None) -> Path | None:
    """One panel per metric, one histogram per version; ``banner`` titles the figure (an oracle check's)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    present = [m for m in (*PIXEL_METRICS, *NETWORK_METRICS) if any(m in r for r in scores.per_trial)]
    if not present:
        return None
    cols = min(4, len(present))
    rows = math.ceil(len(present) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
    for ax, m in zip(axes.flat, present, strict=False):
        for version in sorted({r["version"] for r in scores.per_trial}):
            values = [r[m] for r in scores.per_trial if r["version"] == version and m in r]
            values = np.asarray(values, float)
            values = values[np.isfinite(values)]
            if len(values):
                if np.ptp(values) > 1e-6 * max(1.0, np.abs(values).max()):
                    ax.hist(values, bins=20, alpha=0.6, label=version)
                else:  # a spread numpy cannot split (an oracle's 1.0 and 0.9999999999999998): one bar of unit
                    # width, as numpy draws equal values; a bin as narrow as the spread would be invisible
                    mid = float(values.mean())
                    ax.hist(values, bins=1, range=(mid - 0.5, mid + 0.5), alpha=0.6, label=version)
        ax.set_title(m, fontsize=9)
    for ax in list(axes.flat)[len(present):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    if banner:
        fig.suptitle(banner, fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out
