"""The MindEye2 diffusion prior's transformer (``diffusion_prior.net.*`` in the published checkpoints).

A non-causal transformer over [brain tokens | time token | noisy image tokens + learned positions];
the last ``num_tokens`` outputs are the predicted clean image tokens. Layer layout and numerics follow
the published network (dalle2-pytorch's prior blocks as MindEye2 configures them): gain-only layer
norms, multi-query cosine-similarity attention (scale 16) with a learned null key/value, T5-style
one-directional relative position buckets, rotary embeddings on the first 32 channels of each head,
SwiGLU feed-forward, a "stable" final norm and a bias-free output projection.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


class GainNorm(nn.Module):
    """LayerNorm with a gain and no bias (``.g``); eps 1e-5 in fp32, 1e-3 in half precision."""

    def __init__(self, dim: int, stable: bool = False) -> None:
        super().__init__()
        self.stable = stable
        self.g = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        eps = 1e-5 if x.dtype == torch.float32 else 1e-3
        if self.stable:
            x = x / x.amax(dim=-1, keepdim=True).detach()
        var = torch.var(x, dim=-1, unbiased=False, keepdim=True)
        mean = torch.mean(x, dim=-1, keepdim=True)
        return (x - mean) * (var + eps).rsqrt() * self.g


class Rotary(nn.Module):
    """Rotary position embedding on the first ``dim`` channels, pairs interleaved (``.freqs``)."""

    def __init__(self, dim: int = 32, theta: float = 10000.0) -> None:
        super().__init__()
        freqs = 1.0 / (theta ** (torch.arange(0, dim, 2)[: dim // 2].float() / dim))
        self.freqs = nn.Parameter(freqs, requires_grad=False)  # a parameter in the published layout

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        n = t.shape[-2]
        angles = torch.arange(n, device=t.device, dtype=self.freqs.dtype)[:, None] * self.freqs[None, :]
        angles = angles.repeat_interleave(2, dim=-1)  # (n, dim)
        rot = angles.shape[-1]
        head, tail = t[..., :rot], t[..., rot:]
        pairs = head.reshape(*head.shape[:-1], rot // 2, 2)
        rotated = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).reshape(head.shape)
        head = head * angles.cos().to(t.dtype) + rotated * angles.sin().to(t.dtype)
        return torch.cat((head, tail), dim=-1)


class RelPosBias(nn.Module):
    """T5-style buckets of how far a key lies *before* the query (later keys share bucket 0)."""

    def __init__(self, heads: int, num_buckets: int = 32, max_distance: int = 128) -> None:
        super().__init__()
        self.num_buckets, self.max_distance = num_buckets, max_distance
        self.relative_attention_bias = nn.Embedding(num_buckets, heads)

    def buckets(self, rel: torch.Tensor) -> torch.Tensor:
        n = torch.clamp(-rel, min=0)
        exact = self.num_buckets // 2
        large = exact + (torch.log(n.clamp(min=1).float() / exact) / math.log(self.max_distance / exact)
                         * (self.num_buckets - exact)).long()
        large = torch.clamp(large, max=self.num_buckets - 1)
        return torch.where(n < exact, n, large)

    def forward(self, i: int, j: int, device: torch.device) -> torch.Tensor:
        rel = torch.arange(j, device=device)[None, :] - torch.arange(i, device=device)[:, None]
        return self.relative_attention_bias(self.buckets(rel)).permute(2, 0, 1)  # (heads, i, j)


class Attention(nn.Module):
    def __init__(self, dim: int, dim_head: int, heads: int, rotary: Rotary, scale: float = 16.0) -> None:
        super().__init__()
        self.heads, self.scale = heads, scale
        self.norm = GainNorm(dim)
        self.null_kv = nn.Parameter(torch.randn(2, dim_head))
        self.to_q = nn.Linear(dim, dim_head * heads, bias=False)
        self.to_kv = nn.Linear(dim, dim_head * 2, bias=False)
        self.rotary_emb = rotary
        self.to_out = nn.Sequential(nn.Linear(dim_head * heads, dim, bias=False), GainNorm(dim))

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        x = self.norm(x)
        q = self.to_q(x).reshape(b, n, self.heads, -1).transpose(1, 2)  # (b, h, n, d)
        k, v = self.to_kv(x).chunk(2, dim=-1)  # one shared key/value head: (b, n, d)
        q, k = self.rotary_emb(q), self.rotary_emb(k)
        null_k, null_v = (t.expand(b, 1, -1) for t in self.null_kv.unbind(dim=-2))
        k, v = torch.cat((null_k, k), dim=-2), torch.cat((null_v, v), dim=-2)
        root = math.sqrt(self.scale)
        q, k = F.normalize(q, dim=-1) * root, F.normalize(k, dim=-1) * root
        # PyTorch's fused attention (flash or memory-efficient kernels on a GPU): softmax(q k^T + bias) v, the
        # published einsum-and-softmax written as one call. q and k carry the scale already, so scale=1.
        h = self.heads
        out = F.scaled_dot_product_attention(q, k[:, None].expand(b, h, -1, -1), v[:, None].expand(b, h, -1, -1),
                                             attn_mask=bias.to(q.dtype), scale=1.0)
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))


class SwiGLU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, gate = x.chunk(2, dim=-1)
        return x * F.silu(gate)


def feed_forward(dim: int, mult: int = 4) -> nn.Sequential:
    inner = dim * mult
    return nn.Sequential(GainNorm(dim), nn.Linear(dim, inner * 2, bias=False), SwiGLU(), nn.Identity(),
                         nn.Dropout(0.0), nn.Linear(inner, dim, bias=False))


class Transformer(nn.Module):
    def __init__(self, dim: int, depth: int, dim_head: int, heads: int) -> None:
        super().__init__()
        self.rel_pos_bias = RelPosBias(heads)
        rotary = Rotary(min(32, dim_head))
        self.layers = nn.ModuleList([nn.ModuleList([Attention(dim, dim_head, heads, rotary), feed_forward(dim)])
                                     for _ in range(depth)])
        self.norm = GainNorm(dim, stable=True)
        self.project_out = nn.Linear(dim, dim, bias=False)
        self.checkpointing = False  # recompute each layer in backward instead of keeping its activations

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[1]
        bias = self.rel_pos_bias(n, n + 1, x.device)  # +1: the null key sits in front
        recompute = self.checkpointing and self.training and torch.is_grad_enabled()
        for attn, ff in self.layers:
            if recompute:
                x = checkpoint(_layer, attn, ff, x, bias, use_reentrant=False)
            else:
                x = _layer(attn, ff, x, bias)
        return self.project_out(self.norm(x))


def _layer(attn: nn.Module, ff: nn.Module, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    x = attn(x, bias) + x
    return ff(x) + x


class SinusoidalTime(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        scale = math.log(10000) / (half - 1)
        freqs = torch.exp(torch.arange(half, device=t.device, dtype=t.dtype) * -scale)
        angles = t[:, None] * freqs[None, :]
        return torch.cat((angles.sin(), angles.cos()), dim=-1).type(t.dtype)


class TimeMLP(nn.Module):
    """dim -> 2 dim -> 2 dim -> dim with SiLU (``to_time_embeds.0.1.net.*``); runs in fp32 as published."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        hidden = 2 * dim
        self.net = nn.Sequential(nn.Sequential(nn.Linear(dim, hidden), nn.SiLU(), nn.Identity()),
                                 nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Identity()),
                                 nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.net[-1].weight.dtype
        # Published: always fp32 input (autocast then picks the matmul precision). With weights cast
        # to bf16/fp16 and no autocast, feed the weights' dtype instead.
        return self.net(x.float() if weight == torch.float32 else x.to(weight))


class PriorNetwork(nn.Module):
    """Predicts clean image tokens from noisy ones, the time step and brain tokens (all (B, T, D))."""

    def __init__(self, dim: int = 1664, depth: int = 6, dim_head: int = 52, heads: int = 32,
                 num_tokens: int = 256) -> None:
        super().__init__()
        self.dim, self.num_tokens = dim, num_tokens
        self.to_time_embeds = nn.Sequential(nn.Sequential(SinusoidalTime(dim), TimeMLP(dim)))
        self.learned_query = nn.Parameter(torch.randn(num_tokens, dim) * dim ** -0.5)
        self.causal_transformer = Transformer(dim, depth, dim_head, heads)
        self.null_brain_embeds = nn.Parameter(torch.randn(num_tokens, dim))
        self.null_image_embed = nn.Parameter(torch.randn(num_tokens, dim))

    def forward(self, image_embed: torch.Tensor, t: torch.Tensor, brain_embed: torch.Tensor,
                brain_keep: torch.Tensor | None = None, image_keep: torch.Tensor | None = None) -> torch.Tensor:
        """``brain_keep``/``image_keep``: (B,) booleans; False swaps in the null embedding (guidance, training)."""
        if brain_keep is not None:
            brain_embed = torch.where(brain_keep[:, None, None], brain_embed,
                                      self.null_brain_embeds.to(brain_embed.dtype)[None])
        if image_keep is not None:
            image_embed = torch.where(image_keep[:, None, None], image_embed,
                                      self.null_image_embed.to(image_embed.dtype)[None])
        time = self.to_time_embeds(t.type(image_embed.dtype))[:, None, :]
        image_embed = image_embed + self.learned_query[None]
        tokens = torch.cat((brain_embed, time.to(brain_embed.dtype), image_embed), dim=-2)
        return self.causal_transformer(tokens)[..., -self.num_tokens:, :]
