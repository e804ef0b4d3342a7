"""Images named by id, through an embedder: each distinct image once, cached on disk when asked."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from rtdecode.gallery.builtin import builtin_images

ImageSource = Callable[[list[str]], np.ndarray]  # image ids -> (N, H, W, 3) uint8


def embed_ids(ids: list[str], embedder, cache: str | Path | None = None,
              images: ImageSource = builtin_images) -> np.ndarray:
    """``embedder`` over the images named by ``ids`` (one row per id, repeats included)."""
    from models.clip import embed_images

    unique = sorted(set(ids))
    out = embed_images(embedder, images(unique), cache)
    lookup = dict(zip(unique, out, strict=True))
    return np.stack([lookup[i] for i in ids])
