"""The one restore path: a resolved `SamplingSpec` and one tiled restore call.

Every front end runs a checkpoint through here - `enhance` (CLI and flow), `evaluate`,
`compare`, training-time validation, the notebook and the benchmarks - so a number in a
report measures exactly what `diffenhance enhance` writes (diffusers' one-pipeline-call idea):

    r = load_restorer("models/sr4")
    spec = sampling_spec(r, cfg.infer)                  # params + checkpoint recommendation
    hr = restore(r, lq, spec)                           # HxWx3 float32 [0,1] -> sHxsWx3
    hr, std = restore_with_uncertainty(r, lq, spec)     # + the spread of spec.samples samples

`sampling_spec` is the only place where sampler settings are resolved: `infer.*` from params,
each of steps/samples/detail left null filled from the checkpoint's preset `infer.preset`
(null: its default preset; `model.presets`: "fidelity" .. "detail", measured per model), else
the formulation's default (`Formulation.default_steps`), and the tile raised to the checkpoint's
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
    detail: float = 1.0  # formulations with a detail knob: 0 = posterior mean .. 1 = sample

    def describe(self) -> dict[str, Any]:
        """The spec as a JSON-able dict (for protocol.json, manifests and reports)."""
        return dataclasses.asdict(self)


def sampling_spec(r: Any, infer: InferConfig, **overrides: Any) -> SamplingSpec:
    """Resolve the sampling settings for restorer `r` (a `model.Restorer`).

    infer: the params' `infer` section; steps/samples that are null come from the checkpoint's
    recommendation, else the formulation's default (`model.recommended_sampling`); the tile is
    at least the checkpoint's `model.recommended_min_tile`; steps alone may imply a detail
    (`implied_detail`). overrides:
    explicit values for a sweep (e.g. steps=8, samples=4, seed=1), which `infer`'s fields of
    the same names are not read for; None values are ignored. Raises ValueError for steps or
    samples < 1 or an unknown field.
    """
    from diffenhance.diffusion.formulations import get_formulation
    from diffenhance.model import recommended_min_tile, sampling

    # An overridden field is never read from `infer`, so a stage whose every call overrides it
    # (training's validation: steps, samples, seed) need not list it as a DVC param.
    given = {k: v for k, v in overrides.items() if v is not None}

    def field(name: str) -> Any:
        return given[name] if name in given else getattr(infer, name)

    steps, samples, detail = sampling(r, field("steps"), field("samples"), field("detail"),
                                      infer.preset)  # fmt: skip
    # (a field overridden is not read from infer: the params recorder holds stages to that)
    implied = None if "steps" in given or "detail" in given else implied_detail(r, infer)
    detail = detail if implied is None else implied
    base = {f.name: field(f.name) for f in dataclasses.fields(SamplingSpec)}
    base |= {"steps": steps, "samples": samples, "detail": detail}
    if "tile" not in given:
        base["tile"] = max(infer.tile, recommended_min_tile(r))
    unknown = set(overrides) - set(base)
    if unknown:
        raise ValueError(f"unknown sampling setting(s) {sorted(unknown)}; known: {sorted(base)}")
    spec = SamplingSpec(**(base | given))
    if spec.steps < 1 or spec.samples < 1:
        raise ValueError(f"steps and samples must be >= 1, got {spec.steps} and {spec.samples}")
    if not 0.0 <= spec.detail <= 1.0:
        raise ValueError(f"detail must be in [0, 1], got {spec.detail}")
    f = get_formulation(r.diffusion_cfg.formulation)
    if spec.detail != 1.0 and not f.detail_knob:
        a = "an" if f.name[:1] in "aeiou" else "a"  # an indi, a regression
        raise ValueError(
            f"detail={spec.detail:g} asked of {a} {f.name} model, which has no detail knob: its "
            "knob is steps and samples (--steps, --samples; infer.steps, infer.samples): leave "
            "detail unset (--detail, infer.detail)"
        )
    return spec


def implied_detail(r: Any, infer: InferConfig) -> float | None:
    """The detail the user's steps alone ask for: `infer.steps` set with neither `infer.preset`
    nor `infer.detail`, on a model whose default preset is its posterior mean (detail 0, which no
    step count changes), runs at `model.detail_end` (its most detailed preset's detail), where
    steps act, as on evaluate's steps curve; None where the settings say or need no detail.
    `r`: a `model.Restorer` or a checkpoint's header (`model.CheckpointSpec`)."""
    from diffenhance.model import detail_end, sampling

    if infer.steps is None or infer.detail is not None or infer.preset is not None:
        return None
    return detail_end(r) if sampling(r, None, None)[2] == 0.0 else None


def image_key(image: np.ndarray) -> str:
    """Content key of a decoded image (HxWx3 float32): seeds its tiles' noise."""
    a = np.ascontiguousarray(image, dtype=np.float32)
    h = hashlib.blake2b(digest_size=16)
    h.update(repr(a.shape).encode())
    h.update(a.tobytes())
    return h.hexdigest()


def uncertainty_problem(r: Any, spec: SamplingSpec) -> str | None:
    """Why `spec` on restorer `r` cannot give an uncertainty map (the spread of its samples),
    saying what to do instead; None when it can. `r` is a `model.Restorer` or the
    `model.CheckpointSpec` of a file not yet loaded (both carry diffusion_cfg)."""
    from diffenhance.diffusion.formulations import deterministic_reason

    why = deterministic_reason(r.diffusion_cfg, spec.sampler, spec.eta)
    if why is not None:
        return (
            f"uncertainty maps need a model whose samples differ, but {why}: all samples are "
            "the same image. Use a model that samples (e.g. the shipped sr4; the shipped "
            "denoise does not) or an indi model trained with diffusion.options.indi.noise > 0"
        )
    if spec.detail == 0.0:
        return (
            "uncertainty maps are the spread of samples, but detail=0 is the posterior mean "
            "itself (every sample is the same image); pick a preset with detail > 0 (--preset "
            "balanced; `diffenhance models` lists them) or pass --detail, e.g. 1"
        )
    if spec.samples < 2:
        return (
            f"uncertainty maps are the spread of several samples, but samples={spec.samples} "
            "(infer.samples, or the model's recommendation when it is null); pass --samples N "
            "(infer.samples=N) with N >= 2, e.g. 4 (the output is then their mean)"
        )
    return None


def engine(r: Any, spec: SamplingSpec, *, uncertainty: bool = False) -> TiledEnhancer:
    """The tiled engine around restorer `r` running `spec` (reuse it for many images);
    `uncertainty`: it also returns each image's std map (ValueError when `uncertainty_problem`
    says it cannot)."""
    if uncertainty and (why := uncertainty_problem(r, spec)) is not None:
        raise ValueError(why)
    return TiledEnhancer(RestorerTiles.from_spec(r, spec), spec, uncertainty=uncertainty)


def restore(r: Any, image: np.ndarray, spec: SamplingSpec, *, key: str | None = None) -> np.ndarray:
    """Restore one image: HxWx3 float32 in [0, 1] -> (H*scale)x(W*scale)x3 float32 in [0, 1].

    key: the noise key (default `image_key(image)`: the same pixels give the same output)."""
    return engine(r, spec).enhance(image, image_key(image) if key is None else key)


def restore_with_uncertainty(
    r: Any, image: np.ndarray, spec: SamplingSpec, *, key: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """`restore` (the same bits) and its uncertainty map: (sHxsWx3 float32 in [0, 1], sHxsW
    float32 std >= 0 in [0, 1] intensity units: per pixel, the square root of the mean over RGB
    of each channel's unbiased variance across the `spec.samples` samples, cross-faded over
    tiles like the output). ValueError (`uncertainty_problem`) when the model's samples cannot
    differ or spec.samples < 2."""
    res = engine(r, spec, uncertainty=True).enhance_one(
        image, image_key(image) if key is None else key
    )
    assert res.image is not None and res.std is not None
    return res.image, res.std
