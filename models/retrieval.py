"""Retrieval by cosine similarity of flattened tokens, as MindEye2 evaluates it."""

from __future__ import annotations

import numpy as np


def _unit(x: np.ndarray) -> np.ndarray:
    flat = np.asarray(x, np.float32).reshape(len(x), -1)
    return flat / np.maximum(np.linalg.norm(flat, axis=1, keepdims=True), 1e-12)


def similarity(predicted: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    """(N, M) cosine similarity between N predictions and M gallery items (any token shape)."""
    p, g = _unit(predicted), _unit(gallery)
    if p.shape[1] != g.shape[1]:
        raise ValueError(f"predictions have {p.shape[1]} features per item, the gallery {g.shape[1]}")
    return p @ g.T


def top_k(sim: np.ndarray, k: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Indices and scores of the k best gallery items per row, best first."""
    k = min(k, sim.shape[1])
    idx = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    return idx, np.take_along_axis(sim, idx, axis=1)


def top1_both_ways(sim: np.ndarray) -> tuple[float, float]:
    """For paired rows and columns: (brain -> image, image -> brain) top-1 accuracy."""
    n = np.arange(len(sim))
    return float(np.mean(sim.argmax(axis=1) == n)), float(np.mean(sim.argmax(axis=0) == n))


def n_way_top1(predicted: np.ndarray, targets: np.ndarray, n_way: int, draws: int = 30,
               seed: int = 0) -> tuple[float, float]:
    """MindEye2's protocol: ``draws`` random subsets of ``n_way`` paired items; mean top-1 both ways."""
    rng = np.random.default_rng(seed)
    if n_way > len(predicted):
        raise ValueError(f"{n_way}-way retrieval needs at least {n_way} items, got {len(predicted)}")
    sims = similarity(predicted, targets)
    fwd, bwd = [], []
    for _ in range(draws):
        pick = rng.choice(len(predicted), n_way, replace=False)
        a, b = top1_both_ways(sims[np.ix_(pick, pick)])
        fwd.append(a)
        bwd.append(b)
    return float(np.mean(fwd)), float(np.mean(bwd))
