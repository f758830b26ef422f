"""SR3-style conditional attention U-Net (Saharia et al. 2021, "Image Super-Resolution via
Iterative Refinement"), with the guided-diffusion block design (Dhariwal & Nichol 2021).

The degraded image, already resized to the output size by the caller, is concatenated to the
noisy image along channels. The network knows nothing about the diffusion process: it maps
(x_t, t, cond) to a prediction whose meaning (eps, v or x0) is chosen by the trainer.

Attention placement uses the guided-diffusion convention: `ModelConfig.attn_resolutions` lists
downsampling *factors* (1 = input scale, 2 = half, 4 = quarter ...), not pixel sizes, so the
architecture does not depend on the image size and tiles of any size can be processed.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from diffenhance.config import ModelConfig
from diffenhance.nn.layers import (
    AttentionBlock,
    Downsample,
    ResBlock,
    Upsample,
    group_norm,
    timestep_embedding,
    zero_module,
)
from diffenhance.nn.network import Network, register


class _Level(nn.Module):
    """One residual block, optionally followed by self-attention."""

    def __init__(
        self, in_ch: int, out_ch: int, emb_dim: int, dropout: float, attn: bool, head_ch: int
    ) -> None:
        super().__init__()
        self.res = ResBlock(in_ch, out_ch, emb_dim, dropout)
        self.attn = AttentionBlock(out_ch, head_ch) if attn else None

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        x = self.res(x, emb)
        return self.attn(x) if self.attn is not None else x


def _check_config(cfg: ModelConfig, in_channels: int, out_channels: int) -> None:
    if cfg.base_channels < 1:
        raise ValueError(f"model.base_channels must be >= 1, got {cfg.base_channels}")
    if not cfg.channel_mults or any(m < 1 for m in cfg.channel_mults):
        raise ValueError(
            f"model.channel_mults must be a non-empty list of ints >= 1, got {cfg.channel_mults}"
        )
    if cfg.num_res_blocks < 1:
        raise ValueError(f"model.num_res_blocks must be >= 1, got {cfg.num_res_blocks}")
    if cfg.head_channels < 1:
        raise ValueError(f"model.head_channels must be >= 1, got {cfg.head_channels}")
    if any(r < 1 for r in cfg.attn_resolutions):
        raise ValueError(
            "model.attn_resolutions lists downsampling factors (1, 2, 4, ...) and must be "
            f">= 1, got {cfg.attn_resolutions}"
        )
    if not 0.0 <= cfg.dropout < 1.0:
        raise ValueError(f"model.dropout must be in [0, 1), got {cfg.dropout}")
    if in_channels <= out_channels or out_channels < 1:
        raise ValueError(
            f"in_channels ({in_channels}) must be out_channels ({out_channels}) plus the "
            "condition's channels"
        )


class UNet(nn.Module):
    """Conditional U-Net: `forward(x_t, t, cond) -> prediction`.

    Levels i = 0..L-1 have width `base_channels * channel_mults[i]` and downsampling factor
    2**i; each has `num_res_blocks` residual blocks on the way down and one more on the way up
    (skip connections are concatenated), followed by self-attention when 2**i is in
    `attn_resolutions`. The middle block (res, attn, res) always has attention. Factors larger
    than the deepest level's are ignored, so a small test config can share the default list.

    The output layer and the last layer of every residual/attention branch are zero-initialised:
    the output is exactly 0 at initialisation.
    """

    def __init__(self, cfg: ModelConfig, in_channels: int = 6, out_channels: int = 3) -> None:
        super().__init__()
        _check_config(cfg, in_channels, out_channels)
        self.cfg = cfg
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.size_multiple: int = 2 ** (len(cfg.channel_mults) - 1)

        base, hc, drop = cfg.base_channels, cfg.head_channels, cfg.dropout
        emb_dim = 4 * base
        self.time_embed = nn.Sequential(
            nn.Linear(base, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )
        attn_ds = set(cfg.attn_resolutions)

        ch = base * cfg.channel_mults[0]
        self.input_conv = nn.Conv2d(in_channels, ch, 3, padding=1)
        skips = [ch]
        self.down = nn.ModuleList()
        ds = 1
        for i, mult in enumerate(cfg.channel_mults):
            for _ in range(cfg.num_res_blocks):
                self.down.append(_Level(ch, base * mult, emb_dim, drop, ds in attn_ds, hc))
                ch = base * mult
                skips.append(ch)
            if i < len(cfg.channel_mults) - 1:
                self.down.append(Downsample(ch))
                skips.append(ch)
                ds *= 2

        self.mid1 = ResBlock(ch, ch, emb_dim, drop)
        self.mid_attn = AttentionBlock(ch, hc)
        self.mid2 = ResBlock(ch, ch, emb_dim, drop)

        self.up = nn.ModuleList()
        for i, mult in reversed(list(enumerate(cfg.channel_mults))):
            for j in range(cfg.num_res_blocks + 1):
                skip_ch = skips.pop()
                self.up.append(_Level(ch + skip_ch, base * mult, emb_dim, drop, ds in attn_ds, hc))
                ch = base * mult
                if i > 0 and j == cfg.num_res_blocks:
                    self.up.append(Upsample(ch))
                    ds //= 2
        assert not skips and ds == 1  # internal invariant: every skip is consumed

        self.out = nn.Sequential(
            group_norm(ch), nn.SiLU(), zero_module(nn.Conv2d(ch, out_channels, 3, padding=1))
        )

    def _check_inputs(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> None:
        cond_ch = self.in_channels - self.out_channels
        if x_t.ndim != 4 or x_t.shape[1] != self.out_channels:
            raise ValueError(
                f"x_t must be [N, {self.out_channels}, H, W], got shape {tuple(x_t.shape)}"
            )
        if cond.ndim != 4 or cond.shape[1] != cond_ch:
            raise ValueError(f"cond must be [N, {cond_ch}, H, W], got shape {tuple(cond.shape)}")
        if cond.shape[0] != x_t.shape[0] or cond.shape[2:] != x_t.shape[2:]:
            raise ValueError(
                f"cond {tuple(cond.shape)} and x_t {tuple(x_t.shape)} must have the same batch "
                "size and spatial size: upsample the degraded image to the output size first"
            )
        h, w = x_t.shape[2:]
        m = self.size_multiple
        if h % m or w % m:
            raise ValueError(
                f"image size {w}x{h} (width x height) is not divisible by {m} "
                "(= 2**(len(channel_mults)-1)); "
                f"pad H and W to a multiple of {m} (diffenhance.infer pads automatically)"
            )
        if t.ndim > 1 or (t.ndim == 1 and t.shape[0] != x_t.shape[0]):
            raise ValueError(
                f"t must be a scalar or have shape [{x_t.shape[0]}], got {tuple(t.shape)}"
            )

    def forward(
        self, x_t: torch.Tensor, t: torch.Tensor | float, cond: torch.Tensor
    ) -> torch.Tensor:
        """Predict from a noisy image and its condition.

        x_t: [N, out_channels, H, W] noisy image (model range, about [-1, 1]).
        t: [N] (or scalar) timesteps, int or float, any real values (e.g. 0..T-1).
        cond: [N, in_channels - out_channels, H, W] degraded image at the output size.
        H and W must be multiples of `size_multiple`. Returns [N, out_channels, H, W] in the
        dtype of the computation (x_t's dtype, or the autocast dtype).
        """
        t = torch.as_tensor(t, device=x_t.device)
        self._check_inputs(x_t, t, cond)
        t = t.expand(x_t.shape[0]) if t.ndim == 0 else t

        emb = self.time_embed(timestep_embedding(t, self.cfg.base_channels).to(x_t.dtype))
        h = self.input_conv(torch.cat([x_t, cond.to(x_t.dtype)], dim=1))
        hs = [h]
        for layer in self.down:
            h = layer(h) if isinstance(layer, Downsample) else layer(h, emb)
            hs.append(h)
        h = self.mid2(self.mid_attn(self.mid1(h, emb)), emb)
        for layer in self.up:
            if isinstance(layer, Upsample):
                h = layer(h)
            else:
                h = layer(torch.cat([h, hs.pop()], dim=1), emb)
        return self.out(h)


def build_unet(cfg: ModelConfig, in_channels: int = 6, out_channels: int = 3) -> UNet:
    """Build the U-Net described by `cfg` (random init, zero output). Raises ValueError on an
    invalid config. `in_channels` = image channels + condition channels."""
    return UNet(cfg, in_channels=in_channels, out_channels=out_channels)


class UNetRegressor(UNet):
    """A `UNet` called as a one-shot regressor: `forward(cond) -> residual`, seeing the image
    (the condition's first 3 channels) as its x_t at t = 0, then the whole condition."""

    def forward(self, cond: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        y = cond[:, :3]
        return super().forward(y, torch.zeros(y.shape[0], device=y.device), cond)


@register
class HRSpace(Network):
    """``hr``: the U-Net at the output resolution (what checkpoints without `model.space` hold)."""

    name = "hr"
    label = "HR-space U-Net"

    def cond_net(
        self, cfg: ModelConfig, scale: int, in_channels: int = 6, out_channels: int = 3
    ) -> nn.Module:
        return UNet(cfg, in_channels=in_channels, out_channels=out_channels)

    def predictor(self, cfg: ModelConfig, width: int, scale: int, cond_channels: int) -> nn.Module:
        """A `UNetRegressor` of `cfg` at `width` base channels (heads no wider)."""
        narrow = replace(cfg, base_channels=width, head_channels=min(width, cfg.head_channels))
        return UNetRegressor(narrow, in_channels=3 + cond_channels, out_channels=3)
