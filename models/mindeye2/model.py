"""The whole MindEye2 model: per-subject ridge, shared backbone, diffusion prior."""

from __future__ import annotations

import torch
from torch import nn

from models.mindeye2.backbone import BrainNetwork
from models.mindeye2.config import MindEye2Config
from models.mindeye2.prior import BrainDiffusionPrior
from models.mindeye2.ridge import RidgeRegression


class MindEye2(nn.Module):
    """Children ``ridge``, ``backbone``, ``diffusion_prior``: the published checkpoints' top level."""

    def __init__(self, config: MindEye2Config) -> None:
        super().__init__()
        self.config = config
        self.ridge = RidgeRegression(config.voxels, config.hidden)
        self.backbone = BrainNetwork(config)
        self.diffusion_prior = BrainDiffusionPrior(
            dim=config.clip_dim, depth=config.prior_depth, dim_head=config.prior_dim_head, heads=config.prior_heads,
            num_tokens=config.clip_tokens, timesteps=config.prior_timesteps)

    def forward(self, voxels: torch.Tensor, subject: int | str):
        """Voxels (B, V) or (B, seq, V) of one subject -> (backbone tokens, retrieval tokens, blurry)."""
        index = self.config.subject_index(subject) if isinstance(subject, str) else subject
        if voxels.ndim == 2:
            voxels = voxels[:, None, :]
        return self.backbone(self.ridge(voxels, index))

    def activation_checkpointing(self, on: bool = True) -> MindEye2:
        """Recompute the backbone's mixer blocks and the prior's layers in backward instead of keeping their
        activations (training only): the same gradients for less memory and one more forward's time."""
        for module in self.modules():
            if hasattr(module, "checkpointing"):
                module.checkpointing = on
        return self

    def add_subject(self, name: str, n_voxels: int) -> int:
        """A fresh ridge for a new subject (fine-tuning a pretrained model); returns its index."""
        if name in self.config.subjects:
            raise ValueError(f"subject {name!r} already has ridge {self.config.subjects.index(name)}")
        index = self.ridge.add_subject(n_voxels)
        self.config.subjects.append(name)
        self.config.voxels.append(n_voxels)
        return index
