"""Training sets: betas, the images shown, their tokens, and a validation split by image."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class SubjectData:
    """One subject's trials: z-scored betas, image ids, target tokens (trials x tokens x dim) and, when
    the SD VAE is present, blurry-branch targets (trials x 4 x 28 x 28)."""

    subject: str
    betas: np.ndarray
    images: list[str]
    tokens: np.ndarray
    mean: np.ndarray | None = None  # z-score statistics of the training betas (saved with the model)
    std: np.ndarray | None = None
    blur: np.ndarray | None = None
    runs: np.ndarray | None = None  # each trial's run number, where the source records it
    # Whose brain, where the source says (a simulated person's seed; a recorded participant's label):
    # calibration refuses a person whose brain was in pretraining (calibration.splits).
    person: str | None = None

    def __post_init__(self) -> None:
        if not len(self.betas) == len(self.images) == len(self.tokens):
            raise ValueError(f"{self.subject}: {len(self.betas)} betas, {len(self.images)} images and "
                             f"{len(self.tokens)} token sets must match")
        if self.blur is not None and len(self.blur) != len(self.betas):
            raise ValueError(f"{self.subject}: {len(self.blur)} blurry targets for {len(self.betas)} trials")

    @property
    def n_voxels(self) -> int:
        return int(self.betas.shape[1])

    def zscored(self, mean: np.ndarray | None = None, std: np.ndarray | None = None) -> SubjectData:
        """Betas z-scored per voxel with the given (else these trials') statistics."""
        mean = self.betas.mean(0) if mean is None else mean
        std = self.betas.std(0) + 1e-6 if std is None else std
        return SubjectData(self.subject, ((self.betas - mean) / std).astype(np.float32), self.images, self.tokens,
                           mean.astype(np.float32), std.astype(np.float32), self.blur, self.runs, self.person)

    def subset(self, rows: np.ndarray) -> SubjectData:
        return SubjectData(self.subject, self.betas[rows], [self.images[i] for i in rows], self.tokens[rows],
                           self.mean, self.std, None if self.blur is None else self.blur[rows],
                           None if self.runs is None else self.runs[rows], self.person)


def split_by_image(data: SubjectData, held_out: set[str]) -> tuple[SubjectData, SubjectData]:
    """Training and validation trials; every repeat of a held-out image goes to validation."""
    test = np.array([im in held_out for im in data.images])
    return data.subset(np.flatnonzero(~test)), data.subset(np.flatnonzero(test))


def average_repeats(data: SubjectData) -> SubjectData:
    """One row per image: the mean of its trials (for evaluation, as MindEye2 averages repeats)."""
    order = sorted(set(data.images))
    rows = [np.flatnonzero(np.array(data.images) == im) for im in order]
    betas = np.stack([data.betas[r].mean(0) for r in rows])
    tokens = np.stack([data.tokens[r[0]] for r in rows])
    blur = None if data.blur is None else np.stack([data.blur[r[0]] for r in rows])
    return SubjectData(data.subject, betas.astype(np.float32), order, tokens, data.mean, data.std, blur,
                       person=data.person)


def concat_trials(first: SubjectData, second: SubjectData) -> SubjectData:
    """One subject's trials from two sources (NSD's train and new_test splits), in that order."""
    if first.subject != second.subject or first.n_voxels != second.n_voxels:
        raise ValueError(f"cannot join {first.subject} ({first.n_voxels} voxels) and {second.subject} "
                         f"({second.n_voxels} voxels)")
    blur = None if first.blur is None or second.blur is None else np.concatenate([first.blur, second.blur])
    return SubjectData(first.subject, np.concatenate([first.betas, second.betas]), first.images + second.images,
                       np.concatenate([first.tokens, second.tokens]), blur=blur)
