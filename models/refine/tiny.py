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
from models.unclip.convert import UNetLayout

# the two text encoders differ in width, as SDXL's (768, 1280) do: diffusers tells them apart by it
TEXT_WIDTHS, PROJECTION, TIME_WIDTH = (16, 20), 24, 8
# SDXL's UNet at a few hundred kilobytes, in the layout models.unclip converts to and from sgm's names
TINY_UNET = UNetLayout(channels=(32, 64), layers_per_block=1, attention_levels=(False, True), transformer_depth=(1, 1),
                       head_channels=8, context_dim=sum(TEXT_WIDTHS), adm_in_channels=PROJECTION + 6 * TIME_WIDTH,
                       time_embed_dim_per_value=TIME_WIDTH, sample_size=16)


def _tokenizer():
    """A CLIP BPE tokenizer over single letters (no merges): every word is spelt out."""
    from transformers import CLIPTokenizer

    pieces = ["<|startoftext|>", "<|endoftext|>"] + list(string.ascii_lowercase + string.digits + ",.")
    pieces += [p + "</w>" for p in string.ascii_lowercase + string.digits + ",."]
    return CLIPTokenizer(vocab={p: i for i, p in enumerate(pieces)}, merges=[], model_max_length=77)


def _text_encoder(vocab: int, projection: bool, seed: int):
    width = TEXT_WIDTHS[int(projection)]
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(vocab_size=vocab, hidden_size=width, intermediate_size=20, num_hidden_layers=2,
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
    unet = UNet2DConditionModel(**TINY_UNET.diffusers_config())
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


def _open_clip_names(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """transformers' CLIPTextModelWithProjection weights -> OpenCLIP's names, as SDXL's single file holds
    its second text encoder (q, k and v joined into ``in_proj``; the projection stored transposed)."""
    fixed = {"text_model.embeddings.position_embedding.weight": "positional_embedding",
             "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
             "text_model.final_layer_norm.weight": "ln_final.weight", "text_model.final_layer_norm.bias": "ln_final.bias"}
    parts = (("layer_norm1.", "ln_1."), ("layer_norm2.", "ln_2."), ("mlp.fc1.", "mlp.c_fc."), ("mlp.fc2.", "mlp.c_proj."),
             ("self_attn.out_proj.", "attn.out_proj."))
    out = {prefix + "text_projection": state["text_projection.weight"].T.contiguous()}
    out.update({prefix + new: state[old] for old, new in fixed.items()})
    layers = sorted({int(k.split(".")[3]) for k in state if k.startswith("text_model.encoder.layers.")})
    for i in layers:
        here, there = f"text_model.encoder.layers.{i}.", f"{prefix}transformer.resblocks.{i}."
        for key, value in state.items():
            rest = key[len(here):] if key.startswith(here) else None
            for old, new in parts if rest is not None else ():
                if rest.startswith(old):
                    out[there + new + rest[len(old):]] = value
        for kind in ("weight", "bias"):
            out[f"{there}attn.in_proj_{kind}"] = torch.cat([state[f"{here}self_attn.{p}_proj.{kind}"] for p in "qkv"])
    return out


def write_tiny_single_file(path: str | Path, seed: int = 0) -> Path:
    """The tiny SDXL of ``seed`` as one ``.safetensors`` in SDXL's original (sgm) layout, the layout of the
    published ``sd_xl_base_1.0.safetensors``: ``model.diffusion_model.*``, ``first_stage_model.*``,
    ``conditioner.embedders.0.transformer.text_model.*`` and ``conditioner.embedders.1.model.*``."""
    from safetensors.torch import save_file

    from models.unclip.convert import to_sgm_unet, to_sgm_vae

    pipe = make_tiny_sdxl(seed)
    state = {**to_sgm_unet(pipe.unet.state_dict(), TINY_UNET), **to_sgm_vae(pipe.vae.state_dict(), levels=3, blocks=1)}
    state.update({f"conditioner.embedders.0.transformer.text_model.{k}": v
                  for k, v in pipe.text_encoder.state_dict().items()})
    state.update(_open_clip_names(pipe.text_encoder_2.state_dict(), "conditioner.embedders.1.model."))
    path = Path(path)
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path
