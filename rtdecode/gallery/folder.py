"""A gallery on disk: one PNG or JPEG per image, named by its id (the file stem)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

SUFFIXES = (".png", ".jpg", ".jpeg")


def read_folder(folder: str | Path, size: int = 128) -> tuple[list[str], np.ndarray]:
    """Ids (file stems, sorted) and images as uint8 RGB resized to ``size`` x ``size``."""
    from PIL import Image

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such gallery folder (expected a folder of PNG or JPEG images)")
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in SUFFIXES)
    if not paths:
        raise FileNotFoundError(f"{folder}: no PNG or JPEG images to use as a gallery")
    images = []
    for p in paths:
        with Image.open(p) as im:
            images.append(np.asarray(im.convert("RGB").resize((size, size), Image.BICUBIC)))
    return [p.stem for p in paths], np.stack(images)


def save_images(folder: str | Path, images: dict[str, Callable[[], np.ndarray]]) -> list[Path]:
    """Write ``id -> make_image`` as ``<id>.png``; an image already there is kept (and not made again)."""
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, make in images.items():
        path = folder / f"{name}.png"
        if not path.exists():
            Image.fromarray(make()).save(path)
        paths.append(path)
    return paths
