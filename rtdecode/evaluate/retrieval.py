"""Retrieval as MindEye2 and Real-time MindEye score it, each direction named for what it computes.

``sim[b, i]`` is the cosine similarity of brain sample ``b``'s retrieval tokens with image ``i``'s tokens
(flattened, L2-normalised, as MindEye2's ``final_evaluations.ipynb``).

- ``image_for_brain``: for each brain sample, which image (a row of ``sim``). MindEye2's code computes this
  as ``bwd_sim`` and reports it second, as "brain retrieval".
- ``brain_for_image``: for each image, which brain sample (a column of ``sim``). MindEye2's
  ``batchwise_cosine_similarity`` ends with a transpose, so its ``fwd_sim`` has one row per image: this is
  the figure it reports first, as "image retrieval".

Repeats, two ways:

- ``averaged`` (MindEye2): an image's brain samples are averaged over its repeats (the model's outputs,
  as MindEye2 averages them), so there is one brain sample per image and the problem is square.
- ``single-trial`` (Real-time MindEye): every trial is its own brain sample; the other showings of the
  same image are never its competitors, in either direction.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.retrieval import similarity

DIRECTIONS = {"image_for_brain": "for each brain sample, which image",
              "brain_for_image": "for each image, which brain sample"}
REPEATS = {"averaged": "MindEye2: outputs averaged over an image's repeats, one per image",
           "single-trial": "Real-time MindEye: every trial on its own"}
WAYS = (300, 50)  # MindEye2's 300-way; Real-time MindEye's 50-way
DRAWS = 30
MINDEYE2_SEED = 42  # final_evaluations.ipynb: --seed default 42, utils.seed_everything -> np.random.seed
SCHEMES = ("rtdecode", "mindeye2")


@dataclass
class Pool:
    """Brain samples and the images they saw: ``owner[b]`` is the index of brain sample b's image."""

    images: list[str]
    truth: np.ndarray  # (M, ...) the images' tokens
    brains: np.ndarray  # (N, ...) the brain samples' retrieval tokens
    owner: np.ndarray  # (N,) int


def pools(images: list[str], trial_tokens: np.ndarray, truth: dict[str, np.ndarray]) -> dict[str, Pool]:
    """Both ways of handling repeats, from trials (image shown, retrieval tokens) in showing order."""
    distinct = list(dict.fromkeys(images))
    index = {image: i for i, image in enumerate(distinct)}
    owner = np.array([index[i] for i in images], int)
    tokens = np.asarray(trial_tokens, np.float64)
    averaged = np.stack([tokens[owner == i].mean(axis=0) for i in range(len(distinct))])
    true = np.stack([truth[i] for i in distinct])
    return {"averaged": Pool(distinct, true, averaged, np.arange(len(distinct))),
            "single-trial": Pool(distinct, true, tokens, owner)}


def ranks(sim: np.ndarray, owner: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per brain sample: the rank (1 = best; ties count for it) of its image among all images, and of
    itself among the brain samples of other images for its image."""
    n = np.arange(len(sim))
    own = sim[n, owner]
    rank_of_image = 1 + (sim > own[:, None]).sum(axis=1)
    column = sim[:, owner].T  # column[b, k] = sim[k, owner[b]]: every brain sample against b's image
    others = owner[None, :] != owner[:, None]
    rank_of_brain = 1 + ((column > own[:, None]) & others).sum(axis=1)
    return rank_of_image, rank_of_brain


def draws(n_items: int, n_way: int, count: int = DRAWS, seed: int = 0, scheme: str = "rtdecode") -> list[np.ndarray]:
    """The random subsets of an n-way evaluation. ``mindeye2`` draws as its notebook does, from numpy's
    legacy generator (``np.random.seed(seed)``, then ``np.random.choice(np.arange(n), n_way,
    replace=False)`` per draw), so with seed 42 and the items in the same order its subsets come out."""
    if scheme == "mindeye2":
        state = np.random.RandomState(seed)
        return [state.choice(np.arange(n_items), size=n_way, replace=False) for _ in range(count)]
    if scheme != "rtdecode":
        raise ValueError(f"draws: expected one of {SCHEMES}, got {scheme!r}")
    rng = np.random.default_rng(seed)
    return [rng.choice(n_items, n_way, replace=False) for _ in range(count)]


def score_pool(pool: Pool, seed: int = 0, scheme: str = "rtdecode") -> tuple[dict, np.ndarray, np.ndarray]:
    """Top-1 both ways over the whole pool and in 50-/300-way draws of images; per brain sample ranks."""
    sim = similarity(pool.brains, pool.truth)
    rank_of_image, rank_of_brain = ranks(sim, pool.owner)
    out: dict = {"retrieval_images": len(pool.images), "retrieval_brains": len(pool.brains)}
    if len(pool.images) < 2:
        return out, rank_of_image, rank_of_brain
    out["image_for_brain_top1_all"] = float(np.mean(rank_of_image == 1))
    out["brain_for_image_top1_all"] = float(np.mean(rank_of_brain == 1))
    members = [np.flatnonzero(pool.owner == i) for i in range(len(pool.images))]
    pick_trial = np.random.default_rng(seed + 1)  # which showing stands for an image: never MindEye2's stream
    for ways in WAYS:
        if len(pool.images) < ways:
            continue
        per_brain, per_image = [], []
        for pick in draws(len(pool.images), ways, DRAWS, seed, scheme):
            rows = np.array([members[i][pick_trial.integers(len(members[i]))] if len(members[i]) > 1 else members[i][0]
                             for i in pick])
            sub = sim[np.ix_(rows, pick)]  # square: row k saw column k
            diag = np.diag(sub)
            per_brain.append(np.mean((sub > diag[:, None]).sum(axis=1) == 0))
            per_image.append(np.mean((sub > diag[None, :]).sum(axis=0) == 0))
        out[f"image_for_brain_top1_{ways}"] = float(np.mean(per_brain))
        out[f"brain_for_image_top1_{ways}"] = float(np.mean(per_image))
    return out, rank_of_image, rank_of_brain
