"""Refinement's work counted at full size on the meta device (models.projection): no weights, no GPU.

SDXL base 1.0's published sizes: the UNet (channels 320/640/1280, transformer depth 1/2/10, context 2048,
added conditioning 2816), the VAE (128/256/512/512), CLIP ViT-L's text encoder and OpenCLIP bigG's (with
its projection). One refinement at MindEye2's settings: both prompts encoded once (caption and negative),
the 768 px reconstruction encoded, ``last_steps`` UNet passes at batch 2 (guidance), one VAE decode.
"""

from __future__ import annotations

import torch

from models.projection import count_flops, param_bytes
from models.refine.refiner import RefineSettings

CLIP_L_TEXT = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
               "max_position_embeddings": 77, "vocab_size": 49408, "projection_dim": 768}
BIGG_TEXT = {"hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32, "num_attention_heads": 20,
             "max_position_embeddings": 77, "vocab_size": 49408, "projection_dim": 1280, "hidden_act": "gelu"}


def sdxl_modules(device: str = "meta"):
    """(unet, vae, text_encoder, text_encoder_2) of SDXL base's sizes, on ``device``."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from models.unclip.convert import UNetLayout
    from models.unclip.pipeline import build_modules

    unet, vae = build_modules(UNetLayout(context_dim=2048, adm_in_channels=2816, sample_size=128), device=device)
    with torch.device(device):
        text = CLIPTextModel(CLIPTextConfig(**CLIP_L_TEXT)).eval()
        text_2 = CLIPTextModelWithProjection(CLIPTextConfig(**BIGG_TEXT)).eval()
    return unet.eval(), vae.eval(), text, text_2


def refine_rows(settings: RefineSettings | None = None) -> dict:
    """(name, FLOPs, bytes moved) rows for one refinement, and the bf16 weights SDXL holds."""
    s = settings or RefineSettings()
    unet, vae, text, text_2 = sdxl_modules()
    side = s.size // 8
    with torch.no_grad():
        ids = torch.zeros(2, 77, dtype=torch.long, device="meta")
        prompts = count_flops(lambda: (text(ids), text_2(ids)))
        encode = count_flops(lambda: vae.encode(torch.zeros(1, 3, s.size, s.size, device="meta")))
        latents = torch.zeros(2, 4, side, side, device="meta")
        cond = {"text_embeds": torch.zeros(2, 1280, device="meta"), "time_ids": torch.zeros(2, 6, device="meta")}
        step = count_flops(lambda: unet(latents, torch.zeros(2, device="meta"),
                                        encoder_hidden_states=torch.zeros(2, 77, 2048, device="meta"),
                                        added_cond_kwargs=cond))
        decode = count_flops(lambda: vae.decode(torch.zeros(1, 4, side, side, device="meta")))
    unet_b, vae_b, text_b = param_bytes(unet), param_bytes(vae), param_bytes(text) + param_bytes(text_2)
    rows = [("SDXL text encoders, caption + negative prompt", prompts, text_b),
            (f"SDXL VAE encode of the {s.size} px reconstruction", encode, vae_b),
            (f"SDXL UNet, one step with CFG (batch 2, {side} x {side} latent)", step, unet_b),
            (f"SDXL UNet, the last {s.last_steps} of {s.steps} steps", s.last_steps * step, s.last_steps * unet_b),
            (f"SDXL VAE decode to {s.size} px", decode, vae_b)]
    total = prompts + encode + s.last_steps * step + decode
    rows.append(("refinement, all of it", total, text_b + 2 * vae_b + s.last_steps * unet_b))
    weights = unet_b + vae_b + text_b
    return {"rows": rows, "weights_bf16_gb": weights / 1e9, "params": weights // 2}


def random_refiner(device: torch.device | str, dtype: torch.dtype, seed: int = 0, tiny: bool = False):
    """A Refiner of SDXL base's sizes (or the tiny test sizes) with seeded random weights made on ``device``,
    MindEye2's settings, for timing and memory (``rtdecode bench gpu``). Its pictures mean nothing."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLImg2ImgPipeline

    from models.refine.refiner import Refiner
    from models.refine.tiny import _tokenizer, make_tiny_sdxl

    if tiny:
        torch.manual_seed(seed)
        return Refiner(make_tiny_sdxl(seed).to(device, dtype), RefineSettings(size=32, original_size=32, target_size=32))
    torch.manual_seed(seed)  # made and initialised on the device (sdxl_modules builds there), then cast
    unet, vae, text, text_2 = (m.to(dtype) for m in sdxl_modules(device))
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       steps_offset=1, timestep_spacing="leading", prediction_type="epsilon")
    pipe = StableDiffusionXLImg2ImgPipeline(vae=vae, text_encoder=text, text_encoder_2=text_2, tokenizer=_tokenizer(),
                                            tokenizer_2=_tokenizer(), unet=unet, scheduler=scheduler,
                                            requires_aesthetics_score=False, force_zeros_for_empty_prompt=True)
    return Refiner(pipe)
