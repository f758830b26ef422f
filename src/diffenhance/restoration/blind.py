"""Blind ("real-world") restoration: the Real-ESRGAN-like second-order pipeline
(`degrade.degrade_blind`) down to HR / degrade.blind_scale (1, 2 or 4). Random in validation
too (the pair's seed fixes it); scored like SR (bicubic, Lanczos) when the scale is > 1."""

from __future__ import annotations

import typing

import numpy as np

from diffenhance.config import DegradeConfig
from diffenhance.degrade import degrade_blind
from diffenhance.restoration.base import RestorationTask, register


@register
class Blind(RestorationTask):
    name = "blind"
    description = "blind real-world restoration"
    degrade_keys = ("blind_scale",)

    def scale(self, cfg: DegradeConfig | None = None) -> int:
        return (cfg or DegradeConfig()).blind_scale

    def scales(self) -> tuple[int, ...]:
        """Every value degrade.blind_scale may take: a checkpoint records the one it had."""
        return typing.get_args(typing.get_type_hints(DegradeConfig)["blind_scale"])

    def synthesise(
        self, hr: np.ndarray, rng: np.random.Generator, cfg: DegradeConfig, *, validation: bool
    ) -> np.ndarray:
        return degrade_blind(hr, rng, self.scale(cfg))
