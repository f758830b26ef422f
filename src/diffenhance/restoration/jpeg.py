"""JPEG-artifact removal: quality ~ U{degrade.jpeg_quality} in training, degrade.val_jpeg_quality
for validation; scored against the compressed input."""

from __future__ import annotations

import numpy as np

from diffenhance.config import DegradeConfig
from diffenhance.degrade import jpeg
from diffenhance.restoration.base import RestorationTask, register


@register
class Jpeg(RestorationTask):
    name = "jpeg"
    description = "JPEG-artifact removal"
    degrade_keys = ("jpeg_quality", "val_jpeg_quality")
    lossless_output = True  # its JPEG inputs are written as PNG (enhance.output_format: same)

    def synthesise(
        self, hr: np.ndarray, rng: np.random.Generator, cfg: DegradeConfig, *, validation: bool
    ) -> np.ndarray:
        if validation:  # the training range is not read: a change to it leaves the pairs
            return jpeg(hr, cfg.val_jpeg_quality)
        lo, hi = cfg.jpeg_quality
        return jpeg(hr, int(rng.integers(lo, hi + 1)))
