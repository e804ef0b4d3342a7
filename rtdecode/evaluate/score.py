"""Scoring collected trials: image metrics per trial, then per version and run; retrieval per group."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from models import registry
from models.features import SPECS, FeatureExtractor, build_network
from models.retrieval import n_way_top1, similarity
from rtdecode.evaluate import metrics
from rtdecode.evaluate.collect import Collected, Trial, predicted_tokens

PIXEL_METRICS = ("PixCorr", "SSIM")
NETWORK_METRICS = tuple(SPECS)
RETRIEVAL_WAYS = (300, 50)  # MindEye2's 300-way; Real-time MindEye's 50-way; both as 30 random draws
DRAWS = 30


@dataclass
class Scores:
    per_trial: list[dict]  # one row per decoded trial (version-wide 2-way pools)
    summary: list[dict]  # one row per (version, run or 'all')
    notes: list[str] = field(default_factory=list)  # what could not be computed, and why


def _tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(image, np.float32)).permute(2, 0, 1) / 255.0


class ImageSource:
    """Shown images by id: from a gallery folder, else the built-in set for ``sim-NNNNN`` ids."""

    def __init__(self, gallery: str | Path | None) -> None:
        from rtdecode.gallery.folder import gallery_files

        self.files = gallery_files(gallery) if gallery else {}

    def load(self, image: str, size: int | None = None) -> np.ndarray:
        from rtdecode.gallery.builtin import StimulusSet, index_of
        from rtdecode.gallery.folder import load_image

        if image in self.files:
            return load_image(self.files[image], size)
        try:
            index = index_of(image)
        except ValueError:
            raise FileNotFoundError(f"image {image!r} is in no gallery given (--gallery)") from None
        arr = StimulusSet().image(index)
        return arr if size in (None, arr.shape[0]) else np.asarray(_resize_uint8(arr, size))


def _resize_uint8(arr: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(arr).resize((size, size), Image.BICUBIC))


def load_pairs(trials: list[Trial], source: ImageSource) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], list[str]]:
    """256 px tensors of the shown images (by id) and of the reconstructions (by key); issues as lines."""
    from rtdecode.gallery.folder import load_image

    shown: dict[str, torch.Tensor] = {}
    recons: dict[str, torch.Tensor] = {}
    issues: list[str] = []
    for t in trials:
        if t.image not in shown:
            try:
                shown[t.image] = metrics.to_256(_tensor(source.load(t.image))[None])[0]
            except (FileNotFoundError, OSError, ValueError) as exc:
                issues.append(f"run {t.run} trial {t.trial}: shown image unavailable: {exc}")
                shown[t.image] = None  # type: ignore[assignment]
        if t.recon is None or shown.get(t.image) is None:
            continue
        try:
            rec = load_image(t.recon)
        except OSError as exc:
            issues.append(f"{t.recon}: not a readable image ({exc}); left out of the image metrics")
            continue
        h, w = rec.shape[:2]
        if h != w:
            issues.append(f"{t.recon}: {w}x{h} pixels, not square; resized to 256x256 as MindEye2 does (aspect lost)")
        recons[t.key] = metrics.to_256(_tensor(rec)[None])[0]
    return {k: v for k, v in shown.items() if v is not None}, recons, issues


def network_features(trials: list[Trial], shown: dict, recons: dict, weights: Path | None,
                     notes: list[str]) -> dict[str, tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]:
    """{metric: (features by image id, features by trial key)} for each network whose weights are present."""
    out = {}
    ids = sorted(shown)
    keys = [t.key for t in trials if t.key in recons]
    for file in dict.fromkeys(s.file for s in SPECS.values()):
        names = [s.metric for s in SPECS.values() if s.file == file]
        if weights is None:
            notes += [f"{m}: not available: no weights folder given (--weights)" for m in names]
            continue
        path = registry.local_path(file, weights)
        if not path.is_file():
            notes += [f"{m}: not available: {path} missing (rtdecode models download {file} --folder {weights})"
                      for m in names]
            continue
        if not keys:
            continue
        extractor = FeatureExtractor(file, build_network(file, path))
        real = extractor(torch.stack([shown[i] for i in ids]))
        fake = extractor(torch.stack([recons[k] for k in keys]))
        for m in names:
            out[m] = (dict(zip(ids, real[m], strict=True)), dict(zip(keys, fake[m], strict=True)))
    return out


def _image_scores(group: list[Trial], shown: dict, recons: dict, feats: dict) -> dict[str, dict[str, float]]:
    """{metric: {trial key: score}} over the trials of one pool that have a reconstruction."""
    pairs = [t for t in group if t.key in recons and t.image in shown]
    if not pairs:
        return {}
    keys = [t.key for t in pairs]
    real = torch.stack([shown[t.image] for t in pairs])
    fake = torch.stack([recons[t.key] for t in pairs])
    out = {"PixCorr": dict(zip(keys, metrics.pixcorr(real, fake), strict=True)),
           "SSIM": dict(zip(keys, metrics.ssim(real, fake), strict=True))}
    for m, (by_image, by_key) in feats.items():
        a = np.stack([by_image[t.image] for t in pairs])
        b = np.stack([by_key[t.key] for t in pairs])
        score = metrics.two_way(a, b) if SPECS[m].kind == "two_way" else metrics.correlation_distance(a, b)
        out[m] = dict(zip(keys, score, strict=True))
    return out


def _retrieval(group: list[Trial], predicted: dict[str, np.ndarray], truth: dict[str, np.ndarray],
               seed: int) -> tuple[dict, dict[str, tuple[int, int]]]:
    """Top-1 both ways over the group's distinct images (first presentation of each); per-trial ranks."""
    firsts: dict[str, Trial] = {}
    for t in sorted(group, key=lambda t: (t.run, t.trial)):
        if t.key in predicted and t.image in truth:
            firsts.setdefault(t.image, t)
    chosen = list(firsts.values())
    n = len(chosen)
    out: dict = {"retrieval_n": n}
    if n < 2:
        return out, {}
    pred = np.stack([predicted[t.key] for t in chosen])
    true = np.stack([truth[t.image] for t in chosen])
    image_rank, brain_rank = metrics.retrieval_rank(similarity(pred, true))
    out["image_top1_all"], out["brain_top1_all"] = float(np.mean(image_rank == 1)), float(np.mean(brain_rank == 1))
    for ways in RETRIEVAL_WAYS:
        if n >= ways:
            out[f"image_top1_{ways}"], out[f"brain_top1_{ways}"] = n_way_top1(pred, true, ways, draws=DRAWS, seed=seed)
    ranks = {t.key: (int(a), int(b)) for t, a, b in zip(chosen, image_rank, brain_rank, strict=True)}
    return out, ranks


def truth_tokens(images: list[str], model: Path, source: ImageSource) -> dict[str, np.ndarray]:
    """The shown images in the model's token space, prepared as the decoder prepares its gallery."""
    from models.clip import EmbeddingCache
    from models.folder import load_embedder

    embedder = load_embedder(model)
    pixels = np.stack([source.load(i, 128) for i in images])
    tokens = EmbeddingCache(embedder, model / "embedding-cache", dtype=np.float32).embed(pixels)
    return dict(zip(images, tokens, strict=True))


def score(collected: Collected, source: ImageSource, weights: Path | None, model: Path | None,
          seed: int = 0) -> Scores:
    notes = list(collected.issues)
    trials = collected.trials
    shown, recons, issues = load_pairs(trials, source)
    notes += issues
    if not recons:
        notes.append("no reconstructions to score: PixCorr, SSIM and the network metrics are not available")
    feats = network_features(trials, shown, recons, weights, notes)
    predicted: dict[str, np.ndarray] = {}
    truth: dict[str, np.ndarray] = {}
    if model is None:
        notes.append("retrieval: not available: the model folder the decoder used is unknown (give --model)")
    else:
        tokens, problems = predicted_tokens(collected.store, trials)
        notes += problems
        if tokens is not None:
            predicted = {t.key: tok for t, tok in zip(trials, tokens, strict=True)}
            truth = truth_tokens(sorted(shown), model, source) if shown else {}
    per_trial: dict[str, dict] = {t.key: {"run": t.run, "trial": t.trial, "version": t.version, "image": t.image,
                                          "reconstruction": "yes" if t.key in recons else "no"} for t in trials}
    summary = []
    for version in sorted({t.version for t in trials}):
        in_version = [t for t in trials if t.version == version]
        for run in ["all", *sorted({t.run for t in in_version})]:
            group = in_version if run == "all" else [t for t in in_version if t.run == run]
            scores = _image_scores(group, shown, recons, feats)
            retrieval, ranks = _retrieval(group, predicted, truth, seed)
            row = {"version": version, "run": run, "trials": len(group),
                   "reconstructions": sum(t.key in recons for t in group)}
            for m in (*PIXEL_METRICS, *NETWORK_METRICS):
                row[m] = float(np.nanmean(list(scores[m].values()))) if m in scores else None
            row.update(retrieval)
            summary.append(row)
            if run == "all" and predicted:
                short = [w for w in RETRIEVAL_WAYS if retrieval["retrieval_n"] < w]
                if short:
                    notes.append(f"{'- and '.join(map(str, short))}-way retrieval ({version}): not available, "
                                 f"{retrieval['retrieval_n']} distinct images decoded (needs {min(short)})")
            if run == "all":
                for m, by_key in scores.items():
                    for key, value in by_key.items():
                        per_trial[key][m] = float(value)
                for key, (image_rank, brain_rank) in ranks.items():
                    per_trial[key]["image_rank"], per_trial[key]["brain_rank"] = image_rank, brain_rank
                    per_trial[key]["retrieval_pool"] = retrieval["retrieval_n"]
    return Scores(list(per_trial.values()), summary, notes)
