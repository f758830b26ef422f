"""LR-space (space-to-depth) networks: the U-Net body runs on the low-resolution grid.

An HR-space network spends its convolutions on every output pixel, although for x4 SR the
input holds only 1/16 of that information. Here the output-resolution tensors are
pixel-unshuffled by a factor f (Shi et al. 2016, "Real-Time Single Image and Video
Super-Resolution Using an Efficient Sub-Pixel Convolutional Neural Network"): [N, C, H, W]
-> [N, C f^2, H/f, W/f], a lossless rearrangement; the body runs on that grid and its output is
pixel-shuffled back. f is the task's scale (so the grid is the LQ image's own), 2 for scale-1
tasks.

The condition is the bicubic-upsampled LQ at the output size (the contract every formulation
and sampler uses), pixel-unshuffled like x_t. Recovering the LQ at its own resolution instead
would be lossy (bicubic with align_corners=False samples no LQ pixel exactly) and, for scale-1
tasks (denoise, jpeg: f = 2), would throw away 3/4 of the input; the unshuffle is lossless,
needs nothing but (x_t, t, cond) and costs only a wider first convolution.

Like `unet.py`, nothing here knows about diffusion.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from diffenhance.config import ModelConfig
from diffenhance.nn.layers import zero_module
from diffenhance.nn.network import Network, register
from diffenhance.nn.unet import UNet

LR_PREDICTOR_BLOCKS = 8  # EDSR-style residual blocks of the LR-space predictor (the default)


def space_factor(scale: int) -> int:
    """The space-to-depth factor f for a task of `scale`: the scale itself, 2 for scale 1."""
    if scale < 1:
        raise ValueError(f"scale must be >= 1, got {scale}")
    return scale if scale > 1 else 2


def _check_size(x: torch.Tensor, multiple: int, what: str) -> None:
    if x.ndim != 4:
        raise ValueError(f"{what} must be [N, C, H, W], got shape {tuple(x.shape)}")
    h, w = x.shape[2:]
    if h % multiple or w % multiple:
        raise ValueError(
            f"image size {w}x{h} (width x height) is not divisible by {multiple} (the LR-space "
            f"network's size_multiple); pad H and W to a multiple of {multiple} "
            "(diffenhance.infer pads automatically)"
        )


class LRSpaceUNet(nn.Module):
    """`forward(x_t, t, cond) -> prediction`, with a `UNet` body on the 1/f grid.

    x_t [N, out_channels, H, W] and cond [N, in_channels - out_channels, H, W] are both
    pixel-unshuffled by `factor`, the body is a `UNet(cfg)` with in/out channels multiplied by
    factor^2 (its `attn_resolutions` count from the LR grid), and its output is pixel-shuffled
    back to [N, out_channels, H, W]. `size_multiple` = factor * the body's multiple. The
    output is exactly 0 at initialisation, as the HR `UNet`'s.
    """

    def __init__(
        self, cfg: ModelConfig, factor: int, in_channels: int = 6, out_channels: int = 3
    ) -> None:
        super().__init__()
        if factor < 1:
            raise ValueError(f"factor must be >= 1, got {factor}")
        self.factor = factor
        self.in_channels, self.out_channels = in_channels, out_channels
        self.body = UNet(cfg, in_channels * factor**2, out_channels * factor**2)
        self.size_multiple: int = factor * self.body.size_multiple

    def forward(
        self, x_t: torch.Tensor, t: torch.Tensor | float, cond: torch.Tensor
    ) -> torch.Tensor:
        """x_t: [N, out_channels, H, W] (model range); t: [N] or scalar; cond: [N, in - out,
        H, W] at the output size. H, W multiples of `size_multiple`. -> [N, out_channels, H, W]
        in the dtype of the computation."""
        _check_size(x_t, self.size_multiple, "x_t")
        f = self.factor
        out = self.body(F.pixel_unshuffle(x_t, f), t, F.pixel_unshuffle(cond, f))
        return F.pixel_shuffle(out, f)


class _EDSRBlock(nn.Module):
    """conv-ReLU-conv with an identity skip (EDSR: no batch norm)."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(ch, ch, 3, padding=1)
        self.conv2 = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(x)))


class LRResidualNet(nn.Module):
    """EDSR-style regressor on the 1/f grid (Lim et al. 2017, "Enhanced Deep Residual Networks
    for Single Image Super-Resolution"): `forward(y) -> residual`.

    y: [N, in_channels, H, W] at the output size (default in_channels = channels; more for a
    condition with side channels) -> [N, channels, H, W]. Pixel-unshuffle by
    `factor`, a 3x3 conv to `width` features, `blocks` residual blocks and a conv (with a
    global skip), then a conv to channels * factor^2 and a pixel shuffle (ESPCN's sub-pixel
    upsampler). The last conv is zero-initialised: the residual is 0 at initialisation.
    `size_multiple` = factor.
    """

    def __init__(
        self,
        factor: int,
        width: int,
        blocks: int = LR_PREDICTOR_BLOCKS,
        channels: int = 3,
        in_channels: int | None = None,
    ) -> None:
        super().__init__()
        if factor < 1 or width < 1 or blocks < 0:
            raise ValueError(
                f"factor and width must be >= 1 and blocks >= 0, got {factor}, {width}, {blocks}"
            )
        self.factor = factor
        self.size_multiple: int = factor
        self.head = nn.Conv2d((in_channels or channels) * factor**2, width, 3, padding=1)
        self.blocks = nn.Sequential(*(_EDSRBlock(width) for _ in range(blocks)))
        self.body_out = nn.Conv2d(width, width, 3, padding=1)
        self.tail = zero_module(nn.Conv2d(width, channels * factor**2, 3, padding=1))

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        """y: [N, in_channels, H, W] (H, W multiples of `factor`) -> residual [N, channels,
        H, W]."""
        _check_size(y, self.size_multiple, "y")
        h = self.head(F.pixel_unshuffle(y, self.factor))
        h = h + self.body_out(self.blocks(h))
        return F.pixel_shuffle(self.tail(h), self.factor)


@register
class LRSpace(Network):
    """``lr``: the U-Net body on the 1/f grid (`LRSpaceUNet`), an EDSR-style `LRResidualNet`
    predictor; f = `space_factor(scale)`."""

    name = "lr"
    label = "LR-space U-Net"

    @dataclass(frozen=True)
    class Options:
        # EDSR-style residual blocks of the predictor: 8 is what every shipped lr model has
        predictor_blocks: int = LR_PREDICTOR_BLOCKS

        def check(self, bad) -> None:  # type: ignore[no-untyped-def]
            if self.predictor_blocks < 0:
                raise bad("predictor_blocks", f"= {self.predictor_blocks} must be >= 0")

    def cond_net(
        self, cfg: ModelConfig, scale: int, in_channels: int = 6, out_channels: int = 3
    ) -> nn.Module:
        return LRSpaceUNet(cfg, space_factor(scale), in_channels, out_channels)

    def predictor(self, cfg: ModelConfig, width: int, scale: int, cond_channels: int) -> nn.Module:
        blocks = cfg.options[self.name].predictor_blocks
        return LRResidualNet(space_factor(scale), width, blocks, in_channels=cond_channels)
