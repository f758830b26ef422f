"""``indi``: Inversion by Direct Iteration (Delbracio & Milanfar 2023; the maths lives in
`diffusion/indi.py`): starts at the degraded image; 1 step = a regression, more steps =
sharper, the mean of several samples (different start noise) = more faithful."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from diffenhance.config import DiffusionConfig, in_range
from diffenhance.diffusion.formulations.base import (
    Formulation,
    Generators,
    Stats,
    cond_image,
    draw_normal,
    register,
)
from diffenhance.diffusion.indi import indi_loss, indi_sample
from diffenhance.diffusion.schedule import Schedule


@register
class InDI(Formulation):
    name = "indi"
    default_steps = 1  # the fidelity end: exactly a regression on the (noisy) input
    has_knob = True

    @dataclass(frozen=True)
    class Options:  # diffusion.options.indi.*
        noise: float = 0.0  # start noise sigma (model range); > 0 makes samples differ
        t1_prob: float = 0.2  # share of training at t = 1: keeps the 1-step end faithful

        def check(self, bad: Callable[[str, str], Exception]) -> None:
            # sigmas in model-range units ([-1, 1]): 1 is noise as large as the whole range
            in_range(self, "noise", bad, 0, 1)
            in_range(self, "t1_prob", bad, 0, 1)

    def loss(
        self, dcfg: DiffusionConfig, model: torch.nn.Module, sched: Schedule,
        x0: torch.Tensor, cond: torch.Tensor, *, generator: torch.Generator | None,
    ) -> tuple[torch.Tensor, Stats]:  # fmt: skip
        opts = dcfg.options[self.name]
        return indi_loss(
            model, x0, cond, sigma=opts.noise, t1_prob=opts.t1_prob,
            loss=dcfg.loss, generator=generator,
        )  # fmt: skip

    def sampler_label(self, sampler: str) -> str:
        return "indi"  # InDI's own iteration (eta: its share of fresh noise), not ddim/ddpm

    def draws_noise(self, dcfg: DiffusionConfig, sampler: str, eta: float) -> bool:
        return eta > 0 and dcfg.options[self.name].noise > 0

    def deterministic_reason(self, dcfg: DiffusionConfig, sampler: str, eta: float) -> str | None:
        # the start noise is scaled by the noise option, and eta's fresh noise needs it > 0
        if dcfg.options[self.name].noise > 0:
            return None
        return (
            "the indi formulation with diffusion.options.indi.noise=0 starts at the input "
            "itself and draws no noise (eta adds noise only when that noise > 0)"
        )

    def sample_once(
        self, dcfg: DiffusionConfig, model: torch.nn.Module, sched: Schedule,
        cond: torch.Tensor, prepared: Any, *, steps: int, sampler: str, eta: float,
        generator: Generators, step_gen: torch.Generator | None, progress: bool, clip_x0: bool,
    ) -> torch.Tensor:  # fmt: skip
        # eta in [0, 1] is the share of fresh noise per step; the sampler name is unused
        y, sigma = cond_image(cond), dcfg.options[self.name].noise
        eps = draw_normal(y.shape, generator, cond.device).to(cond.dtype)
        return indi_sample(
            model, y + sigma * eps, cond, steps=steps, sigma=sigma,
            eta=eta, randn=lambda like: draw_normal(like.shape, step_gen, like.device),
            progress=progress,
        )  # fmt: skip
