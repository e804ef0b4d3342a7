"""A gallery on disk: one PNG or JPEG per image, named by its id (the file stem)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

SUFFIXES = (".png", ".jpg", ".jpeg")


def gallery_files(folder: str | Path) -> dict[str, Path]:
    """Image id (file stem) -> file, sorted by id."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such gallery folder (expected a folder of PNG or JPEG images)")
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in SUFFIXES)
    if not paths:
        raise FileNotFoundError(f"{folder}: no PNG or JPEG images to use as a gallery")
    files: dict[str, Path] = {}
    for p in paths:
        if p.stem in files:  # x.png and x.jpg: which picture the id names would depend on the sort order
            raise FileNotFoundError(f"{folder}: image id {p.stem!r} has more than one file; expected one PNG or "
                                    "JPEG per id")
        files[p.stem] = p
    return files


def load_image(path: str | Path, size: int | None = None) -> np.ndarray:
    """uint8 RGB (H, W, 3); resized to ``size`` x ``size`` (bicubic) when given, as a gallery is embedded."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        return np.asarray(im.resize((size, size), Image.BICUBIC) if size else im)


def read_folder(folder: str | Path, size: int = 128) -> tuple[list[str], np.ndarray]:
    """Ids (file stems, sorted) and images as uint8 RGB resized to ``size`` x ``size``."""
    files = gallery_files(folder)
    return list(files), np.stack([load_image(p, size) for p in files.values()])


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


EMBED_SIZE = 256  # a folder's images are read at one size: every embedder resizes them again


def folder_source(folder: str | Path, size: int = EMBED_SIZE) -> Callable[[list[str]], np.ndarray]:
    """The images of ``folder`` by id, for embedding (``ids -> (N, size, size, 3)`` uint8). An id is looked up
    among the folder's files, never made into a path; an id with no file is a FileNotFoundError naming the id
    and the folder, as is an id with two files (x.png and x.jpg)."""
    files = gallery_files(folder)

    def images(ids: list[str]) -> np.ndarray:
        absent = [i for i in ids if i not in files]
        if absent:
            raise FileNotFoundError(f"image id {absent[0]!r}: no {absent[0]}.png, .jpg or .jpeg in {folder} "
                                    f"({len(set(absent))} id(s) without a file); expected one image file per id")
        return np.stack([load_image(files[i], size) for i in ids])

    return images
