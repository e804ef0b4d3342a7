"""The published MindEye2 training losses, as pure functions of tensors (facts: mindeye2.md section 2)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from models.devices import to_device


def mixco(voxels: torch.Tensor, rng: np.random.Generator, beta: float = 0.15,
          s_thresh: float = 0.5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """MixCo on raw voxels: each sample mixed (p = s_thresh) with a shuffled partner, lambda ~ Beta(.15, .15).

    Returns (mixed voxels, permutation, per-sample weight of the sample itself; 1 where unmixed).
    Callers mixing a multi-subject batch pass one subject at a time, so each permutation stays inside
    its subject (the published code concatenated per-subject permutations without offsets: fixed here).
    The draws come from ``rng`` so that every process of a distributed run mixes the same global batch.
    """
    n = voxels.shape[0]
    perm = to_device(torch.from_numpy(rng.permutation(n)), voxels.device)
    lam = rng.beta(beta, beta, size=n)
    lam = np.where(rng.random(n) <= s_thresh, lam, 1.0)
    lam = to_device(torch.from_numpy(lam), voxels.device, voxels.dtype)
    return mix_rows(voxels, perm, lam), perm, lam


def mix_rows(x: torch.Tensor, perm: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """Row i becomes lam_i * x_i + (1 - lam_i) * x_perm(i), for rows of any shape (voxels, VAE latents)."""
    w = lam.to(x.dtype).reshape([-1] + [1] * (x.ndim - 1))
    return x * w + x[perm] * (1 - w)


def mixco_nce(preds: torch.Tensor, targets: torch.Tensor, perm: torch.Tensor, lam: torch.Tensor,
              temp: float = 0.006) -> torch.Tensor:
    """BiMixCo: contrastive loss with soft labels from the mixing weights, both directions."""
    sim = preds @ targets.T / temp
    probs = torch.diag(lam)
    probs[torch.arange(len(preds), device=preds.device), perm] += 1 - lam
    forward = -(sim.log_softmax(-1) * probs).sum(-1).mean()
    backward = -(sim.T.log_softmax(-1) * probs.T).sum(-1).mean()
    return (forward + backward) / 2


def soft_clip_loss(preds: torch.Tensor, targets: torch.Tensor, temp: float) -> torch.Tensor:
    """SoftCLIP: cross-entropy against the target-target similarity distribution, both directions."""
    target_sim = (targets @ targets.T / temp).softmax(-1)
    sim = preds @ targets.T / temp
    return (-(sim.log_softmax(-1) * target_sim).sum(-1).mean() - (sim.T.log_softmax(-1) * target_sim).sum(-1).mean()) / 2


def soft_temperatures(steps: int, start: float = 0.004, end: float = 0.0075) -> torch.Tensor:
    """SoftCLIP's temperature per step: cosine-annealed from ``start`` to ``end``, as published."""
    steps = max(steps, 2)
    return end + (start - end) / 2 * (1 + torch.cos(torch.pi * torch.arange(steps) / (steps - 1)))


def flat_unit(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x.flatten(1), dim=-1)
