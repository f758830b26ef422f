"""The one restore path: a resolved `SamplingSpec` and one tiled restore call.

Every front end runs a checkpoint through here - `enhance` (CLI and flow), `evaluate`,
`compare`, training-time validation, the notebook and the benchmarks - so a number in a
report measures exactly what `diffenhance enhance` writes (diffusers' one-pipeline-call idea):

    r = load_restorer("models/sr4")
    spec = sampling_spec(r, cfg.infer)                  # params + checkpoint recommendation
    hr = restore(r, lq, spec)                           # HxWx3 float32 [0,1] -> sHxsWx3

`sampling_spec` is the only place where sampler settings are resolved: `infer.*` from params,
each of steps/samples left null filled from the checkpoint's "recommended" metadata, else the
formulation's default (`Formulation.default_steps`), and the tile raised to the checkpoint's
recommended minimum (inpainting needs context around a hole); callers that sweep a setting
(evaluate's step curve, compare's knob ends, validation) pass it as an explicit override.

The noise of every tile is seeded from (spec.seed, image key, tile position) (`infer.tile_seed`);
the key defaults to `image_key(image)`, a hash of the decoded pixels, so the same input gives
the same output whichever front end, file name, batch or shard it came through.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from diffenhance.config import InferConfig
from diffenhance.infer import RestorerTiles, TiledEnhancer


@dataclass(frozen=True)
class SamplingSpec:
    """Everything that decides what a restore returns besides the weights and the input.

    Field names match `InferConfig`'s, so the tiled engine takes either."""

    sampler: Literal["ddim", "ddpm"]
    steps: int  # sampler steps (formulations without a knob ignore them)
    samples: int  # mean of N samples per tile
    eta: float
    seed: int  # tile noise = f(seed, image key, tile position)
    precision: Literal["auto", "bf16", "fp32"]
    tile: int  # input (LQ) pixels
    tile_overlap: int
    tile_batch: int
    color_correction: Literal["none", "meanstd", "wavelet"]

    def describe(self) -> dict[str, Any]:
        """The spec as a JSON-able dict (for protocol.json, manifests and reports)."""
        return dataclasses.asdict(self)


def sampling_spec(r: Any, infer: InferConfig, **overrides: Any) -> SamplingSpec:
    """Resolve the sampling settings for restorer `r` (a `model.Restorer`).

    infer: the params' `infer` section; steps/samples that are null come from the checkpoint's
    recommendation, else the formulation's default (`model.recommended_sampling`); the tile is
    at least the checkpoint's `model.recommended_min_tile`. overrides:
    explicit values for a sweep (e.g. steps=8, samples=4, seed=1); None values are ignored.
    Raises ValueError for steps or samples < 1 or an unknown field.
    """
    from diffenhance.model import recommended_min_tile, sampling

    steps, samples = sampling(r, infer.steps, infer.samples)
    base = {f.name: getattr(infer, f.name) for f in dataclasses.fields(SamplingSpec)}
    base |= {"steps": steps, "samples": samples, "tile": max(infer.tile, recommended_min_tile(r))}
    unknown = set(overrides) - set(base)
    if unknown:
        raise ValueError(f"unknown sampling setting(s) {sorted(unknown)}; known: {sorted(base)}")
    spec = SamplingSpec(**(base | {k: v for k, v in overrides.items() if v is not None}))
    if spec.steps < 1 or spec.samples < 1:
        raise ValueError(f"steps and samples must be >= 1, got {spec.steps} and {spec.samples}")
    return spec


def image_key(image: np.ndarray) -> str:
    """Content key of a decoded image (HxWx3 float32): seeds its tiles' noise."""
    a = np.ascontiguousarray(image, dtype=np.float32)
    h = hashlib.blake2b(digest_size=16)
    h.update(repr(a.shape).encode())
    h.update(a.tobytes())
    return h.hexdigest()


def engine(r: Any, spec: SamplingSpec) -> TiledEnhancer:
    """The tiled engine around restorer `r` running `spec` (reuse it for many images)."""
    return TiledEnhancer(RestorerTiles.from_spec(r, spec), spec)


def restore(r: Any, image: np.ndarray, spec: SamplingSpec, *, key: str | None = None) -> np.ndarray:
    """Restore one image: HxWx3 float32 in [0, 1] -> (H*scale)x(W*scale)x3 float32 in [0, 1].

    key: the noise key (default `image_key(image)`: the same pixels give the same output)."""
    return engine(r, spec).enhance(image, image_key(image) if key is None else key)
