"""The published SDXL unCLIP checkpoint (sgm layout) -> diffusers module state dicts. Pure functions.

The sgm file (``unclip6_epoch0_step110000.ckpt``) holds ``state_dict`` with
``model.diffusion_model.*`` (the UNet), ``first_stage_model.*`` (the VAE) and ``conditioner.*`` (the
OpenCLIP bigG vision tower that turns *images* into tokens). Reconstruction from brain tokens needs
only the UNet and the VAE decoder, so the conditioner is dropped: that is most of the 24 GB saving.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."

UNET_FIXED = {  # sgm -> diffusers, blocks that are not repeated
    "time_embed.0": "time_embedding.linear_1",
    "time_embed.2": "time_embedding.linear_2",
    "label_emb.0.0": "add_embedding.linear_1",
    "label_emb.0.2": "add_embedding.linear_2",
    "input_blocks.0.0": "conv_in",
    "out.0": "conv_norm_out",
    "out.2": "conv_out",
}
RESNET_PARTS = {  # inside a residual block
    "in_layers.0": "norm1", "in_layers.2": "conv1", "emb_layers.1": "time_emb_proj",
    "out_layers.0": "norm2", "out_layers.3": "conv2", "skip_connection": "conv_shortcut",
}


@dataclass(frozen=True)
class UNetLayout:
    """What the sgm config says about the UNet; the published unCLIP's values are the defaults."""

    channels: tuple[int, ...] = (320, 640, 1280)
    layers_per_block: int = 2
    attention_levels: tuple[bool, ...] = (False, True, True)
    transformer_depth: tuple[int, ...] = (1, 2, 10)
    head_channels: int = 64
    context_dim: int = 1664
    adm_in_channels: int = 1024
    time_embed_dim_per_value: int = 256  # each size/crop number is embedded in 256 sinusoidal features
    sample_size: int = 96  # latent side for 768 px images

    def diffusers_config(self) -> dict:
        """Arguments for ``diffusers.UNet2DConditionModel``."""
        down = ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in self.attention_levels]
        up = ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(self.attention_levels)]
        return dict(
            sample_size=self.sample_size, in_channels=4, out_channels=4, down_block_types=tuple(down),
            up_block_types=tuple(up), mid_block_type="UNetMidBlock2DCrossAttn", block_out_channels=self.channels,
            layers_per_block=self.layers_per_block, transformer_layers_per_block=self.transformer_depth,
            attention_head_dim=tuple(c // self.head_channels for c in self.channels),  # diffusers: number of heads
            cross_attention_dim=self.context_dim, use_linear_projection=True, addition_embed_type="text_time",
            addition_time_embed_dim=self.time_embed_dim_per_value,
            projection_class_embeddings_input_dim=self.adm_in_channels, norm_num_groups=32,
        )

    def to_dict(self) -> dict:
        return asdict(self)


def _unet_prefix_map(layout: UNetLayout) -> dict[str, str]:
    """sgm block prefixes -> diffusers block prefixes for this layout (resnets map their parts too)."""
    out = dict(UNET_FIXED)
    n, r = len(layout.channels), layout.layers_per_block
    index = 1
    for level in range(n):
        for j in range(r):
            out[f"input_blocks.{index}.0"] = f"down_blocks.{level}.resnets.{j}"
            if layout.attention_levels[level]:
                out[f"input_blocks.{index}.1"] = f"down_blocks.{level}.attentions.{j}"
            index += 1
        if level < n - 1:
            out[f"input_blocks.{index}.0.op"] = f"down_blocks.{level}.downsamplers.0.conv"
            index += 1
    out["middle_block.0"] = "mid_block.resnets.0"
    out["middle_block.1"] = "mid_block.attentions.0"
    out["middle_block.2"] = "mid_block.resnets.1"
    index = 0
    for up in range(n):
        level = n - 1 - up
        for j in range(r + 1):
            out[f"output_blocks.{index}.0"] = f"up_blocks.{up}.resnets.{j}"
            has_attn = layout.attention_levels[level]
            if has_attn:
                out[f"output_blocks.{index}.1"] = f"up_blocks.{up}.attentions.{j}"
            if j == r and up < n - 1:
                out[f"output_blocks.{index}.{2 if has_attn else 1}.conv"] = f"up_blocks.{up}.upsamplers.0.conv"
            index += 1
    return out


def convert_unet(state: dict[str, torch.Tensor], layout: UNetLayout | None = None) -> dict[str, torch.Tensor]:
    """sgm UNet weights (with or without the ``model.diffusion_model.`` prefix) -> diffusers names.

    Every key must be mapped and every target filled once: an unexpected layout is an error, not a
    silently half-converted model.
    """
    layout = layout or UNetLayout()
    weights = {k[len(UNET_PREFIX):] if k.startswith(UNET_PREFIX) else k: v for k, v in state.items()
               if k.startswith(UNET_PREFIX) or not k.startswith(("first_stage_model.", "conditioner.", "denoiser."))}
    prefixes = sorted(_unet_prefix_map(layout).items(), key=lambda kv: -len(kv[0]))
    out: dict[str, torch.Tensor] = {}
    for key, value in weights.items():
        for old, new in prefixes:
            if key == old or key.startswith(old + "."):
                rest = key[len(old):]
                if ".resnets." in new or new.startswith("mid_block.resnets"):
                    for part_old, part_new in RESNET_PARTS.items():
                        if rest.startswith("." + part_old + "."):
                            rest = "." + part_new + rest[len(part_old) + 1:]
                            break
                target = new + rest
                break
        else:
            raise KeyError(f"unCLIP UNet key {key!r} has no counterpart in the diffusers layout {layout}")
        if target in out:
            raise KeyError(f"two unCLIP keys map to {target!r}")
        out[target] = value
    return out


VAE_FIXED = {
    "quant_conv": "quant_conv", "post_quant_conv": "post_quant_conv",
    "encoder.conv_in": "encoder.conv_in", "encoder.conv_out": "encoder.conv_out",
    "encoder.norm_out": "encoder.conv_norm_out", "decoder.conv_in": "decoder.conv_in",
    "decoder.conv_out": "decoder.conv_out", "decoder.norm_out": "decoder.conv_norm_out",
}
VAE_ATTENTION = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}


def _vae_table(levels: int, blocks: int) -> dict[str, str]:
    """LDM block prefixes -> diffusers block prefixes for an AutoencoderKL of ``levels`` resolutions."""
    table = dict(VAE_FIXED)
    for side in ("encoder", "decoder"):
        table[f"{side}.mid.block_1"] = f"{side}.mid_block.resnets.0"
        table[f"{side}.mid.block_2"] = f"{side}.mid_block.resnets.1"
        for old, new in VAE_ATTENTION.items():
            table[f"{side}.mid.attn_1.{old}"] = f"{side}.mid_block.attentions.0.{new}"
    for i in range(levels):
        for j in range(blocks):
            table[f"encoder.down.{i}.block.{j}"] = f"encoder.down_blocks.{i}.resnets.{j}"
        table[f"encoder.down.{i}.downsample.conv"] = f"encoder.down_blocks.{i}.downsamplers.0.conv"
        for j in range(blocks + 1):  # diffusers counts the decoder's levels from the lowest resolution
            table[f"decoder.up.{i}.block.{j}"] = f"decoder.up_blocks.{levels - 1 - i}.resnets.{j}"
        table[f"decoder.up.{i}.upsample.conv"] = f"decoder.up_blocks.{levels - 1 - i}.upsamplers.0.conv"
    return table


def convert_vae(state: dict[str, torch.Tensor], levels: int = 4, blocks: int = 2) -> dict[str, torch.Tensor]:
    """LDM/sgm AutoencoderKL weights (``first_stage_model.*`` or bare) -> diffusers AutoencoderKL names.

    Attention projections are 1x1 convolutions in LDM and linear layers in diffusers.
    """
    weights = {k[len(VAE_PREFIX):]: v for k, v in state.items() if k.startswith(VAE_PREFIX)} or dict(state)
    prefixes = sorted(_vae_table(levels, blocks).items(), key=lambda kv: -len(kv[0]))
    out = {}
    for key, value in weights.items():
        try:
            target = _rename(key, prefixes).replace(".nin_shortcut.", ".conv_shortcut.")
        except KeyError:
            raise KeyError(f"VAE key {key!r} has no counterpart in the diffusers AutoencoderKL layout") from None
        if ".attentions.0.to_" in target and value.ndim == 4:
            value = value[:, :, 0, 0]  # 1x1 conv -> linear
        out[target] = value
    return out


def _rename(key: str, table: list[tuple[str, str]]) -> str:
    for old, new in table:
        if key == old or key.startswith(old + "."):
            return new + key[len(old):]
    raise KeyError(key)


def to_sgm_unet(state: dict[str, torch.Tensor], layout: UNetLayout | None = None) -> dict[str, torch.Tensor]:
    """diffusers UNet weights -> the sgm names, prefixed as in the published file (for tiny test files)."""
    layout = layout or UNetLayout()
    inverse = sorted(((new, old) for old, new in _unet_prefix_map(layout).items()), key=lambda kv: -len(kv[0]))
    parts = {new: old for old, new in RESNET_PARTS.items()}
    out = {}
    for key, value in state.items():
        target = _rename(key, inverse)
        if ".resnets." in key:
            part = key.partition(".resnets.")[2].split(".")[1]  # the part after the resnet's index
            if part in parts:
                target = target.replace(f".{part}.", f".{parts[part]}.", 1)
        out[UNET_PREFIX + target] = value
    return out


def to_sgm_vae(state: dict[str, torch.Tensor], levels: int = 4, blocks: int = 2) -> dict[str, torch.Tensor]:
    """diffusers AutoencoderKL weights -> LDM names under ``first_stage_model.`` (for tiny test files)."""
    inverse = sorted(((new, old) for old, new in _vae_table(levels, blocks).items()), key=lambda kv: -len(kv[0]))
    out = {}
    for key, value in state.items():
        if ".attentions.0.to_" in key and value.ndim == 2:
            value = value[:, :, None, None]  # linear -> 1x1 conv
        out[VAE_PREFIX + _rename(key, inverse).replace(".conv_shortcut.", ".nin_shortcut.")] = value
    return out
