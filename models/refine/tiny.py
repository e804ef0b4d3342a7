"""A tiny SDXL in the diffusers layout, for tests and for trying the refinement path on a CPU: the UNet with
SDXL's text-and-time conditioning, a VAE, two CLIP text encoders (the second with a projection) and their
tokenizers, seeded random weights, saved as ``save_pretrained`` writes SDXL base. Its pictures mean
nothing; the layout, the loading and the path are real.
"""

from __future__ import annotations

import string
from pathlib import Path

import torch

from models.refine.refiner import SETTINGS, RefineSettings

TEXT_WIDTH, PROJECTION, TIME_WIDTH = 16, 24, 8


def _tokenizer():
    """A CLIP BPE tokenizer over single letters (no merges): every word is spelt out."""
    from transformers import CLIPTokenizer

    pieces = ["<|startoftext|>", "<|endoftext|>"] + list(string.ascii_lowercase + string.digits + ",.")
    pieces += [p + "</w>" for p in string.ascii_lowercase + string.digits + ",."]
    return CLIPTokenizer(vocab={p: i for i, p in enumerate(pieces)}, merges=[], model_max_length=77)


def _text_encoder(vocab: int, projection: bool, seed: int):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(vocab_size=vocab, hidden_size=TEXT_WIDTH, intermediate_size=20, num_hidden_layers=2,
                            num_attention_heads=2, max_position_embeddings=77, projection_dim=PROJECTION,
                            bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_act="gelu")
    torch.manual_seed(seed)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config).eval()


def make_tiny_sdxl(seed: int = 0):
    """StableDiffusionXLImg2ImgPipeline with tiny seeded components (latents at 1/4 of the image side)."""
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionXLImg2ImgPipeline,
        UNet2DConditionModel,
    )

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(16, 32), layers_per_block=1, sample_size=16, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=TIME_WIDTH, transformer_layers_per_block=(1, 1),
        projection_class_embeddings_input_dim=PROJECTION + 6 * TIME_WIDTH, cross_attention_dim=2 * TEXT_WIDTH,
        norm_num_groups=8)
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(block_out_channels=(8, 16, 16), in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                        norm_num_groups=8, sample_size=64)
    # SDXL base's own scheduler configuration; the refiner switches it to MindEye2's spacing.
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       steps_offset=1, timestep_spacing="leading", prediction_type="epsilon")
    tokenizer = _tokenizer()
    return StableDiffusionXLImg2ImgPipeline(
        vae=vae, text_encoder=_text_encoder(len(tokenizer), False, seed + 2), text_encoder_2=_text_encoder(
            len(tokenizer), True, seed + 3), tokenizer=tokenizer, tokenizer_2=_tokenizer(), unet=unet,
        scheduler=scheduler, requires_aesthetics_score=False, force_zeros_for_empty_prompt=True)


def write_tiny_refiner(folder: str | Path, seed: int = 0, size: int = 32) -> Path:
    """A diffusers-layout folder :meth:`Refiner.from_folder` loads, refining at ``size`` px (MindEye2's
    other settings: 25 steps, the last 12, guidance 5, the blend)."""
    folder = Path(folder)
    make_tiny_sdxl(seed).save_pretrained(str(folder), safe_serialization=True)
    RefineSettings(size=size, original_size=size, target_size=size).to_json(folder / SETTINGS)
    return folder
