"""The blurry image: the backbone's low-level latent (4 x 28 x 28) through the SD-1 VAE decoder.

The published ``sd_image_var_autoenc.pth`` holds the weights of a diffusers ``AutoencoderKL`` with
the Stable Diffusion 1 layout; the latent is the VAE latent of a 224 px image times 0.18215.
"""

from __future__ import annotations

from pathlib import Path

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


def load_sd_vae(path: str | Path, channels: tuple[int, ...] = SD_VAE_CHANNELS):
    """The published VAE file (a state dict, possibly under 'state_dict'), loaded strictly."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: SD VAE not found (fetch it with: rtdecode models download sd-vae)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict, got {type(state).__name__}")
    vae = build_sd_vae(channels)
    vae.load_state_dict(state, strict=True, assign=True)
    return vae.eval().requires_grad_(False)


@torch.no_grad()
def blurry_image(vae, latent: torch.Tensor) -> torch.Tensor:
    """(B, 4, 28, 28) scaled latent -> (B, 3, 224, 224) image in [0, 1], as the published code decodes it."""
    dtype = next(vae.parameters()).dtype
    return (vae.decode((latent / SD_SCALE).to(dtype)).sample.float() / 2 + 0.5).clamp(0, 1)
