"""``residual``: predict and refine (Whang et al. 2022, "Deblurring via Stochastic
Refinement"; Shang et al. 2024, "ResDiff"). A small predictor gives mu (trained with L1/L2 to
x), and SR3 diffusion models the scaled residual r = s (x - mu) conditioned on mu;
x^ = mu + r^ / s. 1 DDIM step from pure noise returns about mu + E[r], more steps add sampled
detail. The network is a `nn.predict_refine.PredictRefine`; its training pass returns a
`RefineOutput` (named fields, no channel slicing)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from diffenhance.config import DiffusionConfig, ModelConfig, in_range
from diffenhance.diffusion.formulations.base import (
    Formulation,
    Generators,
    Stats,
    cond_image,
    draw_normal,
    pixel_loss,
    register,
    unwrap,
)
from diffenhance.diffusion.process import training_loss
from diffenhance.diffusion.samplers import sample
from diffenhance.diffusion.schedule import Schedule
from diffenhance.nn.predict_refine import PredictRefine, RefineOutput, refine_cond


@register
class Residual(Formulation):
    name = "residual"
    default_steps = 4  # keeps PSNR above regression with ground-truth-level detail (RESULTS.md)
    has_knob = True

    @dataclass(frozen=True)
    class Options:  # diffusion.options.residual.*
        scale: float = 4.0  # diffuse s * (x - mu): residuals are small, s lifts their SNR
        predictor_channels: int = 16  # the predictor's width (0 = model.base_channels)

        def check(self, bad: Callable[[str, str], Exception]) -> None:
            in_range(self, "scale", bad, 0, lo_open=True)
            if self.predictor_channels < 0:
                raise bad("predictor_channels", "must be >= 0 (0 = model.base_channels)")

    def build_network(
        self, model_cfg: ModelConfig, dcfg: DiffusionConfig, scale: int, cond_channels: int = 3
    ) -> torch.nn.Module:
        width = dcfg.options[self.name].predictor_channels
        return PredictRefine(model_cfg, width, scale, cond_channels)

    def loss(
        self, dcfg: DiffusionConfig, model: torch.nn.Module, sched: Schedule,
        x0: torch.Tensor, cond: torch.Tensor, *, generator: torch.Generator | None,
    ) -> tuple[torch.Tensor, Stats]:  # fmt: skip
        """Predictor loss ||mu - x0|| + SR3 loss on r = s (x0 - mu) conditioned on mu."""
        inner = unwrap(model)
        with torch.no_grad():  # mu for building r_t; the forward below recomputes it with grad
            mu0 = inner.predict(cond).to(x0.dtype)
        r = dcfg.options[self.name].scale * (x0 - mu0)
        held: dict[str, torch.Tensor] = {}

        def denoiser(x_t: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
            out: RefineOutput = model(x_t, t, c)  # one call: DDP sees every parameter once
            held["mu"] = out.mu
            return out.prediction

        diff, stats = training_loss(
            denoiser, sched, r, cond, prediction=dcfg.prediction, loss=dcfg.loss,
            min_snr_gamma=dcfg.min_snr_gamma, generator=generator,
        )  # fmt: skip
        pred = pixel_loss(held["mu"], x0, dcfg.loss).mean()
        total = diff + pred
        return total, {**stats, "loss": total.detach(), "loss_diffusion": diff.detach(),
                       "loss_predictor": pred.detach()}  # fmt: skip

    def prepare(self, dcfg: DiffusionConfig, model: torch.nn.Module, cond: torch.Tensor) -> Any:
        # the denoiser's condition [mu, side channels], shared by every sample
        return refine_cond(unwrap(model).predict(cond), cond)

    def sample_once(
        self, dcfg: DiffusionConfig, model: torch.nn.Module, sched: Schedule,
        cond: torch.Tensor, prepared: Any, *, steps: int, sampler: str, eta: float,
        generator: Generators, step_gen: torch.Generator | None, progress: bool, clip_x0: bool,
    ) -> torch.Tensor:  # fmt: skip
        """SR3 (DDIM/DDPM) on the scaled residual conditioned on mu; returns mu + r^ / s."""
        mu = cond_image(prepared)  # [mu, side inputs]: mu
        r_T = draw_normal(mu.shape, generator, mu.device).to(mu.dtype)
        r = sample(
            sampler, unwrap(model).denoise, sched, r_T, prepared, steps=steps, eta=eta,
            prediction=dcfg.prediction, generator=step_gen, clip_x0=False, progress=progress,
        )  # fmt: skip
        return mu + r / dcfg.options[self.name].scale
