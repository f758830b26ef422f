"""Neural networks. Knows nothing about diffusion: the U-Net maps (x_t, t, cond) to a tensor."""

from diffenhance.nn.unet import UNet, build_unet

__all__ = ["UNet", "build_unet"]
