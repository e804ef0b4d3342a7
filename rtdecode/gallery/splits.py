"""Which built-in images may ever be trained on.

The last sixth of the built-in set (``sim-01000`` to ``sim-01199`` of 1,200) is the test pool: images
kept for evaluation. The simulator draws every pretraining subject's images from outside it, a new
person's repeated (held-out) images and every real-time run's images from inside it, and a new
person's training images from outside it; so no model is ever trained on an image it is evaluated
on, by construction. ``calibration.splits`` checks the same thing on whatever data it is given.
"""

from __future__ import annotations

from rtdecode.gallery.builtin import index_of

BUILTIN_IMAGES = 1200


def test_pool(n_images: int = BUILTIN_IMAGES) -> tuple[int, ...]:
    """Indices of the built-in images kept out of all training (the last sixth of the set)."""
    return tuple(range(n_images - n_images // 6, n_images))


def training_pool(n_images: int = BUILTIN_IMAGES) -> tuple[int, ...]:
    """Indices of the built-in images training may use."""
    return tuple(range(n_images - n_images // 6))


def is_test_image(image: str, n_images: int = BUILTIN_IMAGES) -> bool:
    """Whether ``image`` is a built-in image of the test pool (False for any other id)."""
    try:
        return index_of(image) >= n_images - n_images // 6
    except ValueError:
        return False
