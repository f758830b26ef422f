"""``regression``: the network as a one-shot regressor, x^ = y + net(y, 0, cond), L1/L2 to x
(y = `cond_image(cond)`, the degraded image).

The same-size regression baseline: one network evaluation, no randomness; steps and samples
do not change its output (no knob)."""

from __future__ import annotations

from typing import Any

import torch

from diffenhance.config import DiffusionConfig
from diffenhance.diffusion.formulations.base import (
    Formulation,
    Generators,
    Model,
    Stats,
    cond_image,
    pixel_loss,
    register,
)
from diffenhance.diffusion.schedule import Schedule


def regress(model: Model, cond: torch.Tensor) -> torch.Tensor:
    """The one-shot regression x^ = y + model(y, 0, cond), y = `cond_image(cond)`:
    cond [N, C, H, W] -> [N, 3, H, W]."""
    y = cond_image(cond)
    t = torch.zeros(y.shape[0], device=y.device)
    return y + model(y, t, cond).to(y.dtype)


@register
class Regression(Formulation):
    name = "regression"
    default_steps = 1
    has_knob = False
    uses_start_noise = False

    def loss(
        self, dcfg: DiffusionConfig, model: torch.nn.Module, sched: Schedule,
        x0: torch.Tensor, cond: torch.Tensor, *, generator: torch.Generator | None,
    ) -> tuple[torch.Tensor, Stats]:  # fmt: skip
        total = pixel_loss(regress(model, cond), x0, dcfg.loss).mean()
        return total, {"loss": total.detach()}

    def sampler_label(self, sampler: str) -> str:
        return "direct"  # one network pass: no sampler, steps are ignored

    def draws_noise(self, dcfg: DiffusionConfig, sampler: str, eta: float) -> bool:
        return False

    def sample_once(
        self, dcfg: DiffusionConfig, model: torch.nn.Module, sched: Schedule,
        cond: torch.Tensor, prepared: Any, *, steps: int, sampler: str, eta: float,
        generator: Generators, step_gen: torch.Generator | None, progress: bool, clip_x0: bool,
    ) -> torch.Tensor:  # fmt: skip
        return regress(model, cond)
