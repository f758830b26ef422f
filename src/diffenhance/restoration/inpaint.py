"""Inpainting: fill the region a mask marks (white = fill), at scale 1.

Its one side input is ``mask`` (HxW in {0, 1}, 1 = fill). The network input is the image with
the holes pre-filled by a smooth guess from the known pixels (`degrade.fill_holes`: the network
refines it), then the mask (`join`). Training and validation masks are `degrade.random_mask`
(free-form strokes and boxes, Palette / LaMa style) covering U(degrade.mask_coverage).

Scored on RGB and Y over the whole image and, on its own, inside the hole (`scored_region`),
against OpenCV's Telea inpainting (the report's reference) and the pre-filled input. The tiled
engine keeps the known pixels of the input exactly (`finish`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from diffenhance.config import Config, DegradeConfig
from diffenhance.degrade import as_image, fill_holes, random_mask
from diffenhance.restoration.base import Baseline, RestorationTask, image_of, register
from diffenhance.restoration.baselines import telea_inpaint

if TYPE_CHECKING:
    import torch


@register
class Inpaint(RestorationTask):
    name = "inpaint"
    side_inputs = ("mask",)
    description = "inpainting (fill a masked region)"
    degrade_keys = ("mask_coverage",)

    def join(self, image: np.ndarray, **side: np.ndarray) -> np.ndarray:
        """The network input HxWx4: `image` (HxWx3, or an inpainting input: its image) with the
        pixels where mask >= 0.5 replaced by `fill_holes`' guess, then the binarised mask.
        Idempotent on its own output."""
        image = image_of(as_image(image, "img", channels=(3, self.channels)))
        lq = super().join(image, **side)  # checks names and sizes
        hole = self.side(lq, "mask") >= 0.5
        return self.join_filled(fill_holes(image, hole), hole)

    def join_filled(self, filled: np.ndarray, hole: np.ndarray) -> np.ndarray:
        """The network input from an already filled image HxWx3 and the hole HxW bool."""
        return np.concatenate([filled, hole[..., None].astype(np.float32)], axis=-1)

    def synthesise(
        self, hr: np.ndarray, rng: np.random.Generator, cfg: DegradeConfig, *, validation: bool
    ) -> np.ndarray:
        h, w = hr.shape[:2]
        return self.join(hr, mask=random_mask(h, w, rng, cfg.mask_coverage))

    def pair_columns(self, lq: np.ndarray) -> dict[str, object]:
        return {"mask_coverage": round(float(self.side(lq, "mask").mean()), 6)}

    def baselines(self, cfg: Config) -> tuple[dict[str, Baseline], dict[str, str]]:
        methods, skipped = super().baselines(cfg)
        telea = {"telea": lambda lq: telea_inpaint(image_of(lq), self.side(lq, "mask"))}
        return {**telea, **methods}, skipped  # the first baseline is the report's reference

    def scored_region(self, lq: np.ndarray) -> np.ndarray | None:
        return self.side(lq, "mask")

    def finish(
        self, out: torch.Tensor, lq: torch.Tensor, std: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Only the holes are filled: the known pixels are the input's, exactly, and certain."""
        h, w = out.shape[-2:]
        hole = self.side(lq, "mask", axis=0)[None, :h, :w] >= 0.5
        out = out.where(hole, image_of(lq, axis=0)[:, :h, :w])
        return out, None if std is None else std.where(hole[0], 0.0)
