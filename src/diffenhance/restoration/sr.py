"""Super-resolution by a fixed factor: ``sr2`` and ``sr4`` (bicubic, antialiased downscale).

Scored against bicubic and Lanczos upscaling, on RGB and Y with a border crop of the scale.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from diffenhance.config import DegradeConfig
from diffenhance.degrade import resize
from diffenhance.restoration.base import RestorationTask, register


class SuperResolution(RestorationTask):
    """Bicubic (antialiased) downscale by `factor`: the classical SR benchmark degradation."""

    factor: ClassVar[int]

    def scale(self, cfg: DegradeConfig | None = None) -> int:
        return self.factor

    def synthesise(
        self, hr: np.ndarray, rng: np.random.Generator, cfg: DegradeConfig, *, validation: bool
    ) -> np.ndarray:
        h, w = hr.shape[:2]
        return resize(hr, size=(h // self.factor, w // self.factor), method="bicubic")


@register
class Sr2(SuperResolution):
    name = "sr2"
    factor = 2
    description = "super-resolution x2"


@register
class Sr4(SuperResolution):
    name = "sr4"
    factor = 4
    description = "super-resolution x4"
