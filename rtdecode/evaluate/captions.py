"""Caption scores for ``rtdecode evaluate``, as MindEye2's evaluation computes them.

MindEyeV2's ``final_evaluations.ipynb`` ("Captions evaluation") scores the captions predicted from the
brain against the images' reference captions with: METEOR (HF ``evaluate``'s, i.e. NLTK's meteor_score per
caption, averaged), ROUGE-1 and ROUGE-L (HF ``evaluate``'s, i.e. Google's rouge_score F-measure, no
stemming), and the cosine similarity of sentence embeddings: sentence-transformers all-MiniLM-L6-v2, CLIP
ViT-B/32 and CLIP ViT-L/14 text features (diagonal mean). Here:

- METEOR: NLTK's own ``meteor_score`` (alpha .9, beta 3, gamma .5; exact and Porter-stem matches) with
  no WordNet synonyms (WordNet is a download): a lower bound of the published figure's method.
- ROUGE-1 / ROUGE-L: F-measure on rouge_score's tokens (lowercase, [a-z0-9] runs), averaged (HF's
  default aggregator takes the bootstrap median of the mean, within a rounding of it).
- Sentence, CLIP-B, CLIP-L: computed only from a local copy of the network in Hugging Face layout (a
  folder named as below in ``--weights``), read as safetensors; otherwise "not computed", never guessed.

References: a built-in image's caption is its painter's (rtdecode.gallery.captions); a gallery folder may
hold ``captions.tsv`` (id, caption) for its own images. Refined reconstructions (``--refine``) are scored
as their own version, ``<version>-refined`` (:func:`refined_trials`).
"""

from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from rtdecode.evaluate.collect import Trial

TEXT_NETWORKS = {"Sentence": "all-MiniLM-L6-v2", "CLIP-B": "clip-vit-base-patch32", "CLIP-L": "clip-vit-large-patch14"}
METRICS = ("METEOR", "ROUGE-1", "ROUGE-L", *TEXT_NETWORKS)
CHANCE = ("chance METEOR", "chance ROUGE-L")
# MindEye2 captions one averaged output per image; rtdecode captions every trial, so `averaged` averages
# the scores of an image's captions (one figure per image), as the image metrics' `averaged` rows do
REPEATS = ("averaged", "single-trial")
# MindEye2's figure beside ours: the evaluation notebook's printed output (subject 1, 40 sessions, brain
# captions against COCO's); the paper's Table 2 holds the other columns, not read from a source here.
PAPER = [("MindEye2 subj01 40 h (final_evaluations.ipynb output)", {"METEOR": 0.248})]
_TOKEN = re.compile(r"[a-z0-9]+")


@dataclass
class CaptionScores:
    per_trial: list[dict]  # version, run, trial, image, caption, reference, METEOR, ROUGE-1, ROUGE-L, ...
    summary: list[dict]  # one row per version: trials and each metric's mean
    notes: list[str] = field(default_factory=list)


class _NoSynonyms:
    """NLTK's METEOR asks WordNet for synonyms; without the WordNet download there are none."""

    def synsets(self, *_args, **_kwargs) -> list:
        return []


def meteor(prediction: str, reference: str) -> float:
    """NLTK's METEOR of one caption against one reference (exact and stem matches; see the module note)."""
    from nltk.stem.porter import PorterStemmer
    from nltk.translate.meteor_score import meteor_score

    return float(meteor_score([_words(reference)], _words(prediction), stemmer=PorterStemmer(), wordnet=_NoSynonyms()))


def _words(text: str) -> list[str]:
    # HF evaluate's METEOR tokenises with NLTK's word_tokenize (punkt, a download); for captions of plain
    # words and punctuation this split gives the same words.
    return re.findall(r"\w+|[^\w\s]", text.lower())


def rouge(prediction: str, reference: str) -> tuple[float, float]:
    """(ROUGE-1, ROUGE-L) F-measure of one caption against one reference."""
    p, r = _TOKEN.findall(prediction.lower()), _TOKEN.findall(reference.lower())
    if not p or not r:
        return 0.0, 0.0
    overlap = sum(min(p.count(w), r.count(w)) for w in set(p))
    return _f(overlap, len(p), len(r)), _f(_lcs(p, r), len(p), len(r))


def _f(hits: int, n_pred: int, n_ref: int) -> float:
    if hits == 0:
        return 0.0
    precision, recall = hits / n_pred, hits / n_ref
    return 2 * precision * recall / (precision + recall)


def _lcs(a: list[str], b: list[str]) -> int:
    row = [0] * (len(b) + 1)
    for x in a:
        prev = 0
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], prev + 1 if x == y else max(row[j], row[j - 1])
    return row[-1]


def text_similarity(folder: Path, predictions: list[str], references: list[str]) -> np.ndarray:
    """Cosine similarity of each caption with its reference, through a local text network: CLIP (its text
    features) or a sentence transformer (mean of its token states over the mask, as all-MiniLM-L6-v2 pools)."""
    import torch
    from transformers import AutoModel, AutoTokenizer, CLIPModel

    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    clip = (folder / "config.json").is_file() and '"clip"' in (folder / "config.json").read_text()
    network = (CLIPModel if clip else AutoModel).from_pretrained(folder, local_files_only=True, use_safetensors=True).eval()

    def embed(texts: list[str]) -> torch.Tensor:
        batch = tokenizer(texts, return_tensors="pt", padding=True, truncation=True)
        with torch.no_grad():
            if clip:
                out = network.get_text_features(**batch)
                out = out if isinstance(out, torch.Tensor) else out.pooler_output
            else:
                states = network(**batch).last_hidden_state
                mask = batch["attention_mask"][..., None].to(states.dtype)
                out = (states * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(out.float(), dim=-1)

    return (embed(predictions) * embed(references)).sum(-1).numpy()


def reference_captions(images: list[str], gallery: Path | None) -> tuple[dict[str, str], list[str]]:
    """Each shown image's reference caption: a gallery's captions.tsv, else the painter's for built-in ids."""
    from rtdecode.gallery.captions import painted_caption

    given: dict[str, str] = {}
    table = gallery / "captions.tsv" if gallery is not None else None
    if table is not None and table.is_file():
        from rtdecode.base.session import read_tsv

        given = {r["id"]: r["caption"] for r in read_tsv(table) if r.get("id") and r.get("caption")}
    refs, issues = {}, []
    for image in sorted(set(images)):
        if image in given:
            refs[image] = given[image]
            continue
        try:
            refs[image] = painted_caption(image)
        except ValueError:
            issues.append(f"image {image}: no reference caption (not built in; no row in the gallery's captions.tsv)")
    return refs, issues


def refined_trials(trials: list[Trial], refined_path) -> list[Trial]:
    """The trials with a refined reconstruction, as their own version ``<version>-refined``."""
    out = []
    for t in trials:
        path = refined_path(t.key)
        if path.is_file():
            out.append(replace(t, version=f"{t.version}-refined", recon=path))
    return out


def score_captions(trials: list[Trial], captions: dict[str, str], gallery: Path | None,
                   weights: Path | None, oracle: bool = False) -> CaptionScores:
    """Every trial with a caption against its image's reference; summary per version and way of handling
    repeats. ``oracle``: each trial's caption is its image's own reference (a plumbing check of the
    metrics: ROUGE and the network similarities 1.0, METEOR its ceiling just under 1)."""
    refs, notes = reference_captions([t.image for t in trials], gallery)
    rows = []
    for t in trials:
        if t.version.endswith("-refined") or t.image not in refs:
            continue
        text = refs[t.image] if oracle else captions.get(t.key, "")
        if text:
            r1, rl = rouge(text, refs[t.image])
            rows.append({"version": t.version, "run": t.run, "trial": t.trial, "image": t.image, "caption": text,
                         "reference": refs[t.image], "METEOR": meteor(text, refs[t.image]), "ROUGE-1": r1, "ROUGE-L": rl})
    if oracle:
        notes.append("oracle: each shown image's own reference caption scored as the caption; every figure should "
                     "be the metric's best (1.0; METEOR just under 1, its fragmentation penalty for one chunk)")
    if not rows:
        return CaptionScores([], [], [*notes, "no captions: the decoder ran without a captioner (--captioner)"])
    for metric, name in TEXT_NETWORKS.items():
        folder = weights / name if weights is not None else None
        if folder is None or not (folder / "config.json").is_file():
            notes.append(f"{metric}: not computed (no {name} folder in --weights; it is a pretrained network)")
            continue
        sims = text_similarity(folder, [r["caption"] for r in rows], [r["reference"] for r in rows])
        for row, s in zip(rows, sims, strict=True):
            row[metric] = float(s)
    summary = []
    for version in sorted({r["version"] for r in rows}):
        mine = [r for r in rows if r["version"] == version]
        chance(mine)
        for way in REPEATS:
            summary.append({"version": version, "repeats": way, "trials": len(mine),
                            "images": len({r["image"] for r in mine}),
                            **{m: _mean(mine, m, way) for m in (*METRICS, *CHANCE) if m in mine[0]}})
    return CaptionScores(rows, summary, notes)


def _mean(rows: list[dict], metric: str, way: str) -> float:
    # averaged: one score per image (the mean over its trials), then the mean over images, as the image
    # metrics' `averaged` rows; single-trial: the mean over trials
    if way == "single-trial":
        return float(np.mean([r[metric] for r in rows]))
    by_image: dict[str, list[float]] = {}
    for r in rows:
        by_image.setdefault(r["image"], []).append(r[metric])
    return float(np.mean([np.mean(v) for v in by_image.values()]))


def chance(rows: list[dict]) -> dict[str, float]:
    """Each row's METEOR and ROUGE-L against another image's reference (the next such row's, in turn),
    set in the rows; returns their means over trials. What the scores are worth when the captioner says
    nothing about the trial (captions of one template share words). Another showing of the same image is
    skipped: it would be a true match, not chance."""
    if len({r["image"] for r in rows}) < 2:
        return {}
    for i, row in enumerate(rows):
        other = next(rows[(i + k) % len(rows)] for k in range(1, len(rows)) if rows[(i + k) % len(rows)]["image"] != row["image"])
        row["chance METEOR"] = meteor(row["caption"], other["reference"])
        row["chance ROUGE-L"] = rouge(row["caption"], other["reference"])[1]
    return {m: float(np.mean([r[m] for r in rows])) for m in CHANCE}


def write_captions(scores: CaptionScores, out: Path, title: str = "Captions") -> dict[str, Path]:
    """captions.md (per version and repeats, MindEye2's figure beside), captions.csv (per trial)."""
    out.mkdir(parents=True, exist_ok=True)
    md, table = out / "captions.md", out / "captions.csv"
    columns = ("version", "run", "trial", "image", "caption", "reference", *METRICS)
    with open(table, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in scores.per_trial:
            writer.writerow({c: row.get(c, "") for c in columns})
    shown = (*METRICS, *CHANCE)
    lines = [f"# {title}", "", "| version | repeats | trials | images | " + " | ".join(shown) + " |",
             "|" + " --- |" * (len(shown) + 4)]
    for row in scores.summary:
        lines.append(f"| {row['version']} | {row['repeats']} | {row['trials']} | {row['images']} | "
                     + " | ".join(_fmt(row.get(m)) for m in shown) + " |")
    lines += ["", "METEOR without WordNet synonyms (exact and stem matches); chance: each caption against another "
                  "image's reference. repeats `averaged`: one score per image (the mean over its trials' captions; "
                  "MindEye2 captions one averaged output per image), then the mean over images; `single-trial`: "
                  "the mean over trials. docs/evaluation.md, Captions.", "",
              "## For reference: MindEye2's figures (not this session's)", "",
              "| source | " + " | ".join(METRICS) + " |", "|" + " --- |" * (len(METRICS) + 1)]
    for name, figures in PAPER:
        lines.append(f"| {name} | " + " | ".join(_fmt(figures.get(m), "not quoted") for m in METRICS) + " |")
    if scores.notes:
        lines += ["", "## Not computed, and why", "", *[f"- {n}" for n in scores.notes]]
    md.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {"captions_md": md, "captions_csv": table}


def caption_score_messages(captions_csv: Path, identity: dict) -> list:
    """Each trial's caption METEOR from ``captions.csv`` as stage 'evaluation' results, for a console replay."""
    from rtdecode.wire.protocol import Message

    if not captions_csv.is_file():
        return []
    with open(captions_csv, newline="", encoding="utf-8") as fh:
        rows = [r for r in csv.DictReader(fh) if r.get("METEOR") and not r["version"].endswith("-refined")]
    return [Message("result", {"run": int(r["run"]), "trial": int(r["trial"]), "version": r["version"], "image": r["image"],
                               "stage": "evaluation", "metric": "METEOR", "score": float(r["METEOR"]), **identity})
            for r in rows if math.isfinite(float(r["METEOR"]))]


def _fmt(value, missing: str = "not computed") -> str:
    return missing if value is None or (isinstance(value, float) and not math.isfinite(value)) else f"{value:.3f}"
