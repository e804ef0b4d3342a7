"""The built-in stimulus set: procedurally painted scenes, made on the fly, no download.

Each image is a deterministic function of (set seed, index) and is named ``sim-NNNNN`` by its index.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from rtdecode.gallery.folder import save_images
from rtdecode.gallery.painted import KINDS, paint

PREFIX = "sim-"


def image_id(index: int) -> str:
    """The stable name of built-in image ``index`` (used in events tables and galleries)."""
    return f"{PREFIX}{index:05d}"


def index_of(image: str) -> int:
    """Inverse of :func:`image_id`; raises ValueError naming the id when it is not a built-in one."""
    if not image.startswith(PREFIX) or not image[len(PREFIX):].isdigit():
        raise ValueError(f"not a built-in stimulus id: {image!r} (expected 'sim-NNNNN')")
    return int(image[len(PREFIX):])


@dataclass(frozen=True)
class StimulusSet:
    """``n`` distinct images of ``size`` pixels; ``image(i)`` paints image i (uint8, H x W x 3)."""

    n: int = 1200
    size: int = 128
    seed: int = 0

    @property
    def ids(self) -> list[str]:
        return [image_id(i) for i in range(self.n)]

    def kind(self, index: int) -> str:
        return KINDS[index % len(KINDS)]

    def image(self, index: int) -> np.ndarray:
        if not 0 <= index < self.n:
            raise IndexError(f"stimulus index {index} is outside the set of {self.n} images")
        return _painted(self.kind(index), self.seed, index, self.size).copy()

    def images(self, indices) -> np.ndarray:
        return np.stack([self.image(int(i)) for i in indices])

    def by_id(self, ids: list[str]) -> np.ndarray:
        """Images named by built-in ids, (N, H, W, 3) uint8; ValueError names an id that is not one."""
        return self.images([index_of(i) for i in ids])

    def save(self, folder: str | Path, indices=None) -> list[Path]:
        """Write images as PNG named by id (the gallery a decoder or console can load)."""
        chosen = range(self.n) if indices is None else [int(i) for i in indices]
        return save_images(folder, {image_id(i): (lambda i=i: self.image(i)) for i in chosen})


def builtin_images(ids: list[str]) -> np.ndarray:
    """The default built-in set's images by id (what calibration and reports ask for by default)."""
    return StimulusSet().by_id(ids)


@lru_cache(maxsize=1500)
def _painted(kind: str, seed: int, index: int, size: int) -> np.ndarray:
    # Painting takes ~15 ms; galleries, latents and reports ask for the same images again and again.
    return paint(kind, np.random.default_rng([seed, index]), size)
