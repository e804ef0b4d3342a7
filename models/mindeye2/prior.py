"""The diffusion prior: cosine-schedule DDPM over image tokens, predicting x0, sampled with DDIM.

Buffer names and values match the published checkpoints' ``diffusion_prior.noise_scheduler.*`` (they
are persistent there, so a strict load needs them). Sampling follows the published loop, including
its use of ``alphas_cumprod_prev`` as the DDIM alphas and its time grid
``linspace(-1, T, steps + 1)[:-1]`` truncated to integers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.mindeye2.prior_net import PriorNetwork


def cosine_betas(timesteps: int, s: float = 0.008) -> torch.Tensor:
    x = torch.linspace(0, timesteps, timesteps + 1, dtype=torch.float64)
    alphas_cumprod = torch.cos(((x / timesteps) + s) / (1 + s) * torch.pi * 0.5) ** 2
    alphas_cumprod = alphas_cumprod / alphas_cumprod[0]
    return torch.clip(1 - alphas_cumprod[1:] / alphas_cumprod[:-1], 0, 0.999)


class NoiseSchedule(nn.Module):
    """The 13 schedule buffers of the published prior, computed in float64 and stored as float32."""

    def __init__(self, timesteps: int = 100) -> None:
        super().__init__()
        betas = cosine_betas(timesteps)
        alphas = 1.0 - betas
        ac = torch.cumprod(alphas, dim=0)
        ac_prev = F.pad(ac[:-1], (1, 0), value=1.0)
        post_var = betas * (1.0 - ac_prev) / (1.0 - ac)
        values = {
            "betas": betas, "alphas_cumprod": ac, "alphas_cumprod_prev": ac_prev,
            "sqrt_alphas_cumprod": ac.sqrt(), "sqrt_one_minus_alphas_cumprod": (1.0 - ac).sqrt(),
            "log_one_minus_alphas_cumprod": torch.log(1.0 - ac), "sqrt_recip_alphas_cumprod": (1.0 / ac).sqrt(),
            "sqrt_recipm1_alphas_cumprod": (1.0 / ac - 1).sqrt(), "posterior_variance": post_var,
            "posterior_log_variance_clipped": torch.log(post_var.clamp(min=1e-20)),
            "posterior_mean_coef1": betas * ac_prev.sqrt() / (1.0 - ac),
            "posterior_mean_coef2": (1.0 - ac_prev) * alphas.sqrt() / (1.0 - ac),
            "p2_loss_weight": (1 + ac / (1 - ac)) ** -0.0,
        }
        for name, value in values.items():
            self.register_buffer(name, value.to(torch.float32))
        self.num_timesteps = timesteps

    @staticmethod
    def _at(values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return values.gather(-1, t).reshape(len(t), *([1] * (like.ndim - 1)))

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return self._at(self.sqrt_alphas_cumprod, t, x0) * x0 + self._at(self.sqrt_one_minus_alphas_cumprod, t, x0) * noise

    def noise_from_x0(self, xt: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        return (self._at(self.sqrt_recip_alphas_cumprod, t, xt) * xt - x0) / self._at(self.sqrt_recipm1_alphas_cumprod, t, xt)


@dataclass
class PriorDraws:
    """Timesteps, noise and condition-dropout masks for one batch (rows can be sliced per process)."""

    t: torch.Tensor
    noise: torch.Tensor
    keep_brain: torch.Tensor
    keep_image: torch.Tensor

    def __getitem__(self, rows) -> PriorDraws:
        return PriorDraws(self.t[rows], self.noise[rows], self.keep_brain[rows], self.keep_image[rows])

    def to(self, device, dtype) -> PriorDraws:
        return PriorDraws(self.t.to(device), self.noise.to(device, dtype), self.keep_brain.to(device),
                          self.keep_image.to(device))


class BrainDiffusionPrior(nn.Module):
    """``net`` (the transformer) and ``noise_scheduler`` (the buffers), as in the published layout."""

    def __init__(self, dim: int = 1664, depth: int = 6, dim_head: int = 52, heads: int = 32, num_tokens: int = 256,
                 timesteps: int = 100, cond_drop_prob: float = 0.2) -> None:
        super().__init__()
        self.net = PriorNetwork(dim, depth, dim_head, heads, num_tokens)
        self.noise_scheduler = NoiseSchedule(timesteps)
        self.cond_drop_prob = cond_drop_prob

    def draw(self, batch: int, shape: tuple[int, ...], generator: torch.Generator | None = None,
             device: torch.device | str | None = None) -> PriorDraws:
        """The random draws of one training batch, made on ``device`` (the generator's, else the CPU): every
        process repeats them from a seed, and on a GPU 10 M normals a step cost no host time or copy."""
        device = device if device is not None else generator.device if generator is not None else "cpu"
        kw = {"generator": generator, "device": device}
        return PriorDraws(torch.randint(0, self.noise_scheduler.num_timesteps, (batch,), **kw),
                          torch.randn((batch, *shape), **kw),
                          torch.rand(batch, **kw) >= self.cond_drop_prob,
                          torch.rand(batch, **kw) >= self.cond_drop_prob)

    def loss(self, image_embed: torch.Tensor, brain_embed: torch.Tensor, generator: torch.Generator | None = None,
             draws: PriorDraws | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Training: MSE between the predicted and the true clean tokens; returns (loss, prediction)."""
        if draws is None:
            draws = self.draw(len(image_embed), tuple(image_embed.shape[1:]), generator,
                              device=generator.device if generator is not None else image_embed.device)
        d = draws.to(image_embed.device, image_embed.dtype)
        noisy = self.noise_scheduler.q_sample(image_embed, d.t, d.noise)
        pred = self.net(noisy, d.t, brain_embed, d.keep_brain, d.keep_image)
        return F.mse_loss(pred, image_embed), pred

    @torch.no_grad()
    def sample(self, brain_embed: torch.Tensor, steps: int = 20, eta: float = 1.0,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """DDIM sampling of image tokens conditioned on ``brain_embed`` (B, T, D), as published."""
        sched = self.noise_scheduler
        total = sched.num_timesteps
        if not 0 < steps < total:
            raise ValueError(f"DDIM steps must be between 1 and {total - 1}, got {steps}")
        alphas = sched.alphas_cumprod_prev.float()  # sic: the published loop uses these as the DDIM alphas
        times = list(reversed(torch.linspace(-1.0, total, steps + 1)[:-1].int().tolist()))
        dtype = brain_embed.dtype  # the network's precision; the update itself runs in float32
        x = torch.randn(brain_embed.shape, device=brain_embed.device, generator=generator).float()
        x0 = x
        for time, time_next in zip(times[:-1], times[1:], strict=True):
            t = torch.full((len(x),), time, device=x.device, dtype=torch.long)
            x0 = self.net(x.to(dtype), t, brain_embed).float()
            if time_next < 0:
                x = x0
                continue
            pred_noise = sched.noise_from_x0(x, t, x0)
            alpha, alpha_next = alphas[time], alphas[time_next]
            c1 = eta * ((1 - alpha / alpha_next) * (1 - alpha_next) / (1 - alpha)).sqrt()
            c2 = ((1 - alpha_next) - c1 ** 2).sqrt()
            noise = torch.randn(x.shape, device=x.device, generator=generator) if time_next > 0 else 0.0
            x = x0 * alpha_next.sqrt() + c1 * noise + c2 * pred_noise
        return x.to(dtype)
