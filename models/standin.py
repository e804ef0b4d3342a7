"""A stand-in for CLIP image tokens, for machines without the OpenCLIP ViT-bigG weights.

This is NOT CLIP. It is a fixed, hand-built feature map with the same *shape of interface*: an image
goes in, a (tokens, dim) array comes out, one token per image patch, so every piece downstream
(simulated brains, MindEye2 heads, retrieval, the demo) can run end to end offline. Each token holds
the patch's coarse colour layout, its edge energy at four orientations and two scales, its colour
spread, and the image's global colour, all turned by a fixed seeded rotation so no token dimension
means one thing. Because the rotation is orthogonal and the colour layout is linear in the pixels,
``invert`` maps tokens back to a coarse colour image: the stand-in's "reconstruction".
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image

SUB = 4  # colour sub-blocks per patch side
N_COLOUR = SUB * SUB * 3
N_EDGE = 8
N_OTHER = 3 + 1 + 3 + 1  # patch colour spread, patch edge density, global colour, global contrast
N_RAW = N_COLOUR + N_EDGE + N_OTHER  # 64


@dataclass(frozen=True)
class StandInConfig:
    """Token grid (``grid`` x ``grid`` patches), token width ``dim`` (>= 64) and rotation seed."""

    grid: int = 4
    dim: int = 64
    seed: int = 0
    pixels: int = 64  # images are resized to pixels x pixels before feature extraction

    @property
    def tokens(self) -> int:
        return self.grid * self.grid

    def to_dict(self) -> dict:
        return asdict(self)


class StandInEmbedder:
    """Images (N, H, W, 3) uint8 or float in [0, 1] -> tokens (N, grid*grid, dim) float32."""

    def __init__(self, config: StandInConfig | None = None) -> None:
        self.config = config or StandInConfig()
        c = self.config
        if c.dim < N_RAW:
            raise ValueError(f"StandInConfig.dim must be at least {N_RAW}, got {c.dim}")
        if c.pixels % (c.grid * SUB):
            raise ValueError(f"StandInConfig.pixels ({c.pixels}) must be a multiple of grid*{SUB} ({c.grid * SUB})")
        q, r = np.linalg.qr(np.random.default_rng(c.seed).normal(size=(c.dim, c.dim)))
        self.rotation = (q * np.sign(np.diag(r))).astype(np.float32)
        # Group weights make each group carry a comparable share of a token's variance.
        self.weights = np.r_[np.full(N_COLOUR, 2.0), np.full(N_EDGE, 3.0), np.full(N_OTHER, 1.5)].astype(np.float32)

    @property
    def id(self) -> str:
        """Names this feature space (cache keys, model folders)."""
        c = self.config
        return f"standin-g{c.grid}-d{c.dim}-s{c.seed}-p{c.pixels}"

    @property
    def token_shape(self) -> tuple[int, int]:
        return self.config.tokens, self.config.dim

    def embed(self, images: np.ndarray) -> np.ndarray:
        """Tokens for a batch of images (any size; resized with bicubic filtering)."""
        batch = np.stack([self._prepare(im) for im in _as_batch(images)])
        raw = self._raw_features(batch) * self.weights
        padded = np.zeros((*raw.shape[:2], self.config.dim), np.float32)
        padded[..., :N_RAW] = raw
        return padded @ self.rotation.T

    def invert(self, tokens: np.ndarray, size: int | None = None) -> np.ndarray:
        """Coarse colour images (N, size, size, 3) in [0, 1] from tokens (the stand-in decoder)."""
        tokens = np.asarray(tokens, np.float32)
        single = tokens.ndim == 2
        tokens = tokens[None] if single else tokens
        raw = (tokens @ self.rotation)[..., :N_COLOUR] / self.weights[:N_COLOUR]
        g = self.config.grid
        blocks = raw.reshape(len(tokens), g, g, SUB, SUB, 3).transpose(0, 1, 3, 2, 4, 5)
        coarse = np.clip(blocks.reshape(len(tokens), g * SUB, g * SUB, 3) + 0.5, 0, 1)
        size = size or self.config.pixels
        out = np.stack([_resize(c, size) for c in coarse])
        return out[0] if single else out

    def _prepare(self, image: np.ndarray) -> np.ndarray:
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an RGB image of shape (H, W, 3), got shape {image.shape}")
        if image.dtype == np.uint8:
            image = image.astype(np.float32) / 255.0
        return _resize(np.clip(image.astype(np.float32), 0, 1), self.config.pixels)

    def _raw_features(self, batch: np.ndarray) -> np.ndarray:
        n, p = len(batch), self.config.pixels
        g = self.config.grid
        ps = p // g
        patches = batch.reshape(n, g, ps, g, ps, 3).transpose(0, 1, 3, 2, 4, 5).reshape(n, g * g, ps, ps, 3)
        sb = ps // SUB
        colour = patches.reshape(n, g * g, SUB, sb, SUB, sb, 3).mean(axis=(3, 5)).reshape(n, g * g, -1) - 0.5
        edges = np.concatenate([_edge_energy(batch, g, 1), _edge_energy(batch, g, 2)], axis=-1)
        spread = patches.std(axis=(2, 3))
        grey = patches.mean(axis=-1)
        density = (np.abs(np.diff(grey, axis=2)) > 0.08).mean(axis=(2, 3))[..., None]
        glob = np.repeat(batch.mean(axis=(1, 2))[:, None, :] - 0.5, g * g, axis=1)
        contrast = np.repeat(batch.mean(axis=-1).std(axis=(1, 2))[:, None, None], g * g, axis=1)
        return np.concatenate([colour, edges, spread, density, glob, contrast], axis=-1).astype(np.float32)


def _edge_energy(batch: np.ndarray, grid: int, step: int) -> np.ndarray:
    """Mean gradient energy per patch in four orientation bins, at pixel step ``step``."""
    grey = batch.mean(axis=-1)
    if step > 1:
        n, p, _ = grey.shape
        grey = grey.reshape(n, p // step, step, p // step, step).mean(axis=(2, 4))
    gy, gx = np.gradient(grey, axis=(1, 2))
    mag = np.hypot(gx, gy)
    angle = np.mod(np.arctan2(gy, gx), np.pi)
    bins = np.minimum((angle / (np.pi / 4)).astype(int), 3)
    n, p, _ = grey.shape
    ps = p // grid
    out = np.zeros((n, grid * grid, 4), np.float32)
    for b in range(4):
        energy = np.where(bins == b, mag, 0.0).reshape(n, grid, ps, grid, ps).mean(axis=(2, 4))
        out[..., b] = energy.reshape(n, -1) * 4
    return out


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    if image.shape[0] == size and image.shape[1] == size:
        return image.astype(np.float32)
    channels = [np.asarray(Image.fromarray(np.ascontiguousarray(image[..., c], dtype=np.float32)).resize((size, size), Image.BICUBIC))
                for c in range(3)]
    return np.clip(np.stack(channels, axis=-1), 0, 1).astype(np.float32)


def _as_batch(images: np.ndarray | list) -> list[np.ndarray]:
    if isinstance(images, np.ndarray) and images.ndim == 3:
        return [images]
    return list(images)

