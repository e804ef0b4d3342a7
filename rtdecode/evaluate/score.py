"""Scoring collected trials: image metrics per trial, then per version, run and way of handling repeats
(MindEye2's ``averaged``, Real-time MindEye's ``single-trial``); retrieval per group (evaluate.retrieval)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from models import registry
from models.features import SPECS, FeatureExtractor, build_network
from rtdecode.evaluate import metrics
from rtdecode.evaluate.collect import Collected, Trial, predicted_tokens
from rtdecode.evaluate.retrieval import REPEATS, WAYS, pools, score_pool

PIXEL_METRICS = ("PixCorr", "SSIM")
NETWORK_METRICS = tuple(SPECS)
RETRIEVAL_WAYS = WAYS


@dataclass
class Scores:
    per_trial: list[dict]  # one row per decoded trial (single-trial scores in version-wide pools)
    summary: list[dict]  # one row per (version, run or 'all', repeats)
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
    """{metric: (features by image id, features by trial key)} for each network whose weights are present;
    only reconstructed trials and the images they showed go through the networks."""
    out = {}
    keys = [t.key for t in trials if t.key in recons]
    ids = sorted({t.image for t in trials if t.key in recons})
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
    """{metric: {trial key: score}} over the group's reconstructed trials, single-trial: the 2-way pool
    holds each shown image once, so another showing of a trial's own image is never its competitor."""
    pairs = [t for t in group if t.key in recons and t.image in shown]
    if not pairs:
        return {}
    keys = [t.key for t in pairs]
    images = list(dict.fromkeys(t.image for t in pairs))
    owner = np.array([images.index(t.image) for t in pairs])
    real = torch.stack([shown[t.image] for t in pairs])
    fake = torch.stack([recons[t.key] for t in pairs])
    out = {"PixCorr": dict(zip(keys, metrics.pixcorr(real, fake), strict=True)),
           "SSIM": dict(zip(keys, metrics.ssim(real, fake), strict=True))}
    for m, (by_image, by_key) in feats.items():
        a = np.stack([by_image[i] for i in images])
        b = np.stack([by_key[t.key] for t in pairs])
        score = metrics.two_way(a, b, owner) if SPECS[m].kind == "two_way" else metrics.correlation_distance(a[owner], b)
        out[m] = dict(zip(keys, score, strict=True))
    return out


def _by_image(scores: dict[str, dict[str, float]], image_of: dict[str, str]) -> dict[str, dict[str, float]]:
    """One score per image: the mean over its reconstructions (MindEye2 scores one per image)."""
    out: dict[str, dict[str, float]] = {}
    for m, by_key in scores.items():
        groups: dict[str, list[float]] = {}
        for key, value in by_key.items():
            groups.setdefault(image_of[key], []).append(float(value))
        out[m] = {image: float(np.mean(v)) for image, v in groups.items()}
    return out


def _retrieval(group: list[Trial], predicted: dict[str, np.ndarray], truth: dict[str, np.ndarray], seed: int,
               scheme: str) -> tuple[dict[str, dict], dict[str, tuple[int, int, int]]]:
    """{repeats: retrieval columns} for both ways; per trial (single-trial): rank of its image, of itself."""
    usable = [t for t in sorted(group, key=lambda t: (t.run, t.trial)) if t.key in predicted and t.image in truth]
    if not usable:
        return {way: {"retrieval_images": 0, "retrieval_brains": 0} for way in REPEATS}, {}
    both = pools([t.image for t in usable], np.stack([predicted[t.key] for t in usable]), truth)
    out, ranks = {}, {}
    for way, pool in both.items():
        out[way], rank_of_image, rank_of_brain = score_pool(pool, seed, scheme)
        if way == "single-trial":
            ranks = {t.key: (int(a), int(b), len(pool.images))
                     for t, a, b in zip(usable, rank_of_image, rank_of_brain, strict=True)}
    return out, ranks


def truth_tokens(shown: dict[str, torch.Tensor], model: Path) -> dict[str, np.ndarray]:
    """The shown images in the model's token space from MindEye2's 256 px images (its notebook brings every
    image to 256 x 256 first; the embedder resizes to 224 as its FrozenOpenCLIPImageEmbedder does)."""
    from models.clip import EmbeddingCache
    from models.folder import load_embedder

    ids = sorted(shown)
    pixels = np.stack([shown[i].permute(1, 2, 0).numpy().astype(np.float32) for i in ids])
    tokens = EmbeddingCache(load_embedder(model), model / "embedding-cache", dtype=np.float32).embed(pixels)
    return dict(zip(ids, tokens, strict=True))


def _mean(values) -> float | None:
    values = list(values)
    return float(np.nanmean(values)) if values else None


def _rows(version: str, run, group: list[Trial], scores: dict, retrieval: dict[str, dict]) -> list[dict]:
    """The summary rows of one group: single-trial (a score per trial) and averaged (a score per image)."""
    image_of = {t.key: t.image for t in group}
    per_image = _by_image(scores, image_of)
    base = {"version": version, "run": run, "trials": len(group), "images": len({t.image for t in group}),
            "reconstructions": sum(t.key in scores.get("PixCorr", {}) for t in group)}
    rows = []
    for way in REPEATS:
        source = per_image if way == "averaged" else scores
        row = {**base, "repeats": way}
        for m in (*PIXEL_METRICS, *NETWORK_METRICS):
            row[m] = _mean(source[m].values()) if m in source else None
        row.update(retrieval[way])
        rows.append(row)
    return rows


def score(collected: Collected, source: ImageSource, weights: Path | None, model: Path | None,
          seed: int = 0, scheme: str = "rtdecode", oracle: bool = False) -> Scores:
    """Every metric per trial, and per (version, run or all, repeats). ``oracle``: the shown images are
    scored as their own reconstructions and their own tokens as the brain's, so every figure is perfect."""
    notes = list(collected.issues)
    trials = collected.trials
    shown, recons, issues = load_pairs(trials, source)
    notes += issues
    if oracle:
        recons = {t.key: shown[t.image] for t in trials if t.image in shown}
        notes.append("oracle: the shown images scored as their own reconstructions and their own tokens as the "
                     "brain's; every figure should be perfect (1.0, 100 %; 0 for EffNet-B and SwAV)")
    if not recons:
        notes.append("no reconstructions to score: PixCorr, SSIM and the network metrics are not available")
    feats = network_features(trials, shown, recons, weights, notes)
    predicted: dict[str, np.ndarray] = {}
    truth: dict[str, np.ndarray] = {}
    if model is None:
        notes.append("retrieval: not available: the model folder the decoder used is unknown (give --model)")
    else:
        truth = truth_tokens(shown, model) if shown else {}
        if oracle:
            predicted = {t.key: truth[t.image] for t in trials if t.image in truth}
        else:
            predicted, problems = predicted_tokens(collected.store, trials)
            notes += problems
    per_trial: dict[str, dict] = {t.key: {"run": t.run, "trial": t.trial, "version": t.version, "image": t.image,
                                          "reconstruction": "yes" if t.key in recons else "no"} for t in trials}
    summary = []
    for version in sorted({t.version for t in trials}):
        in_version = [t for t in trials if t.version == version]
        for run in ["all", *sorted({t.run for t in in_version})]:
            group = in_version if run == "all" else [t for t in in_version if t.run == run]
            scores = _image_scores(group, shown, recons, feats)
            retrieval, ranks = _retrieval(group, predicted, truth, seed, scheme)
            summary += _rows(version, run, group, scores, retrieval)
            if run != "all":
                continue
            n = retrieval["averaged"]["retrieval_images"]
            short = [w for w in RETRIEVAL_WAYS if n < w]
            if predicted and short:
                notes.append(f"{'- and '.join(map(str, short))}-way retrieval ({version}): not available, "
                             f"{n} distinct images decoded (needs {min(short)})")
            for m, by_key in scores.items():
                for key, value in by_key.items():
                    per_trial[key][m] = float(value)
            for key, (rank_of_image, rank_of_brain, pool) in ranks.items():
                per_trial[key].update(rank_of_image=rank_of_image, rank_of_brain=rank_of_brain, retrieval_images=pool)
    return Scores(list(per_trial.values()), summary, notes)
