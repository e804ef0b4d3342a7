"""CLIP image tokens as MindEye2 was trained on: OpenCLIP ViT-bigG-14, 256 patch tokens x 1664.

Preprocessing copies the published pipeline, quirk included: images in [0, 1] are resized to 224
(bicubic, antialiased), then mapped with (x + 1) / 2 (so the encoder sees [0.5, 1]), then normalised
with CLIP's mean and std. The tokens are the vision tower's patch tokens after ``ln_post``, before
any projection, class token dropped. Only the vision tower is kept in memory.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def published_preprocess(images: torch.Tensor, size: int = 224) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> the encoder's input, as the published code prepares it."""
    x = F.interpolate(images, size=(size, size), mode="bicubic", antialias=True, align_corners=False)
    x = (x + 1) / 2  # sic: the published targets were made this way; copy it to match them
    mean = torch.tensor(CLIP_MEAN, device=x.device, dtype=x.dtype)[None, :, None, None]
    std = torch.tensor(CLIP_STD, device=x.device, dtype=x.dtype)[None, :, None, None]
    return (x - mean) / std


def as_tensor(images, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 (N, H, W, 3) arrays or float tensors (N, 3, H, W) in [0, 1] -> float tensor (N, 3, H, W)."""
    if isinstance(images, torch.Tensor):
        return images.to(device=device, dtype=torch.float32)
    arr = np.asarray(images)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"expected RGB images shaped (N, H, W, 3), got {arr.shape}")
    scale = 255.0 if arr.dtype == np.uint8 else 1.0
    return torch.from_numpy(arr.astype(np.float32) / scale).permute(0, 3, 1, 2).to(device)


class ClipTokenEmbedder:
    """OpenCLIP vision tower -> patch tokens (N, tokens, width), e.g. (N, 256, 1664) for ViT-bigG-14.

    ``pretrained`` is an OpenCLIP tag (downloads, with internet) or a local weights file in OpenCLIP's
    format; ``config_path`` registers a model config JSON first (how tests load a tiny model through
    the same code path as bigG).
    """

    def __init__(self, model_name: str = "ViT-bigG-14", pretrained: str = "laion2b_s39b_b160k",
                 device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                 config_path: str | Path | None = None) -> None:
        import open_clip

        if config_path is not None:
            open_clip.add_model_config(str(config_path))
        model = open_clip.create_model(model_name, pretrained=str(pretrained), device=device, weights_only=True,
                                       require_pretrained=True)
        self._adopt(model.visual, torch.device(device), dtype, f"openclip-{model_name}-{Path(str(pretrained)).name}")

    @classmethod
    def without_weights(cls, model_name: str = "ViT-bigG-14") -> ClipTokenEmbedder:
        """The full-size architecture on the meta device (no weights, no memory): checks of shapes and
        layers without the 10 GB file."""
        import open_clip

        with torch.device("meta"):
            model = open_clip.create_model(model_name, device="meta")
        self = cls.__new__(cls)
        self._adopt(model.visual, torch.device("meta"), torch.float32, f"openclip-{model_name}-meta")
        return self

    def _adopt(self, visual, device: torch.device, dtype: torch.dtype, ident: str) -> None:
        self.visual = visual.to(dtype).eval().requires_grad_(False)  # the text tower is dropped
        self.visual.output_tokens = True
        self.device, self.dtype, self.id = device, dtype, ident
        self.image_size = self.visual.image_size[0] if isinstance(self.visual.image_size, tuple) else self.visual.image_size

    @torch.no_grad()
    def tokens(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> the patch tokens, class token dropped (the published targets)."""
        _, tokens = self.visual(published_preprocess(images, self.image_size).to(self.dtype))
        return tokens

    def embed(self, images, batch_size: int = 16) -> np.ndarray:
        x = as_tensor(images, self.device)
        return np.concatenate([self.tokens(x[i:i + batch_size]).float().cpu().numpy()
                               for i in range(0, len(x), batch_size)])


class EmbeddingCache:
    """Tokens on disk keyed by image content and embedder, so a gallery or calibration set is embedded once.

    Files: ``<folder>/<embedder id>/<sha256 of the pixels>.npy`` (plain arrays, never pickled).
    """

    def __init__(self, embedder, folder: str | Path, dtype=np.float16) -> None:
        self.embedder = embedder
        self.folder = Path(folder) / embedder.id
        self.folder.mkdir(parents=True, exist_ok=True)
        self.dtype = dtype
        self.computed = 0  # images actually sent through the embedder (for tests and logs)

    @staticmethod
    def key(image: np.ndarray) -> str:
        arr = np.ascontiguousarray(image)
        return hashlib.sha256(f"{arr.shape}{arr.dtype}".encode() + arr.tobytes()).hexdigest()

    def embed(self, images) -> np.ndarray:
        images = [np.asarray(im) for im in (images if not isinstance(images, np.ndarray) or images.ndim == 4 else [images])]
        keys = [self.key(im) for im in images]
        todo = [i for i, k in enumerate(keys) if not (self.folder / f"{k}.npy").exists()]
        if todo:
            fresh = self.embedder.embed(np.stack([images[i] for i in todo]))
            self.computed += len(todo)
            for i, tokens in zip(todo, fresh, strict=True):
                tmp = self.folder / f".{keys[i]}.{os.getpid()}.tmp.npy"  # processes may share a cache
                np.save(tmp, tokens.astype(self.dtype))
                tmp.replace(self.folder / f"{keys[i]}.npy")
        return np.stack([np.load(self.folder / f"{k}.npy", allow_pickle=False) for k in keys]).astype(np.float32)


def embed_images(encoder, images: np.ndarray, cache: str | Path | None = None) -> np.ndarray:
    """``encoder.embed(images)`` as float32, through an :class:`EmbeddingCache` in ``cache`` when given."""
    out = EmbeddingCache(encoder, cache, dtype=np.float32).embed(images) if cache is not None else encoder.embed(images)
    return np.asarray(out, np.float32)
