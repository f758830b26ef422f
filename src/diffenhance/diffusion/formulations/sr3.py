"""``sr3``: conditional diffusion from pure noise (Saharia et al. 2021, "Image
Super-Resolution via Iterative Refinement"): `process.training_loss` + the DDPM/DDIM samplers.
The reference formulation."""

from __future__ import annotations

from typing import Any

import torch

from diffenhance.config import DiffusionConfig
from diffenhance.diffusion.formulations.base import (
    Formulation,
    Generators,
    Stats,
    cond_image,
    draw_normal,
    register,
)
from diffenhance.diffusion.process import training_loss
from diffenhance.diffusion.samplers import sample
from diffenhance.diffusion.schedule import Schedule


@register
class SR3(Formulation):
    name = "sr3"
    default_steps = 4
    has_knob = True

    def loss(
        self, dcfg: DiffusionConfig, model: torch.nn.Module, sched: Schedule,
        x0: torch.Tensor, cond: torch.Tensor, *, generator: torch.Generator | None,
    ) -> tuple[torch.Tensor, Stats]:  # fmt: skip
        return training_loss(
            model, sched, x0, cond, prediction=dcfg.prediction, loss=dcfg.loss,
            min_snr_gamma=dcfg.min_snr_gamma, generator=generator,
        )  # fmt: skip

    def sample_once(
        self, dcfg: DiffusionConfig, model: torch.nn.Module, sched: Schedule,
        cond: torch.Tensor, prepared: Any, *, steps: int, sampler: str, eta: float,
        generator: Generators, step_gen: torch.Generator | None, progress: bool, clip_x0: bool,
    ) -> torch.Tensor:  # fmt: skip
        x_T = draw_normal(cond_image(cond).shape, generator, cond.device).to(cond.dtype)
        return sample(
            sampler, model, sched, x_T, cond, steps=steps, eta=eta,
            prediction=dcfg.prediction, generator=step_gen, clip_x0=clip_x0, progress=progress,
        )  # fmt: skip
