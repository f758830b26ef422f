"""Neural networks. Knows nothing about diffusion: the U-Net maps (x_t, t, cond) to a tensor."""

from diffenhance.nn.lrspace import LRResidualNet, LRSpaceUNet, build_cond_net, space_factor
from diffenhance.nn.unet import UNet, build_unet

__all__ = [
    "LRResidualNet",
    "LRSpaceUNet",
    "UNet",
    "build_cond_net",
    "build_unet",
    "space_factor",
]
