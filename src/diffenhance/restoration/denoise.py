"""Denoising: colour Gaussian noise, sigma ~ U(degrade.noise_sigma) in training and
degrade.val_noise_sigma (25, the common benchmark setting) for validation.

Scored against the noisy input and colour BM3D (Dabov et al. 2007) at the validation sigma
when the optional `bm3d` package is installed (otherwise skipped, with the reason recorded).
"""

from __future__ import annotations

import numpy as np

from diffenhance.config import Config, DegradeConfig
from diffenhance.degrade import add_gaussian_noise
from diffenhance.restoration.base import Baseline, RestorationTask, image_of, register
from diffenhance.restoration.baselines import bm3d_missing_reason, cbm3d_denoise


@register
class Denoise(RestorationTask):
    name = "denoise"
    description = "denoising (colour Gaussian noise)"
    degrade_keys = ("noise_sigma", "val_noise_sigma")

    def synthesise(
        self, hr: np.ndarray, rng: np.random.Generator, cfg: DegradeConfig, *, validation: bool
    ) -> np.ndarray:
        sigma = cfg.val_noise_sigma if validation else float(rng.uniform(*cfg.noise_sigma))
        return add_gaussian_noise(hr, sigma, rng)

    def baselines(self, cfg: Config) -> tuple[dict[str, Baseline], dict[str, str]]:
        methods, skipped = super().baselines(cfg)
        reason = bm3d_missing_reason()
        if reason is None:
            sigma = cfg.degrade.val_noise_sigma
            methods["cbm3d"] = lambda lq: cbm3d_denoise(image_of(lq), sigma)
        else:
            skipped["cbm3d"] = reason
        return methods, skipped
