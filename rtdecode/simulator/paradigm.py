"""Trial timing as in Real-time MindEye (NSD-like): 3 s image, 1 s gap, TR 1.5 s, 63 trials per run."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rtdecode.base.events import Events
from rtdecode.gallery.builtin import image_id


@dataclass(frozen=True)
class Paradigm:
    tr_s: float = 1.5
    volumes: int = 192
    trials: int = 63
    image_s: float = 3.0
    gap_s: float = 1.0
    lead_in_s: float = 4.5  # blank before the first image: three volumes

    @property
    def run_duration_s(self) -> float:
        return self.volumes * self.tr_s

    def events(self, images: list[str]) -> Events:
        if len(images) > self.trials:
            raise ValueError(f"{len(images)} images do not fit the paradigm's {self.trials} trials per run")
        soa = self.image_s + self.gap_s
        onsets = self.lead_in_s + soa * np.arange(len(images))
        last_end = onsets[-1] + self.image_s if len(images) else 0.0
        if last_end > self.run_duration_s:
            fit = max(0, int((self.run_duration_s - self.lead_in_s - self.image_s) // soa) + 1)
            need = int(np.ceil(last_end / self.tr_s))
            raise ValueError(f"the last image ends at {last_end:g} s, after the run ({self.run_duration_s:g} s), "
                             f"{self.volumes} volumes x {self.tr_s:g} s: {fit} trials fit in it (--trials {fit}), "
                             f"or {len(images)} trials need at least {need} volumes (--volumes {need})")
        return Events(onsets, np.full(len(images), self.image_s), tuple(images))


def session_plan(pool: int, n_runs: int, trials_per_run: int, n_repeated: int = 0, repeats: int = 3,
                 seed: int = 0, exclude: tuple[int, ...] = (), unique_from: tuple[int, ...] | None = None,
                 repeated_from: tuple[int, ...] | None = None) -> list[list[str]]:
    """Image ids per run: unique images plus ``n_repeated`` images shown ``repeats`` times each.

    Images come from ``range(pool)`` less ``exclude``; ``unique_from`` and ``repeated_from`` narrow
    where the once-shown and the repeated images are drawn (the built-in test pool for held-out
    images: rtdecode.gallery.splits). Repeated images (a test set, as NSD's shared images) never share
    a run with their own repeat when there are enough runs.
    """
    rng = np.random.default_rng([seed, 7])
    total = n_runs * trials_per_run
    n_unique = total - n_repeated * repeats
    if n_unique < 0:
        raise ValueError(f"{n_repeated} images x {repeats} repeats exceed the session's {total} trials")
    available = np.setdiff1d(np.arange(pool), np.asarray(exclude, int))
    if unique_from is None and repeated_from is None:
        if n_unique + n_repeated > len(available):
            raise ValueError(f"the session needs {n_unique + n_repeated} distinct images; the pool has {len(available)}")
        chosen = rng.permutation(available)[: n_unique + n_repeated]
        repeated, unique = chosen[:n_repeated], chosen[n_repeated:]
    else:
        rep_pool = np.intersect1d(available, repeated_from) if repeated_from is not None else available
        if len(rep_pool) < n_repeated:
            raise ValueError(f"the session repeats {n_repeated} images; their pool has {len(rep_pool)}")
        repeated = rng.permutation(rep_pool)[:n_repeated]
        uni_pool = np.intersect1d(available, unique_from) if unique_from is not None else available
        uni_pool = np.setdiff1d(uni_pool, repeated)
        if len(uni_pool) < n_unique:
            raise ValueError(f"the session shows {n_unique} images once; their pool has {len(uni_pool)}")
        unique = rng.permutation(uni_pool)[:n_unique]
    runs: list[list[int]] = [[] for _ in range(n_runs)]
    for img in repeated:
        start = rng.integers(n_runs)
        for r in range(repeats):
            runs[(start + r * max(n_runs // repeats, 1)) % n_runs].append(int(img))
    rest = list(unique)
    for run in runs:
        while len(run) < trials_per_run and rest:
            run.append(int(rest.pop()))
    # Any overflow from uneven repeat placement moves to runs with room.
    flat = [img for run in runs for img in run[trials_per_run:]]
    runs = [run[:trials_per_run] for run in runs]
    for run in runs:
        while len(run) < trials_per_run and flat:
            run.append(flat.pop())
    return [[image_id(i) for i in rng.permutation(run)] for run in runs]
