"""Decoding one beta: pure model work, no sockets or files (the service owns those).

brain -> (backbone tokens, retrieval tokens, blurry latent) -> prior tokens (20 DDIM steps);
retrieval tokens vs the gallery -> top-k; prior tokens -> image (unCLIP when its weights are loaded,
else the stand-in's inversion when the token space is the stand-in), blurry latent -> image when the
SD VAE is loaded.

Everything up to the image runs on the model's device: the gallery is held there, the generator that
the prior and unCLIP draw from is made there (a CUDA kernel refuses a CPU generator), and only the
results (tokens, similarity row, image) come back to the host. ``decode_on_device`` is that device
part alone; tests/test_device_discipline.py runs it on the meta device and fails any op that mixes devices.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from models.devices import generator_on, to_device
from models.folder import ModelIdentity, model_identity, read_model_folder
from models.retrieval import top_k
from rtdecode.gallery.folder import read_folder


@dataclass
class Retrieval:
    tokens: np.ndarray  # prior tokens (T, D): what reconstruction starts from
    ids: list[str]
    scores: list[float]
    timings_ms: dict[str, float] = field(default_factory=dict)
    blurry_latent: np.ndarray | None = None
    clip: np.ndarray | None = None  # retrieval-head tokens (T, D): what retrieval compares with images
    caption: str = ""  # from the prior's tokens (Decoder.decode; the service captions after publishing)


@dataclass
class OnDevice:
    """One beta's results while they are still on the model's device."""

    tokens: torch.Tensor  # prior tokens (1, T, D), the model's dtype
    clip: torch.Tensor  # retrieval-head tokens (1, T, D)
    blurry: torch.Tensor | None  # blurry latent (1, 4, 28, 28), for a model with the branch
    similarity: torch.Tensor  # (1, gallery) cosine similarity, float32
    timings_ms: dict[str, float] = field(default_factory=dict)


MAX_CAPTION = 300  # rtdecode.wire.schema's bound (this core imports no wire)
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


def clean_caption(text: str) -> str:
    """A captioner's text as one printable line of at most MAX_CAPTION characters (the wire's caption)."""
    return " ".join(_UNPRINTABLE.sub(" ", str(text)).split())[:MAX_CAPTION].rstrip()


class Decoder:
    """A calibrated model, its subject's ridge, a gallery in the model's token space, a reconstructor.

    ``unclip``: an ``UnclipReconstructor`` on the model's device; ``vae``: the SD VAE for the blurry
    image; ``invert``: the stand-in's inversion (host arrays in and out). The first present is used.
    ``captioner``: ``.caption(prior tokens (N, T, D) on the device) -> list[str]`` (GIT through the bigG -> L
    converter, or the demo's stand-in captioner); ``refiner``: ``.refine(image, caption, blurry, generator)``
    (SDXL img2img), run by the service as its policy says.
    """

    def __init__(self, model, subject: str, embedder, gallery_ids: list[str], gallery_tokens: np.ndarray,
                 unclip=None, vae=None, invert=None, top: int = 5, seed: int = 0, tier: str | None = None,
                 captioner=None, refiner=None) -> None:
        self.model, self.subject, self.embedder = model.eval(), subject, embedder
        self.name = subject  # the model folder's name once loaded from one (shown by consoles)
        # Whose brain: a model built here names no participant; from_folder reads the folder's.
        self.identity = ModelIdentity(subject, None, model.config.voxels[model.config.subject_index(subject)])
        self.sources: dict[str, str] = {}  # model and gallery folders, for rtdecode evaluate
        self.unclip, self.vae, self.invert = unclip, vae, invert
        self.captioner, self.refiner = captioner, refiner
        # What reconstructions are made with, for captions: unclip, blurry (SD VAE), standin, or none.
        self.tier = tier or ("unclip" if unclip is not None else "blurry" if vae is not None
                             else "standin" if invert is not None else "none")
        self.top = top
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.generator = generator_on(self.device, seed)  # the prior's and unCLIP's draws, on the device
        self.gallery_ids = gallery_ids
        # Unit rows, on the device once: a trial's retrieval is then one product there. Float32 whatever the
        # model's dtype, so scores and their order are those MindEye2's evaluation computes.
        flat = to_device(np.asarray(gallery_tokens, np.float32).reshape(len(gallery_ids), -1), self.device)
        self.gallery = F.normalize(flat, dim=1, eps=1e-12)

    @classmethod
    def from_folder(cls, folder: str | Path, gallery: str | Path, cache: str | Path | None = None,
                    device: str | None = None, unclip: str | Path | None = None,
                    sd_vae: str | Path | None = None, captioner: str | Path | None = None,
                    refiner: str | Path | None = None, refiner_config: str | Path | None = None) -> Decoder:
        """Load a model folder and a gallery. Reconstruction, in order of preference: unCLIP (a folder
        written by ``models.unclip.pipeline.convert_unclip``), the blurry image (the SD VAE file, for a
        model with the blurry branch), the stand-in's inversion (stand-in token space). The model and the
        reconstructor sit on ``device`` (CUDA when present) in bf16 there."""
        from models.clip import EmbeddingCache

        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = torch.bfloat16 if device.startswith("cuda") else None
        folder, gallery = Path(folder), Path(gallery)
        model, subject, embedder = read_model_folder(folder, device=device, dtype=dtype)
        ids, images = read_folder(gallery)
        tokens = EmbeddingCache(embedder, cache or folder / "embedding-cache", dtype=np.float32).embed(images)
        rec, vae, invert = None, None, None
        if unclip is not None:
            from models.unclip.pipeline import load_converted

            rec = load_converted(unclip, dtype=dtype or torch.float32, device=device)
        elif sd_vae is not None and model.config.blurry:
            from models.blurry import load_sd_vae

            vae = load_sd_vae(sd_vae).to(device, dtype or torch.float32)
        elif hasattr(embedder, "invert"):
            invert = lambda t: embedder.invert(t, size=128)  # noqa: E731 - the stand-in's "reconstruction"
        decoder = cls(model, subject, embedder, ids, tokens, unclip=rec, vae=vae, invert=invert,
                      captioner=None if captioner is None else load_captioner(captioner, device, dtype),
                      refiner=None if refiner is None else load_refiner(refiner, device, dtype, refiner_config))
        decoder.name = re.sub(r"[^A-Za-z0-9._-]", "_", folder.resolve().name)[:64]  # for captions: a label, never a path
        decoder.sources = {"model": str(folder.resolve()), "gallery": str(gallery.resolve())}
        decoder.identity = model_identity(folder, model)
        return decoder

    def refusal(self, participant: str, n_voxels: int) -> str | None:
        """Why this model is not the one for a beta of ``participant`` with ``n_voxels`` values (None: it is).

        A folder that names its participant takes only that participant's betas; one that does not (older
        folders) takes any beta of its voxel count, and the service warns about it."""
        ident = self.identity
        if ident.participant is not None and participant != ident.participant:
            return (f"model {self.name} is for sub-{ident.participant}; a beta of sub-{participant} came. Not "
                    f"acknowledged: the scanner side keeps it until a decoder with sub-{participant}'s model takes it")
        if n_voxels != ident.voxels:
            return (f"model {self.name} takes {ident.voxels} voxels; a beta of sub-{participant} has {n_voxels}. Not "
                    "acknowledged: the scanner side keeps it until a decoder with a model of that voxel set takes it")
        return None

    def _clock(self) -> float:
        """Now, after the device's queued work (so stage times are the device's, not the launches')."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    @torch.no_grad()
    def retrieve_on_device(self, beta: np.ndarray) -> OnDevice:
        """Ridge, backbone, similarity to the gallery and the prior's 20 DDIM steps, all on the device."""
        t0 = self._clock()
        x = to_device(np.array(beta, np.float32), self.device, self.dtype)[None]  # a copy: wire arrays are read-only
        backbone, clip, (blur, _) = self.model(x, self.subject)
        t1 = self._clock()
        similarity = F.normalize(clip.float().flatten(1), dim=1, eps=1e-12) @ self.gallery.T
        t2 = self._clock()
        prior = self.model.diffusion_prior.sample(backbone, steps=20, generator=self.generator)
        t3 = self._clock()
        timings = {"backbone_ms": (t1 - t0) * 1e3, "retrieval_ms": (t2 - t1) * 1e3, "prior_ms": (t3 - t2) * 1e3}
        return OnDevice(prior, clip, blur if blur.ndim == 4 else None, similarity, timings)

    def retrieve(self, beta: np.ndarray) -> Retrieval:
        """One beta to its prior tokens and top-k gallery items (host arrays)."""
        d = self.retrieve_on_device(beta)
        idx, scores = top_k(d.similarity.cpu().numpy(), self.top)
        return Retrieval(_host(d.tokens[0]), [self.gallery_ids[i] for i in idx[0]], [float(s) for s in scores[0]],
                         d.timings_ms, None if d.blurry is None else _host(d.blurry[0]), _host(d.clip[0]))

    @torch.no_grad()
    def caption(self, tokens: np.ndarray) -> tuple[str, float]:
        """A trial's caption from its prior tokens (T, D), as MindEye2 captions (on the captioner's device);
        and the time taken. ('', 0) without a captioner."""
        if self.captioner is None:
            return "", 0.0
        t0 = self._clock()
        text = clean_caption(self.captioner.caption(to_device(tokens, self.device, self.dtype)[None])[0])
        return text, (self._clock() - t0) * 1e3

    @property
    def can_reconstruct(self) -> bool:
        return self.unclip is not None or self.vae is not None or self.invert is not None

    @torch.no_grad()
    def reconstruct_on_device(self, tokens: torch.Tensor, blurry: torch.Tensor | None = None) -> torch.Tensor | None:
        """Prior tokens (T, D) (or, without unCLIP, the blurry latent (4, 28, 28)) on the device -> image
        (3, H, W) in [0, 1] on the device; None where this decoder cannot make one there."""
        if self.unclip is not None:
            return self.unclip(tokens[None].float(), generator=self.generator)[0]
        if self.vae is not None and blurry is not None:
            from models.blurry import blurry_image

            return blurry_image(self.vae, blurry[None].float())[0]
        return None

    def reconstruct(self, tokens: np.ndarray, blurry_latent: np.ndarray | None = None) -> tuple[np.ndarray | None, float]:
        """Prior tokens (or, without unCLIP, the blurry latent) -> uint8 image (H, W, 3); and the time taken."""
        t0 = self._clock()
        if self.unclip is None and self.vae is None:
            if self.invert is None:
                return None, 0.0
            image = np.asarray(self.invert(tokens))  # the stand-in's inversion: host arrays
        else:
            on_device = self.reconstruct_on_device(
                to_device(tokens, self.device), None if blurry_latent is None else to_device(blurry_latent, self.device))
            if on_device is None:
                return None, 0.0
            image = _host(on_device.permute(1, 2, 0))
        if image.dtype != np.uint8:
            image = (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)
        return image, (time.perf_counter() - t0) * 1e3

    def refine(self, image: np.ndarray, caption: str, blurry_latent: np.ndarray | None = None) -> tuple[np.ndarray, float]:
        """A reconstruction refined with its caption (MindEye2's SDXL img2img, then 0.75 refined + 0.25 the
        blurry image where the model has one and the SD VAE is loaded); and the time taken."""
        t0 = self._clock()
        blurry = None
        if self.vae is not None and blurry_latent is not None:
            from models.blurry import blurry_image

            with torch.no_grad():
                on_device = blurry_image(self.vae, to_device(blurry_latent, self.device)[None].float())[0]
            blurry = (np.clip(_host(on_device.permute(1, 2, 0)), 0, 1) * 255 + 0.5).astype(np.uint8)
        refined = np.asarray(self.refiner.refine(image, caption, blurry, self.generator))
        return refined, (self._clock() - t0) * 1e3

    def decode(self, beta: np.ndarray) -> tuple[Retrieval, np.ndarray | None]:
        """One beta end to end, as the service runs it: retrieval, then the reconstruction of its tokens."""
        ret = self.retrieve(beta)
        if self.captioner is not None:
            ret.caption, ret.timings_ms["caption_ms"] = self.caption(ret.tokens)
        image, ms = self.reconstruct(ret.tokens, ret.blurry_latent) if self.can_reconstruct else (None, 0.0)
        ret.timings_ms["reconstruction_ms"] = ms
        return ret, image

    @torch.no_grad()
    def decode_on_device(self, beta: np.ndarray) -> tuple[OnDevice, torch.Tensor | None]:
        """``decode`` without the host at the end: every tensor stays on the model's device."""
        d = self.retrieve_on_device(beta)
        t0 = self._clock()
        image = self.reconstruct_on_device(d.tokens[0].float(), None if d.blurry is None else d.blurry[0].float())
        d.timings_ms["reconstruction_ms"] = (self._clock() - t0) * 1e3
        return d, image


def load_captioner(path: str | Path, device: str, dtype: torch.dtype | None):
    """A captioner folder: the demo's stand-in captioner (``standin_captioner.json``), else GIT in its
    published Hugging Face layout read through the bigG -> L converter (models.caption)."""
    from rtdecode.gallery.captions import StandinCaptioner, is_standin_captioner

    if is_standin_captioner(path):
        return StandinCaptioner.from_folder(path)
    from models.caption import BrainCaptioner

    return BrainCaptioner.from_folder(path, device=device, dtype=dtype or torch.float32)


def load_refiner(path: str | Path, device: str, dtype: torch.dtype | None, config: str | Path | None = None):
    """SDXL base for refinement: a diffusers folder, or the published single .safetensors file with a
    diffusers-layout folder of its configurations and tokenizers (``config``)."""
    from models.refine import Refiner

    path = Path(path)
    if path.is_file():
        if config is None:
            raise ValueError(f"--refiner {path}: a single file needs --refiner-config (SDXL base's configurations "
                             "and tokenizers in the diffusers layout; no weights needed there)")
        return Refiner.from_single_file(path, config, device=device, dtype=dtype or torch.float32)
    return Refiner.from_folder(path, device=device, dtype=dtype or torch.float32)


def _host(t: torch.Tensor) -> np.ndarray:
    return t.float().cpu().numpy()
