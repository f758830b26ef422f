"""The network registry: one registered class per way of laying the network out (`model.space`).

A network owns the two modules a formulation asks for, and nothing branches on its name:

* `cond_net(cfg, scale, in_channels, out_channels)` - the conditional network
  `(x_t, t, cond) -> prediction` every diffusion formulation trains;
* `predictor(cfg, width, scale, cond_channels)` - a one-shot regressor `cond -> residual` over
  the upsampled input (the `residual` formulation's stage 1, zero at initialisation).

Both expose `size_multiple` (output-space). A network with its own settings declares them as
a nested frozen dataclass `Options` (params: `model.options.<name>.<option>`; the network reads
`cfg.options[self.name]`). A new one is a class with the `register` decorator, in its own file:

    @register
    class Mine(Network):
        name = "mine"
        ...

Like the networks themselves, nothing here knows about diffusion.
"""

from __future__ import annotations

from typing import ClassVar

from torch import nn

from diffenhance.config import ModelConfig
from diffenhance.registry import NETWORKS

register = NETWORKS.register  # class decorator
unregister = NETWORKS.unregister


class Network:
    """Base class of a registered network layout (stateless: one instance per name)."""

    name: ClassVar[str]
    label: ClassVar[str] = "network"  # how model listings name it ("LR-space U-Net")

    def cond_net(
        self, cfg: ModelConfig, scale: int, in_channels: int = 6, out_channels: int = 3
    ) -> nn.Module:
        """`(x_t, t, cond) -> prediction` for a task of `scale` (output / input size), seeing
        x_t and the condition concatenated (`in_channels` in all)."""
        raise NotImplementedError

    def predictor(self, cfg: ModelConfig, width: int, scale: int, cond_channels: int) -> nn.Module:
        """`cond [N, cond_channels, H, W] -> residual [N, 3, H, W]` of `width` features, 0 at
        initialisation (the estimate is the upsampled input plus it)."""
        raise NotImplementedError


def get_network(cfg: ModelConfig) -> Network:
    """The registered network `cfg.space`; ValueError listing the registered names."""
    return NETWORKS.lookup(cfg.space)


def build_cond_net(
    cfg: ModelConfig, scale: int, in_channels: int = 6, out_channels: int = 3
) -> nn.Module:
    """The conditional network `(x_t, t, cond) -> prediction` of the network `cfg.space`."""
    return get_network(cfg).cond_net(cfg, scale, in_channels, out_channels)


def build_predictor(cfg: ModelConfig, width: int, scale: int, cond_channels: int) -> nn.Module:
    """The one-shot regressor `cond -> residual` of the network `cfg.space`."""
    return get_network(cfg).predictor(cfg, width, scale, cond_channels)
