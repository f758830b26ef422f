"""Predict-and-refine network: a regression predictor U-Net plus a denoiser U-Net.

Used by the `residual` formulation (Whang et al. 2022, "Deblurring via Stochastic Refinement";
Shang et al. 2024, "ResDiff"): the predictor gives a one-shot estimate mu of the clean image,
the denoiser models the residual x - mu conditioned on mu. This module only composes two
`UNet`s; what the outputs mean (and the noise process) lives in `diffusion.formulations`.

Both sub-networks are attributes, so `state_dict()` keys carry the prefixes `predictor.` and
`denoiser.`, and one optimizer, one EMA copy and one checkpoint cover both.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from diffenhance.config import ModelConfig
from diffenhance.nn.network import build_cond_net, build_predictor


class RefineOutput(NamedTuple):
    """What `PredictRefine.forward` returns (the contract with the residual formulation)."""

    prediction: torch.Tensor  # [N, 3, H, W] the denoiser's prediction for x_t given mu.detach()
    # (and the condition's side channels, `refine_cond`)
    mu: torch.Tensor  # [N, 3, H, W] the predictor's estimate, with grad (its own loss)


def refine_cond(mu: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    """The denoiser's condition: mu [N, 3, H, W], then the side channels of `cond` [N, C, H, W]
    (none for RGB; inpainting's mask)."""
    return torch.cat([mu, cond[:, 3:]], dim=1) if cond.shape[1] > 3 else mu


class PredictRefine(nn.Module):
    """`predict(y) -> mu`, `denoise(x_t, t, mu) -> prediction`, and a training `forward`.

    The condition `cond` [N, C, H, W] is the upsampled input y (its first 3 channels) followed by
    C - 3 side channels (inpainting's mask), which both networks see. Both come from the
    network `model_cfg.space` (`nn.network`): predictor = its one-shot regressor of width
    `predictor_channels` (0: `model_cfg.base_channels`), mu = y + predictor(cond) (the residual
    over the upsampled input, so mu = y at init: "hr" a `UNetRegressor`, "lr" an EDSR-style
    `LRResidualNet`); denoiser = its conditional network (6 + side -> 3) of `model_cfg`,
    conditioned on `refine_cond(mu, cond)`.
    """

    def __init__(
        self,
        model_cfg: ModelConfig,
        predictor_channels: int = 0,
        scale: int = 1,
        cond_channels: int = 3,
    ) -> None:
        super().__init__()
        width = predictor_channels or model_cfg.base_channels
        side = cond_channels - 3
        self.predictor = build_predictor(model_cfg, width, scale, cond_channels)
        self.denoiser = build_cond_net(model_cfg, scale, 6 + side, 3)
        a, b = self.predictor.size_multiple, self.denoiser.size_multiple
        self.size_multiple: int = a * b // math.gcd(a, b)

    def predict(self, cond: torch.Tensor) -> torch.Tensor:
        """cond: [N, C, H, W] condition in [-1, 1] -> mu [N, 3, H, W] (about [-1, 1])."""
        return cond[:, :3] + self.predictor(cond)

    def denoise(self, x_t: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """The denoiser's prediction for the noisy residual x_t [N, 3, H, W] at timesteps t [N]
        given c = `refine_cond(mu, cond)`."""
        return self.denoiser(x_t, t, c)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> RefineOutput:
        """Training pass in ONE call (so DDP sees every parameter once): cond [N, C, H, W].

        Returns `RefineOutput(prediction, mu)`: the denoiser's prediction for x_t conditioned
        on mu.detach(), and mu = predict(y) (with grad, for the predictor's own loss).
        """
        mu = self.predict(cond)
        return RefineOutput(self.denoise(x_t, t, refine_cond(mu.detach(), cond)), mu)
