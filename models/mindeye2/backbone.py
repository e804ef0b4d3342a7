"""The MindEye2 backbone: mixer blocks, backbone tokens, retrieval head and the blurry branch.

Key names match the published checkpoints (``backbone.mixer_blocks1.0.1.3.weight`` ...). With the
published seq_len of 1, ``mixer_blocks2`` normalises over a size-1 axis, so each of those blocks adds
an input-independent constant in eval mode, and ``mixer_blocks1``'s output is replaced by the second
residual path: the mixer's output is the ridge output plus the sum of those constants. The layers are
kept and evaluated exactly as published so checkpoints load and outputs match.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from models.mindeye2.config import MindEye2Config


def _mlp(dim: int, drop: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Dropout(drop), nn.Linear(dim, dim))


def _projector(dim: int) -> nn.Sequential:
    return nn.Sequential(nn.LayerNorm(dim), nn.GELU(), nn.Linear(dim, dim), nn.LayerNorm(dim), nn.GELU(),
                         nn.Linear(dim, dim), nn.LayerNorm(dim), nn.GELU(), nn.Linear(dim, dim))


class BrainNetwork(nn.Module):
    """(B, seq, hidden) ridge output -> (backbone tokens, retrieval tokens, (blurry latent, aux maps))."""

    def __init__(self, config: MindEye2Config) -> None:
        super().__init__()
        c = config
        self.config = c
        self.checkpointing = False  # see MindEye2.activation_checkpointing
        self.mixer_blocks1 = nn.ModuleList(
            [nn.Sequential(nn.LayerNorm(c.hidden), _mlp(c.hidden, c.drop)) for _ in range(c.n_blocks)])
        self.mixer_blocks2 = nn.ModuleList(
            [nn.Sequential(nn.LayerNorm(c.seq_len), _mlp(c.seq_len, c.drop)) for _ in range(c.n_blocks)])
        self.backbone_linear = nn.Linear(c.hidden * c.seq_len, c.clip_tokens * c.clip_dim)
        self.clip_proj = _projector(c.clip_dim)
        if c.blurry:
            from diffusers.models.autoencoders.vae import Decoder

            self.blin1 = nn.Linear(c.hidden * c.seq_len, 4 * 28 * 28)
            self.bdropout = nn.Dropout(0.3)
            self.bnorm = nn.GroupNorm(1, 64)
            self.bupsampler = Decoder(in_channels=64, out_channels=4, up_block_types=["UpDecoderBlock2D"] * 3,
                                      block_out_channels=list(c.blurry_channels), layers_per_block=1)
            self.b_maps_projector = nn.Sequential(
                nn.Conv2d(64, 512, 1, bias=False), nn.GroupNorm(1, 512), nn.ReLU(True),
                nn.Conv2d(512, 512, 1, bias=False), nn.GroupNorm(1, 512), nn.ReLU(True),
                nn.Conv2d(512, 512, 1, bias=True))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        residual1 = x
        residual2 = x.permute(0, 2, 1)
        recompute = self.checkpointing and self.training and torch.is_grad_enabled()
        for block1, block2 in zip(self.mixer_blocks1, self.mixer_blocks2, strict=True):
            # Activation checkpointing recomputes each block in backward instead of keeping its activations.
            x = checkpoint(block1, x, use_reentrant=False) + residual1 if recompute else block1(x) + residual1
            residual1 = x
            x = x.permute(0, 2, 1)
            x = checkpoint(block2, x, use_reentrant=False) + residual2 if recompute else block2(x) + residual2
            residual2 = x
            x = x.permute(0, 2, 1)
        x = x.reshape(x.shape[0], -1)
        backbone = self.backbone_linear(x).reshape(len(x), -1, self.config.clip_dim)
        clip = self.clip_proj(backbone)
        if not self.config.blurry:
            zero = torch.zeros((), device=x.device, dtype=x.dtype)
            return backbone, clip, (zero, zero)
        b = self.bdropout(self.blin1(x))
        b = self.bnorm(b.reshape(b.shape[0], -1, 7, 7).contiguous())
        aux = self.b_maps_projector(b).flatten(2).permute(0, 2, 1).reshape(len(b), 49, 512)
        return backbone, clip, (self.bupsampler(b), aux)
