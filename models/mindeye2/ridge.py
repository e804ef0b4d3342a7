"""Per-subject linear maps from voxels to the shared hidden space (``ridge.linears.{i}``)."""

from __future__ import annotations

import torch
from torch import nn


class RidgeRegression(nn.Module):
    """One Linear(n_voxels_i, hidden) per subject; input (B, seq, V_i) -> (B, seq, hidden)."""

    def __init__(self, voxels: list[int], hidden: int) -> None:
        super().__init__()
        self.linears = nn.ModuleList([nn.Linear(v, hidden) for v in voxels])

    def forward(self, x: torch.Tensor, subject: int) -> torch.Tensor:
        linear = self.linears[subject]
        if x.shape[-1] != linear.in_features:
            raise ValueError(f"ridge {subject} expects {linear.in_features} voxels, got {x.shape[-1]}")
        return linear(x)

    def add_subject(self, n_voxels: int) -> int:
        """A fresh ridge for a new subject (fine-tuning); returns its index."""
        hidden = self.linears[0].out_features
        ref = self.linears[0].weight
        self.linears.append(nn.Linear(n_voxels, hidden, device=ref.device, dtype=ref.dtype))
        return len(self.linears) - 1
