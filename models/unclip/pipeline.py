"""Brain tokens (256 x 1664) -> a 768 px image through the converted SDXL unCLIP, on diffusers modules.

The sampler reproduces the published set-up (sgm's EulerEDMSampler with LegacyDDPMDiscretization,
38 steps, classifier-free guidance 5 with random tokens as the unconditional input, a DiscreteDenoiser
with eps scaling and sigmas quantised to the 1,000 training levels, 0.04 offset noise, output
``clamp(x * 0.8 + 0.2, 0, 1)``) without sgm: the UNet and VAE are diffusers modules.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from models.legacy_pickle import load_checkpoint
from models.unclip.convert import UNetLayout, convert_unet, convert_vae

SCALE_FACTOR = 0.13025  # SDXL VAE latent scale


def ddpm_alphas_cumprod(n: int = 1000, start: float = 0.00085, end: float = 0.012) -> np.ndarray:
    betas = np.linspace(start ** 0.5, end ** 0.5, n, dtype=np.float64) ** 2
    return np.cumprod(1.0 - betas)


def sampling_sigmas(steps: int, n: int = 1000) -> torch.Tensor:
    """Descending sigmas of ``steps`` roughly equally spaced training levels, then 0 (sgm's order)."""
    idx = np.linspace(n - 1, 0, steps, endpoint=False).astype(int)[::-1]
    ac = ddpm_alphas_cumprod(n)[idx]
    sigmas = torch.tensor(((1 - ac) / ac) ** 0.5, dtype=torch.float32).flip(0)
    return torch.cat([sigmas, torch.zeros(1)])


@dataclass
class UnclipSettings:
    steps: int = 38
    guidance: float = 5.0
    offset_noise: float = 0.04
    size: int = 768  # output pixels; the latent is size / 8
    # The size/crop vector MindEye2 conditions on: always (768, 768) and crop (0, 0), whatever the output
    # size (its reconstruction code sets original_size_as_tuple to 768); a smaller output changes the
    # latent only.
    conditioning_size: int = 768


class UnclipReconstructor:
    """A diffusers UNet2DConditionModel and AutoencoderKL converted from the published checkpoint."""

    def __init__(self, unet, vae, settings: UnclipSettings | None = None) -> None:
        self.unet, self.vae = unet.eval().requires_grad_(False), vae.eval().requires_grad_(False)
        self.settings = settings or UnclipSettings()
        levels = ddpm_alphas_cumprod()
        self.levels = torch.tensor(((1 - levels) / levels) ** 0.5, dtype=torch.float32)  # ascending

    def _denoise(self, x: torch.Tensor, sigma: torch.Tensor, tokens: torch.Tensor, time_ids: torch.Tensor,
                 levels: torch.Tensor) -> torch.Tensor:
        idx = (sigma - levels[:, None]).abs().argmin(dim=0)  # nearest training level
        sigma = levels[idx]
        c_in = 1 / (sigma ** 2 + 1) ** 0.5
        dtype = next(self.unet.parameters()).dtype
        eps = self.unet((x * c_in[:, None, None, None]).to(dtype), idx, encoder_hidden_states=tokens.to(dtype),
                        added_cond_kwargs={"text_embeds": torch.zeros(len(x), 0, device=x.device, dtype=dtype),
                                           "time_ids": time_ids.to(dtype)}).sample.float()
        return x - sigma[:, None, None, None] * eps  # eps scaling: c_skip = 1, c_out = -sigma

    @torch.no_grad()
    def __call__(self, tokens: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """tokens (B, 256, 1664) -> images (B, 3, size, size) in [0, 1]. Every draw is made on the tokens'
        device from ``generator``, which must sit there too (a CUDA kernel refuses a CPU generator)."""
        s = self.settings
        b, device = len(tokens), tokens.device
        side = s.size // 8
        tokens = tokens.float()
        uncond = torch.randn(tokens.shape, generator=generator, device=device)  # as published: noise, not zeros
        z = torch.randn((b, 4, side, side), generator=generator, device=device)
        noise = torch.randn(z.shape, generator=generator, device=device)
        noise = noise + s.offset_noise * torch.randn(b, generator=generator, device=device)[:, None, None, None]
        sigmas = sampling_sigmas(s.steps).to(device)  # schedules are computed on the host and cross over once
        levels = self.levels.to(device)
        x = z + noise * sigmas[0]
        cs = s.conditioning_size
        time_ids = torch.tensor([cs, cs, 0, 0], device=device, dtype=torch.float32).repeat(2 * b, 1)
        both = torch.cat([uncond, tokens])
        for i in range(len(sigmas) - 1):
            sigma = sigmas[i].expand(2 * b)
            den = self._denoise(torch.cat([x, x]), sigma, both, time_ids, levels)
            den_u, den_c = den.chunk(2)
            denoised = den_u + s.guidance * (den_c - den_u)
            x = x + (x - denoised) / sigmas[i] * (sigmas[i + 1] - sigmas[i])  # Euler step
        dtype = next(self.vae.parameters()).dtype
        images = self.vae.decode((x / SCALE_FACTOR).to(dtype)).sample.float()
        return torch.clamp(images * 0.8 + 0.2, 0.0, 1.0)


def build_modules(layout: UNetLayout, vae_channels: tuple[int, ...] = (128, 256, 512, 512), device="meta"):
    from diffusers import AutoencoderKL, UNet2DConditionModel

    with torch.device(device):
        unet = UNet2DConditionModel(**layout.diffusers_config())
        vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=vae_channels,
                            down_block_types=("DownEncoderBlock2D",) * len(vae_channels),
                            up_block_types=("UpDecoderBlock2D",) * len(vae_channels), layers_per_block=2,
                            scaling_factor=SCALE_FACTOR)
    return unet, vae


def load_unclip_checkpoint(path: str | Path, layout: UNetLayout | None = None,
                           vae_channels: tuple[int, ...] = (128, 256, 512, 512)) -> UnclipReconstructor:
    """The published sgm ``.ckpt`` -> a reconstructor; the bigG image tower inside the file is not loaded."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: unCLIP checkpoint not found (fetch it with: rtdecode models download unclip)")
    ckpt = load_checkpoint(path, ("state_dict",))  # a Lightning file's callbacks and loops are never run
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a dict with 'state_dict', got {type(ckpt).__name__}")
    layout = layout or UNetLayout()
    unet, vae = build_modules(layout, vae_channels)
    unet.load_state_dict(convert_unet({k: v for k, v in state.items() if k.startswith("model.diffusion_model.")},
                                      layout), strict=True, assign=True)
    vae_state = convert_vae({k: v for k, v in state.items() if k.startswith("first_stage_model.")},
                            levels=len(vae_channels))
    vae_state = {k: v for k, v in vae_state.items() if not k.startswith(("encoder.", "quant_conv."))}
    missing, unexpected = vae.load_state_dict(vae_state, strict=False, assign=True)
    needed = [k for k in missing if not k.startswith(("encoder.", "quant_conv."))]
    if needed or unexpected:
        raise ValueError(f"{path}: VAE decoder weights do not match: missing {needed[:5]}, unexpected {unexpected[:5]}")
    vae.encoder = None  # reconstruction only decodes; the encoder was never loaded
    vae.quant_conv = None
    return UnclipReconstructor(unet, vae)


def convert_unclip(src: str | Path, dst: str | Path, layout: UNetLayout | None = None,
                   vae_channels: tuple[int, ...] = (128, 256, 512, 512)) -> Path:
    """Published ``.ckpt`` -> ``dst/unet`` (diffusers folder) and ``dst/vae/decoder.safetensors``."""
    from safetensors.torch import save_file

    rec = load_unclip_checkpoint(src, layout, vae_channels)
    dst = Path(dst)
    rec.unet.save_pretrained(dst / "unet")
    (dst / "vae").mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in rec.vae.state_dict().items()}, str(dst / "vae" / "decoder.safetensors"))
    return dst


def load_converted(folder: str | Path, vae_channels: tuple[int, ...] = (128, 256, 512, 512),
                   dtype: torch.dtype = torch.float32, device: str = "cpu") -> UnclipReconstructor:
    """A folder written by :func:`convert_unclip`."""
    from diffusers import UNet2DConditionModel
    from safetensors.torch import load_file

    folder = Path(folder)
    unet = UNet2DConditionModel.from_pretrained(str(folder / "unet"), torch_dtype=dtype).to(device)
    _, vae = build_modules(UNetLayout(), vae_channels, device="meta")
    vae.encoder = None
    vae.quant_conv = None
    vae.load_state_dict(load_file(str(folder / "vae" / "decoder.safetensors"), device=device), strict=True, assign=True)
    return UnclipReconstructor(unet, vae if dtype == torch.float32 else vae.to(dtype))
