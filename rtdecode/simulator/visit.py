"""A simulated subject's scanning visit at volume level: task runs ready to be written as files."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rtdecode.gallery.builtin import index_of
from rtdecode.simulator.bold import BoldRun
from rtdecode.simulator.paradigm import Paradigm, session_plan
from rtdecode.simulator.scanner import motion_trajectory
from rtdecode.simulator.subjects import LatentSpace, SimulatedSubject, SubjectSpec


@dataclass
class Visit:
    """One subject, one session plan (image ids per run), one paradigm; builds runs on demand."""

    spec: SubjectSpec
    n_runs: int = 11
    n_repeated: int | None = None  # default: NSD's share, 50 images x 3 in 11 runs of 63
    paradigm: Paradigm = Paradigm()
    shape: tuple[int, int, int] = (100, 100, 52)
    voxel_mm: float = 2.0
    max_mm: float = 1.0
    max_deg: float = 1.0
    seed: int = 0
    latent: LatentSpace | None = None
    exclude: tuple[int, ...] = ()  # stimulus indices never shown (e.g. those of an earlier part of the visit)
    unique_from: tuple[int, ...] | None = None  # where once-shown images come from (None: anywhere)
    repeated_from: tuple[int, ...] | None = None  # where repeated (held-out) images come from

    def __post_init__(self) -> None:
        self.latent = self.latent or LatentSpace(dim=self.spec.latent_dim)
        self.subject = SimulatedSubject(self.spec)
        if self.n_repeated is None:
            self.n_repeated = round(50 * self.n_runs * self.paradigm.trials / 693)
        self.plan = session_plan(self.latent.stimuli.n, self.n_runs, self.paradigm.trials, self.n_repeated,
                                 seed=self.seed, exclude=self.exclude, unique_from=self.unique_from,
                                 repeated_from=self.repeated_from)

    def run(self, index: int) -> BoldRun:
        """Run ``index`` (0-based) with its own motion path and noise, seeded by (seed, index)."""
        if not 0 <= index < self.n_runs:
            raise IndexError(f"run {index} is outside this visit's {self.n_runs} runs")
        images = self.plan[index]
        rng = np.random.default_rng([self.seed, index, 3])
        motion = motion_trajectory(self.paradigm.volumes, self.max_mm, self.max_deg, rng)
        latents = self.latent.of_images([index_of(i) for i in images])
        return BoldRun(self.subject, self.paradigm.events(images), latents, n_volumes=self.paradigm.volumes,
                       shape=self.shape, voxel_mm=self.voxel_mm, tr_s=self.paradigm.tr_s, motion=motion,
                       seed=self.seed * 1000 + index)

    @staticmethod
    def participant_seed(seed: int, subject_seed: int, subject: str, session: str) -> int:
        """The visit's seed for one participant: each (subject seed, subject, session) gets its own stimulus
        order and head motion. The defaults (subject seed 1, participant 01/01) keep ``seed`` as given, so
        a run simulated before participants had their own stays the same."""
        if (subject_seed, subject, session) == (1, "01", "01"):
            return seed
        digest = hashlib.sha256(f"{seed}/{subject_seed}/{subject}/{session}".encode()).digest()
        return int.from_bytes(digest[:4], "big")

    @property
    def shown(self) -> tuple[int, ...]:
        """Stimulus indices this visit shows."""
        return tuple(sorted({index_of(i) for run in self.plan for i in run}))

    def save_stimuli(self, folder: str | Path) -> list[Path]:
        """The images this visit shows, as PNG named by id (a gallery for the decoder and console)."""
        indices = sorted({index_of(i) for run in self.plan for i in run})
        return self.latent.stimuli.save(folder, indices)
