"""Trial-level simulated data: single-trial betas for many subjects and sessions, without volumes.

Fast (no images of brains, no GLM): what training, pretraining and calibration tests need. Each
session's betas are the subject's true responses to the images shown, with a per-session gain and
offset per voxel (as betas drift between scanning days), plus single-trial noise at each voxel's
reliability. Written as plain arrays (.npy, never pickled) and TSV beside a dataset.json.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rtdecode.gallery.builtin import index_of
from rtdecode.gallery.splits import test_pool, training_pool
from rtdecode.simulator.paradigm import session_plan
from rtdecode.simulator.subjects import LatentSpace, SimulatedSubject, SubjectSpec

SESSION_GAIN_SD = 0.1
SESSION_OFFSET_PCT = 0.3


@dataclass
class SessionBetas:
    subject: str
    session: int
    images: list[str]
    run: np.ndarray  # (n_trials,) run index of each trial
    betas: np.ndarray  # (n_trials, n_voxels) float32, % signal change
    true: np.ndarray  # (n_trials, n_voxels) the noiseless responses


ROLES = ("pretrain", "new", "new-overlap", "any")
NEW_SHARE = 0.3  # of the training pool: the images only people to calibrate see (NSD: each person's own)


def new_person_pool(n_images: int, at_least: int = 0) -> tuple[int, ...]:
    """Indices of the images a person to calibrate sees once: the last 30 % of the training pool (or its
    last ``at_least`` images, if more), never shown in a pretraining dataset (as in NSD, where a new
    subject's images are mostly new to a shared model). 300 of the default 1,200 images; an NSD-like
    hour needs 543: simulate 2,400, or pass ``at_least`` 543 and pretrain on the 457 left."""
    train = training_pool(n_images)
    return train[len(train) - max(int(NEW_SHARE * len(train)), min(at_least, len(train))):]


def pools(role: str, n_images: int, new_images: int = 0) -> dict:
    """session_plan's pools for a subject's role: ``pretrain`` never sees a test-pool image nor one of
    :func:`new_person_pool`; ``new`` (the person being calibrated) repeats test-pool images (its held-out
    set) and sees the rest once from the new-person pool; ``new-overlap`` sees those from the whole
    training pool instead, so most were pretraining images too (the claim before issue 35, kept to show
    its effect); ``any`` draws from every image (no evaluation is meant). ``new_images``: the new-person
    pool holds at least this many images (:func:`new_person_pool`)."""
    if role == "pretrain":
        return {"exclude": test_pool(n_images) + new_person_pool(n_images, new_images)}
    if role == "new":
        return {"repeated_from": test_pool(n_images), "unique_from": new_person_pool(n_images, new_images)}
    if role == "new-overlap":
        return {"repeated_from": test_pool(n_images), "unique_from": training_pool(n_images)}
    if role == "any":
        return {}
    raise ValueError(f"role must be one of {', '.join(ROLES)}, got {role!r}")


def simulate_session(subject: SimulatedSubject, latent: LatentSpace, session: int, n_runs: int = 11,
                     trials_per_run: int = 63, n_repeated: int | None = None, seed: int = 0,
                     role: str = "pretrain", new_images: int = 0) -> SessionBetas:
    """One session of ``n_runs`` runs (NSD-like: 50 of 693 trials' images shown 3 times, the rest once);
    which images it may show follows the subject's ``role`` (:func:`pools`)."""
    if n_repeated is None:
        n_repeated = round(50 * n_runs * trials_per_run / 693)
    try:
        plan = session_plan(latent.stimuli.n, n_runs, trials_per_run, n_repeated=n_repeated,
                            seed=int(np.random.default_rng([seed, subject.spec.seed, session, 1]).integers(2**31)),
                            **pools(role, latent.stimuli.n, new_images))
    except ValueError as exc:
        raise ValueError(f"{exc} (role {role!r}, {latent.stimuli.n} images: a new person's images are drawn "
                         f"apart from pretraining images; simulate more images, e.g. 2400)") from None
    images = [im for run in plan for im in run]
    runs = np.repeat(np.arange(n_runs), [len(r) for r in plan])
    rng = np.random.default_rng([seed, subject.spec.seed, session])
    true = subject.responses(latent.of_images(subject.spec.code_of([index_of(i) for i in images], latent.stimuli.n)))
    gain = 1 + SESSION_GAIN_SD * rng.normal(0, 1, subject.n_voxels)
    offset = SESSION_OFFSET_PCT * rng.normal(0, 1, subject.n_voxels)
    session_true = (true * gain + offset).astype(np.float32)
    return SessionBetas(subject.name, session, images, runs, subject.noisy_betas(session_true, rng), session_true)


def write_dataset(folder: str | Path, specs: list[SubjectSpec], sessions: int = 1, n_runs: int = 11,
                  trials_per_run: int = 63, n_repeated: int | None = None, latent: LatentSpace | None = None,
                  seed: int = 0, role: str = "pretrain", new_images: int = 0) -> Path:
    """Simulate and write every subject's sessions; returns the dataset.json path. ``role``: ``pretrain``
    (no test-pool image), ``new`` (a person to calibrate: held-out repeats from the test pool) or ``any``;
    ``new_images``: a new-person pool of at least this many images (recorded when set)."""
    folder = Path(folder)
    latent = latent or LatentSpace(dim=max(s.latent_dim for s in specs))
    index = {"format": "rtdecode-simulated-betas", "version": 1, "seed": seed, "role": role,
             "stimuli": {"n": latent.stimuli.n, "size": latent.stimuli.size, "seed": latent.stimuli.seed},
             "standin": latent.embedder.config.to_dict(), "subjects": []}
    if new_images:
        index["new_images"] = new_images
    for spec in specs:
        subject = SimulatedSubject(spec)
        sub_dir = folder / f"sub-{spec.name}"
        sub_dir.mkdir(parents=True, exist_ok=True)
        np.save(sub_dir / "voxels_xyz.npy", subject.xyz.astype(np.float32))
        for ses in range(1, sessions + 1):
            data = simulate_session(subject, latent, ses, n_runs, trials_per_run, n_repeated, seed, role, new_images)
            save_session(sub_dir / f"ses-{ses:02d}", data)
        index["subjects"].append({**spec.to_dict(), "sessions": sessions, "person": spec.person})
    path = folder / "dataset.json"
    path.write_text(json.dumps(index, indent=2))
    return path


def save_session(folder: Path, data: SessionBetas) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "betas.npy", data.betas)
    np.save(folder / "truth_betas.npy", data.true)
    with open(folder / "trials.tsv", "w", newline="") as fh:
        w = csv.writer(fh, delimiter="\t", lineterminator="\n")
        w.writerow(["trial", "run", "image"])
        for i, (run, image) in enumerate(zip(data.run, data.images, strict=True)):
            w.writerow([i, int(run) + 1, image])


def load_session(folder: str | Path) -> tuple[np.ndarray, list[str], np.ndarray]:
    """(betas, image ids, run numbers) of one written session."""
    folder = Path(folder)
    betas = np.load(folder / "betas.npy", allow_pickle=False)
    with open(folder / "trials.tsv", newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    if len(rows) != len(betas):
        raise ValueError(f"{folder / 'trials.tsv'}: {len(rows)} trials listed, but betas.npy holds {len(betas)}")
    return betas, [r["image"] for r in rows], np.array([int(r["run"]) for r in rows])
