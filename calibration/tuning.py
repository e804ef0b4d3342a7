"""Calibration settings chosen on the calibration hour alone: learning rate and epochs picked on a
validation split of the hour's *training* trials, never on its held-out images.

Each grid point trains a model (fine-tuned from the pretrained one, or from scratch) on the rest of the
training trials and scores it by 50-way top-1 retrieval (both directions) on the validation images. A
pretrained and a from-scratch model given the same grid get the same search budget (issue 35: the
claim's scratch arm had been run at a learning rate chosen for the pretrained model).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from calibration.data import SubjectData
from calibration.heldout import evaluate, new_model
from calibration.trainer import TrainConfig, train


@dataclass(frozen=True)
class Grid:
    """The settings tried, every combination; ``share`` of the training images validates."""

    lrs: tuple[float, ...] = (1e-3, 3e-3, 1e-2)
    epochs: tuple[int, ...] = (5, 10)
    share: float = 0.2

    @classmethod
    def parse(cls, text: str) -> Grid:
        """``LR,LR,...:EPOCHS,EPOCHS,...``, e.g. ``1e-3,3e-3,1e-2:5,10``; ValueError says what is wrong."""
        try:
            lrs, epochs = text.split(":")
            grid = cls(tuple(float(v) for v in lrs.split(",")), tuple(int(v) for v in epochs.split(",")))
        except ValueError:
            raise ValueError(f"--tune: expected LR,LR,...:EPOCHS,EPOCHS,... (e.g. 1e-3,3e-3,1e-2:5,10), got {text!r}"
                             ) from None
        if min(grid.lrs) <= 0 or min(grid.epochs) < 1:
            raise ValueError(f"--tune: learning rates must be above 0 and epochs at least 1, got {text!r}")
        return grid

    def points(self) -> list[tuple[float, int]]:
        return [(lr, ep) for lr in self.lrs for ep in self.epochs]


def validation_split(data: SubjectData, share: float, seed: int) -> tuple[SubjectData, SubjectData]:
    """(fit, validation) trials of a training set, split by image (every showing of a validation image
    validates), the images drawn from (seed)."""
    images = sorted(set(data.images))
    n_val = max(2, round(share * len(images)))
    if n_val >= len(images):
        raise ValueError(f"{data.subject}: {len(images)} training images are too few to keep {n_val} for validation")
    chosen = set(np.random.default_rng([seed, 35]).permutation(images)[:n_val].tolist())
    val = np.array([im in chosen for im in data.images])
    return data.subset(np.flatnonzero(~val)), data.subset(np.flatnonzero(val))


def start_model(data: SubjectData, pretrained: str | Path | None, hidden: int, seed: int):
    """The model calibration starts from: the pretrained one with a fresh ridge for ``data``'s subject,
    or a fresh model (the same draws every time from ``seed``)."""
    from models.mindeye2.checkpoint import load_pretrained

    torch.manual_seed(seed)
    if pretrained is None:
        return new_model([data], hidden)
    model = load_pretrained(pretrained)
    model.train()
    if data.subject not in model.config.subjects:
        model.add_subject(data.subject, data.n_voxels)
    return model


def tune(train_set: SubjectData, config: TrainConfig, grid: Grid, pretrained: str | Path | None = None,
         hidden: int = 128, log=None) -> dict:
    """Every grid point trained on the fit trials and scored on the validation images; the best (highest
    score, the first on a tie) as ``best`` (``max_lr``, ``epochs``). ``train_set`` must hold no held-out
    image: the caller has split those off already."""
    fit, val = validation_split(train_set, grid.share, config.seed)
    fit = fit.zscored()
    val = val.zscored(fit.mean, fit.std)
    rows = []
    for lr, epochs in grid.points():
        model = start_model(fit, pretrained, hidden, config.seed)
        train(model, [fit], replace(config, max_lr=lr, epochs=epochs, checkpoint_s=1e9), out=None)
        e = evaluate(model, val)
        rows.append({"max_lr": lr, "epochs": epochs,
                     "score": (e["top1_brain_to_image"] + e["top1_image_to_brain"]) / 2, "n_way": e["n_way"]})
        if log is not None:
            log(f"  lr {lr:g}, {epochs} epochs: validation {100 * rows[-1]['score']:.0f} %")
    best = max(rows, key=lambda r: r["score"])  # max keeps the first of equals
    return {"grid": rows, "best": {"max_lr": best["max_lr"], "epochs": best["epochs"]},
            "validation_images": sorted(set(val.images)), "fit_trials": len(fit.images),
            "from": "pretrained" if pretrained is not None else "scratch"}


def tuned(config: TrainConfig, result: dict) -> TrainConfig:
    """``config`` with the tuning's best learning rate and epochs."""
    return replace(config, **result["best"])
