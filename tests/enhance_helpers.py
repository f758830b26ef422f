"""Shared helpers of the inference / enhancement tests: identity-like tile models, random
(untrained) checkpoints that load like real ones, and small test images."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from diffenhance.config import load_config
from diffenhance.io import write_image
from diffenhance.model import build_restorer, checkpoint_metadata, save_weights
from tests.tiny import TINY_MODEL, smooth_image


@dataclass
class IdentityTiles:
    """A `TileModel` that returns its input upsampled (bicubic, like Restorer.condition):
    what a perfect restorer would give on an image with nothing to restore."""

    scale: int = 2
    size_multiple: int = 4
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    calls: list[tuple[int, ...]] = field(default_factory=list)

    def __call__(self, lq, generators, autocast_dtype):
        assert len(generators) == lq.shape[0]
        h, w = lq.shape[-2] * self.scale, lq.shape[-1] * self.scale
        assert h % self.size_multiple == 0 and w % self.size_multiple == 0, (h, w)
        self.calls.append(tuple(lq.shape))
        if self.scale == 1:
            return lq.clone()
        return F.interpolate(lq, scale_factor=self.scale, mode="bicubic").clamp(0, 1)


def random_checkpoint(
    path: Path, task: str = "sr2", seed: int = 0, overrides: Sequence[str] = ()
) -> Path:
    """An untrained tiny restorer saved as a real checkpoint (loads with load_restorer);
    `overrides` change its config (e.g. diffusion.formulation=indi)."""
    cfg = load_config(None, [*TINY_MODEL, *overrides])
    torch.manual_seed(seed)
    r = build_restorer(cfg.model, cfg.diffusion, task, cfg.degrade)
    return save_weights(path, r.unet.state_dict(), checkpoint_metadata(r, step=0))


def gradient(h: int, w: int) -> np.ndarray:
    """A colour ramp, float32 HxWx3 in [0, 1]."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    return np.stack([x / max(w, 1), y / max(h, 1), (x + y) / (h + w)], -1).astype(np.float32)


def write_inputs(root: Path, sizes: list[tuple[int, int]], seed: int = 0) -> list[Path]:
    """Smooth random PNGs img<i>.png of the given (h, w) sizes under root/sub<i%2>/."""
    rng = np.random.default_rng(seed)
    return [
        write_image(root / f"sub{i % 2}" / f"img{i}.png", smooth_image(rng, h, w))
        for i, (h, w) in enumerate(sizes)
    ]
