"""The low-level branch's image space: the SD-1 VAE.

The backbone's blurry latent (4 x 28 x 28) decodes through the VAE into the blurry image; in training
its target is the VAE latent of the shown image (224 px) times 0.18215. The published
``sd_image_var_autoenc.pth`` holds the weights of a diffusers ``AutoencoderKL`` with the Stable
Diffusion 1 layout.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

SD_SCALE = 0.18215
SD_VAE_CHANNELS = (128, 256, 512, 512)


def build_sd_vae(channels: tuple[int, ...] = SD_VAE_CHANNELS, device: str | torch.device = "meta"):
    from diffusers import AutoencoderKL

    with torch.device(device):
        return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=channels,
                             down_block_types=("DownEncoderBlock2D",) * len(channels),
                             up_block_types=("UpDecoderBlock2D",) * len(channels), layers_per_block=2,
                             scaling_factor=SD_SCALE)


def vae_channels(state: dict) -> tuple[int, ...]:
    """The encoder's block widths, read from a state dict's shapes (the published file: 128, 256, 512, 512)."""
    widths, i = [], 0
    while f"encoder.down_blocks.{i}.resnets.0.conv1.weight" in state:
        widths.append(int(state[f"encoder.down_blocks.{i}.resnets.0.conv1.weight"].shape[0]))
        i += 1
    if not widths:
        raise KeyError("no encoder.down_blocks.0.resnets.0.conv1.weight: not an SD VAE state dict")
    return tuple(widths)


def load_sd_vae(path: str | Path, channels: tuple[int, ...] | None = None):
    """The published VAE file (a state dict, possibly under 'state_dict'), loaded strictly.

    ``channels`` defaults to the widths the file holds, so a small VAE saved in the same format loads too.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: SD VAE not found (fetch it with: rtdecode models download sd-vae)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict, got {type(state).__name__}")
    try:
        channels = channels or vae_channels(state)
    except KeyError as exc:
        raise ValueError(f"{path}: {exc.args[0]}") from None
    vae = build_sd_vae(channels)
    vae.load_state_dict(state, strict=True, assign=True)
    return vae.eval().requires_grad_(False)


@torch.no_grad()
def blurry_image(vae, latent: torch.Tensor) -> torch.Tensor:
    """(B, 4, 28, 28) scaled latent -> (B, 3, 224, 224) image in [0, 1], as the published code decodes it."""
    dtype = next(vae.parameters()).dtype
    return (vae.decode((latent / SD_SCALE).to(dtype)).sample.float() / 2 + 0.5).clamp(0, 1)


@torch.no_grad()
def encode_images(vae, images: np.ndarray, batch: int = 16) -> np.ndarray:
    """Images (N, H, W, 3) uint8 or float in [0, 1] -> blurry-branch targets (N, 4, H/8, W/8) float32:
    the mode of the VAE posterior of 2x-1, times 0.18215 (the published targets; 224 px gives 28 x 28)."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected images (N, H, W, 3), got shape {images.shape}")
    x = images.astype(np.float32) / (255.0 if images.dtype == np.uint8 else 1.0)
    param = next(vae.parameters())
    out = []
    for i in range(0, len(x), batch):
        chunk = torch.from_numpy(x[i:i + batch]).permute(0, 3, 1, 2).to(param.device, param.dtype)
        out.append((vae.encode(2 * chunk - 1).latent_dist.mode() * SD_SCALE).float().cpu().numpy())
    return np.concatenate(out)


class VaeTargets:
    """The VAE as an "embedder" (``id`` + ``embed``), so blurry targets share the token cache's code path."""

    def __init__(self, path: str | Path, pixels: int = 224) -> None:
        self.path, self.pixels = Path(path), pixels
        self.vae = load_sd_vae(self.path)
        digest = hashlib.sha256()
        with open(self.path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        self.id = f"sd-vae-{digest.hexdigest()[:16]}-p{pixels}"

    def embed(self, images: np.ndarray) -> np.ndarray:
        images = np.asarray(images)
        if images.shape[1:3] != (self.pixels, self.pixels):
            t = torch.from_numpy(images.astype(np.float32) / (255.0 if images.dtype == np.uint8 else 1.0))
            t = torch.nn.functional.interpolate(t.permute(0, 3, 1, 2), size=(self.pixels, self.pixels),
                                                mode="bilinear", antialias=True, align_corners=False)
            images = t.clamp(0, 1).permute(0, 2, 3, 1).numpy()
        return encode_images(self.vae, images)
