"""Decoding one beta: pure model work, no sockets or files (the service owns those).

brain -> (backbone tokens, retrieval tokens, blurry latent) -> prior tokens (20 DDIM steps);
retrieval tokens vs the gallery -> top-k; prior tokens -> image (unCLIP when its weights are loaded,
else the stand-in's inversion when the token space is the stand-in), blurry latent -> image when the
SD VAE is loaded.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from models.folder import read_model_folder
from models.retrieval import similarity, top_k
from rtdecode.gallery.folder import read_folder


@dataclass
class Retrieval:
    tokens: np.ndarray  # prior tokens (T, D): what reconstruction starts from
    ids: list[str]
    scores: list[float]
    timings_ms: dict[str, float] = field(default_factory=dict)
    blurry_latent: np.ndarray | None = None
    clip: np.ndarray | None = None  # retrieval-head tokens (T, D): what retrieval compares with images


class Decoder:
    """A calibrated model, its subject's ridge, a gallery in the model's token space, a reconstructor."""

    def __init__(self, model, subject: str, embedder, gallery_ids: list[str], gallery_tokens: np.ndarray,
                 reconstruct=None, blurry=None, top: int = 5, seed: int = 0, tier: str | None = None) -> None:
        self.model, self.subject, self.embedder = model.eval(), subject, embedder
        self.name = subject  # the model folder's name once loaded from one (shown by consoles)
        self.sources: dict[str, str] = {}  # model and gallery folders, for rtdecode evaluate
        # What reconstructions are made with, for captions: unclip, blurry (SD VAE), standin, or none.
        self.tier = tier or ("blurry" if blurry is not None else "standin" if reconstruct is not None else "none")
        self.gallery_ids, self.gallery_tokens = gallery_ids, gallery_tokens
        self.reconstruct_fn, self.blurry_fn = reconstruct, blurry
        self.top = top
        self.generator = torch.Generator().manual_seed(seed)
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype

    @classmethod
    def from_folder(cls, folder: str | Path, gallery: str | Path, cache: str | Path | None = None,
                    device: str | None = None, unclip: str | Path | None = None,
                    sd_vae: str | Path | None = None) -> Decoder:
        """Load a model folder and a gallery. Reconstruction, in order of preference: unCLIP (a folder
        written by ``models.unclip.pipeline.convert_unclip``), the blurry image (the SD VAE file, for a
        model with the blurry branch), the stand-in's inversion (stand-in token space)."""
        from models.clip import EmbeddingCache

        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = torch.bfloat16 if device.startswith("cuda") else None
        folder, gallery = Path(folder), Path(gallery)
        model, subject, embedder = read_model_folder(folder, device=device, dtype=dtype)
        ids, images = read_folder(gallery)
        tokens = EmbeddingCache(embedder, cache or folder / "embedding-cache", dtype=np.float32).embed(images)
        reconstruct, blurry, tier = None, None, None
        if unclip is not None:
            tier = "unclip"
            from models.unclip.pipeline import load_converted

            rec = load_converted(unclip, dtype=dtype or torch.float32, device=device)

            def reconstruct(t: np.ndarray) -> np.ndarray:
                image = rec(torch.as_tensor(t, device=device)[None].float())[0]
                return image.permute(1, 2, 0).float().cpu().numpy()
        elif sd_vae is not None and model.config.blurry:
            from models.blurry import blurry_image, load_sd_vae

            vae = load_sd_vae(sd_vae).to(device)

            def blurry(latent: np.ndarray) -> np.ndarray:
                image = blurry_image(vae, torch.as_tensor(latent, device=device)[None])[0]
                return image.permute(1, 2, 0).cpu().numpy()
        elif hasattr(embedder, "invert"):
            reconstruct = lambda t: embedder.invert(t, size=128)  # noqa: E731 - the stand-in's "reconstruction"
        decoder = cls(model, subject, embedder, ids, tokens, reconstruct=reconstruct, blurry=blurry, tier=tier)
        decoder.name = re.sub(r"[^A-Za-z0-9._-]", "_", folder.resolve().name)[:64]  # for captions: a label, never a path
        decoder.sources = {"model": str(folder.resolve()), "gallery": str(gallery.resolve())}
        return decoder

    @torch.no_grad()
    def retrieve(self, beta: np.ndarray) -> Retrieval:
        t0 = time.perf_counter()
        x = torch.tensor(np.array(beta, np.float32), device=self.device, dtype=self.dtype)[None]  # a copy: wire arrays are read-only
        backbone, clip, (blur, _) = self.model(x, self.subject)
        t1 = time.perf_counter()
        sim = similarity(clip.float().cpu().numpy(), self.gallery_tokens)
        idx, scores = top_k(sim, self.top)
        t2 = time.perf_counter()
        prior = self.model.diffusion_prior.sample(backbone, steps=20, generator=self.generator)
        t3 = time.perf_counter()
        return Retrieval(prior[0].float().cpu().numpy(), [self.gallery_ids[i] for i in idx[0]],
                         [float(s) for s in scores[0]],
                         {"backbone_ms": (t1 - t0) * 1e3, "retrieval_ms": (t2 - t1) * 1e3, "prior_ms": (t3 - t2) * 1e3},
                         blur[0].float().cpu().numpy() if blur.ndim == 4 else None, clip[0].float().cpu().numpy())

    @property
    def can_reconstruct(self) -> bool:
        return self.reconstruct_fn is not None or self.blurry_fn is not None

    def reconstruct(self, tokens: np.ndarray, blurry_latent: np.ndarray | None = None) -> tuple[np.ndarray | None, float]:
        """Prior tokens (or, without unCLIP, the blurry latent) -> uint8 image (H, W, 3); and the time taken."""
        t0 = time.perf_counter()
        if self.reconstruct_fn is not None:
            image = np.asarray(self.reconstruct_fn(tokens))
        elif self.blurry_fn is not None and blurry_latent is not None:
            image = np.asarray(self.blurry_fn(blurry_latent))
        else:
            return None, 0.0
        if image.dtype != np.uint8:
            image = (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)
        return image, (time.perf_counter() - t0) * 1e3
