"""Building blocks of the SR3-style U-Net: timestep embedding, residual and attention blocks.

Follows guided-diffusion (Dhariwal & Nichol 2021, "Diffusion Models Beat GANs on Image
Synthesis"): residual blocks with GroupNorm, SiLU and timestep scale-shift conditioning;
multi-head self-attention; the last layer of every residual branch is zero-initialised, so at
initialisation each block is the identity on its skip path.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def norm_groups(channels: int, max_groups: int = 32) -> int:
    """Largest divisor of `channels` that is <= `max_groups` (GroupNorm groups, head counts)."""
    for g in range(min(max_groups, channels), 0, -1):
        if channels % g == 0:
            return g
    raise ValueError(f"channels must be >= 1, got {channels}")


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(norm_groups(channels), channels, eps=1e-6)


def zero_module(module: nn.Module) -> nn.Module:
    """Zero every parameter of `module` in place and return it."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal embedding of real-valued timesteps (Vaswani et al. 2017, as in DDPM).

    t: [N] any real values (integer indices 0..T-1 or continuous). Returns [N, dim] float32:
    [cos(t * f_k), sin(t * f_k)] with frequencies f_k = max_period^(-k / (dim // 2)).
    An odd `dim` is padded with one zero column.
    """
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half
    )
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv x2 with FiLM timestep conditioning: `h = norm(h) * (1 + s) + b`.

    x: [N, in_ch, H, W], emb: [N, emb_dim] -> [N, out_ch, H, W]. The second conv is
    zero-initialised, so the block starts as its skip connection (1x1 conv if widths differ).
    """

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = group_norm(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, 2 * out_ch)
        self.norm2 = group_norm(out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = zero_module(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = nn.Identity() if in_ch == out_ch else nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb_proj(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over all H*W positions, with a residual connection.

    x: [N, C, H, W] -> same shape. Heads: the largest divisor of C that is at most
    `max(1, C // head_channels)`, so any width works (exactly C // head_channels when C is a
    multiple of head_channels). Uses `F.scaled_dot_product_attention`, so it runs the fused
    flash / memory-efficient kernels where available and computes in the autocast dtype.
    The output projection is zero-initialised (identity at init).
    """

    def __init__(self, channels: int, head_channels: int) -> None:
        super().__init__()
        self.heads = norm_groups(channels, max_groups=max(1, channels // head_channels))
        self.norm = group_norm(channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = zero_module(nn.Linear(channels, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        # Token layout [N, HW, C]; for channels_last input the permute is free.
        tokens = self.norm(x).permute(0, 2, 3, 1).reshape(n, h * w, c)
        qkv = self.qkv(tokens).reshape(n, h * w, 3, self.heads, c // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [N, heads, HW, hc]
        out = F.scaled_dot_product_attention(q, k, v)
        out = self.proj(out.transpose(1, 2).reshape(n, h * w, c))
        # Back to NCHW logical shape with channels_last strides (no copy).
        return x + out.reshape(n, h, w, c).permute(0, 3, 1, 2)


class Downsample(nn.Module):
    """3x3 conv with stride 2: [N, C, H, W] -> [N, C, H/2, W/2] (H, W even)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour x2 then 3x3 conv: [N, C, H, W] -> [N, C, 2H, 2W]."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
