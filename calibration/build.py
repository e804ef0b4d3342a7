"""From recorded data to a model folder the decoder loads as it is.

Model folder: ``model.safetensors`` + ``config.json`` (MindEye2), ``subject.json`` (whose ridge),
``embedder.json`` (the token space), ``zscore_mean.npy`` / ``zscore_std.npy`` (the subject's training
statistics, for ``glm.zscore = "calibration"``) and ``training.json`` (settings, losses, held-out
retrieval).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from calibration.data import SubjectData, average_repeats, split_by_image
from calibration.trainer import TrainConfig, predict_tokens, train
from models.folder import write_model_folder
from models.mindeye2.checkpoint import load_pretrained
from models.mindeye2.config import standin_config
from models.mindeye2.model import MindEye2
from models.retrieval import n_way_top1
from models.standin import StandInEmbedder


def standin_tokens(images: list[str], cache: Path | None = None) -> np.ndarray:
    """Stand-in tokens of built-in stimulus ids (embedded once per image, cached on disk)."""
    from models.clip import EmbeddingCache
    from rtdecode.simulator.stimuli import StimulusSet, index_of

    stimuli, embedder = StimulusSet(), StandInEmbedder()
    unique = sorted(set(images))
    pictures = stimuli.images([index_of(i) for i in unique])
    if cache is not None:
        tokens = EmbeddingCache(embedder, cache, dtype=np.float32).embed(pictures)
    else:
        tokens = embedder.embed(pictures)
    lookup = dict(zip(unique, tokens, strict=True))
    return np.stack([lookup[i] for i in images]).astype(np.float32)


def load_trial_dataset(folder: str | Path, subject: str, cache: Path | None = None) -> SubjectData:
    """One subject of a dataset written by ``rtdecode simulate betas`` (all its sessions, z-scored per session)."""
    folder = Path(folder)
    sub = folder / f"sub-{subject}"
    if not sub.is_dir():
        raise FileNotFoundError(f"{folder}: no subject {subject!r} (found {sorted(p.name[4:] for p in folder.glob('sub-*'))})")
    betas, images = [], []
    for ses in sorted(sub.glob("ses-*")):
        b = np.load(ses / "betas.npy", allow_pickle=False)
        with open(ses / "trials.tsv", newline="") as fh:
            rows = list(csv.DictReader(fh, delimiter="\t"))
        betas.append((b - b.mean(0)) / (b.std(0) + 1e-6))  # per session, as sessions drift
        images += [r["image"] for r in rows]
    all_betas = np.concatenate(betas).astype(np.float32)
    return SubjectData(subject, all_betas, images, standin_tokens(images, cache))


def load_session(session: str | Path, subject: str, cache: Path | None = None, noise_model: str = "ar1") -> SubjectData:
    """A session recorded by rtdecode: every run's betas by the GLM's offline mode (whole-run estimates)."""
    from rtdecode.glm.incremental import GLMSettings
    from rtdecode.glm.offline import offline_betas, session_folder

    result = offline_betas(session_folder(session), GLMSettings(noise_model=noise_model))
    return SubjectData(subject, result.betas.astype(np.float32), result.images, standin_tokens(result.images, cache))


def held_out_images(data: SubjectData, repeats: int = 2) -> set[str]:
    """Images shown at least ``repeats`` times (NSD's test images are the repeated ones)."""
    counts: dict[str, int] = {}
    for im in data.images:
        counts[im] = counts.get(im, 0) + 1
    return {im for im, c in counts.items() if c >= repeats}


def _write_folder(model: MindEye2, out: Path, subject: str, data: SubjectData | None, config: TrainConfig,
                  history: dict, evaluation: dict) -> Path:
    write_model_folder(model, out, subject)
    if data is not None and data.mean is not None:
        np.save(out / "zscore_mean.npy", data.mean)
        np.save(out / "zscore_std.npy", data.std)
    summary = {"train": config.to_dict(), "steps": history["steps"], "final_loss": history["loss"][-1:],
               "evaluation": evaluation}
    (out / "training.json").write_text(json.dumps(summary, indent=2))
    return out


def pretrain(subjects: list[SubjectData], out: str | Path, config: TrainConfig, hidden: int = 128,
             progress=None) -> Path:
    """A shared model over several subjects (each z-scored already)."""
    model = MindEye2(standin_config([s.subject for s in subjects], [s.n_voxels for s in subjects], hidden))
    history = train(model, subjects, config, out=Path(out) / "checkpoints", progress=progress)
    return _write_folder(model, Path(out), subjects[0].subject, None, config, history, {})


def calibrate(data: SubjectData, out: str | Path, config: TrainConfig, pretrained: str | Path | None = None,
              resume: bool = False, hidden: int = 128, progress=None) -> Path:
    """Fine-tune a pretrained model on one subject's session (or train from scratch without one)."""
    held = held_out_images(data)
    train_set, test_set = split_by_image(data, held)
    train_set = train_set.zscored()
    if pretrained is not None:
        model = load_pretrained(pretrained)
        model.train()
        if data.subject not in model.config.subjects:
            model.add_subject(data.subject, data.n_voxels)  # a fresh ridge; everything else starts shared
    else:
        model = MindEye2(standin_config([data.subject], [data.n_voxels], hidden))
    history = train(model, [train_set], config, out=Path(out) / "checkpoints", resume=resume, progress=progress)
    evaluation = {}
    if len(test_set.betas):
        test = average_repeats(test_set.zscored(train_set.mean, train_set.std))
        pred = predict_tokens(model, test)
        n_way = min(50, len(test.betas))
        fwd, bwd = n_way_top1(pred, test.tokens, n_way=n_way)
        evaluation = {"held_out_images": len(test.betas), "n_way": n_way, "top1_brain_to_image": fwd,
                      "top1_image_to_brain": bwd, "chance": 1 / n_way}
    return _write_folder(model, Path(out), data.subject, train_set, config, history, evaluation)
