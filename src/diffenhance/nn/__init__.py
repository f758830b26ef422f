"""Neural networks. Knows nothing about diffusion: the U-Net maps (x_t, t, cond) to a tensor.

Importing the package registers the built-in networks (`model.space`): ``hr`` (unet.py) and
``lr`` (lrspace.py); `nn.network` is their registry's base class and builders.
"""

from diffenhance.nn.lrspace import LRResidualNet, LRSpaceUNet, space_factor
from diffenhance.nn.network import Network, build_cond_net, build_predictor, get_network
from diffenhance.nn.unet import UNet, UNetRegressor, build_unet

__all__ = [
    "LRResidualNet",
    "LRSpaceUNet",
    "Network",
    "UNet",
    "UNetRegressor",
    "build_cond_net",
    "build_predictor",
    "build_unet",
    "get_network",
    "space_factor",
]
