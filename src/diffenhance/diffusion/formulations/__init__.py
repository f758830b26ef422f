"""Restoration formulations: how the network is trained and sampled, one registered object each.

The registry (`base.py`) maps `diffusion.formulation` to a `Formulation`; the built-ins are

* ``sr3`` (`sr3.py`) - conditional diffusion from pure noise, the reference;
* ``regression`` (`regression.py`) - the same network as a one-shot regressor;
* ``indi`` (`indi.py`) - Inversion by Direct Iteration, starts at the degraded image;
* ``residual`` (`residual.py`) - predict and refine: diffusion on the residual over a predictor;
* ``pmrf`` (`pmrf.py`) - posterior-mean rectified flow: a flow from the mean to the image.

Two entry points dispatch through the registry and never on a name: `formulation_loss` (used
by training) and `formulation_moments` (the one sample driver, used by `Restorer.restore`;
`formulation_sample` is its mean), which also owns what every formulation shares: averaging
`samples` samples, their per-pixel variance (uncertainty maps), clipping, and per-item
generators.

Images are in the model range [-1, 1]; `cond` is the degraded image upsampled to the output
size. Randomness: `generator` is one `torch.Generator` for the whole batch, or one per batch
item (a sequence), in which case item i draws all its randomness from generator i, so a result
does not depend on how items were batched.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from diffenhance.config import DiffusionConfig

# importing the built-in formulations registers them
from diffenhance.diffusion.formulations import indi, pmrf, regression, residual, sr3  # noqa: F401
from diffenhance.diffusion.formulations.base import (
    Formulation,
    Generators,
    Model,
    draw_normal,
    formulation_names,
    get_formulation,
    register,
    unregister,
    unwrap,
)
from diffenhance.diffusion.formulations.regression import regress
from diffenhance.diffusion.schedule import Schedule

FORMULATIONS: tuple[str, ...] = (
    formulation_names()
)  # the built-ins: sr3, regression, indi, residual

__all__ = [
    "FORMULATIONS",
    "Formulation",
    "Generators",
    "Model",
    "draw_normal",
    "Moments",
    "deterministic_reason",
    "formulation_loss",
    "formulation_moments",
    "formulation_names",
    "formulation_sample",
    "get_formulation",
    "regress",
    "register",
    "stochastic_steps",
    "unregister",
    "unwrap",
]


def formulation_loss(
    dcfg: DiffusionConfig,
    model: torch.nn.Module,
    sched: Schedule,
    x0: torch.Tensor,
    cond: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Training loss of `dcfg.formulation` on one batch; calls `model` (maybe DDP) once.

    x0: [N, 3, H, W] clean images in [-1, 1]; cond: [N, 3, H, W] degraded images upsampled to
    the output size, in [-1, 1]. Randomness (timesteps, noise) comes from `generator`.
    Returns (scalar loss with grad, stats: detached 0-d tensors, always with 'loss').
    """
    f = get_formulation(dcfg.formulation)
    return f.loss(dcfg, model, sched, x0, cond, generator=generator)


def stochastic_steps(dcfg: DiffusionConfig, sampler: str, eta: float) -> bool:
    """Whether sampling draws noise after its start (so per-item generators run item by item)."""
    return get_formulation(dcfg.formulation).draws_noise(dcfg, sampler, eta)


def deterministic_reason(dcfg: DiffusionConfig, sampler: str, eta: float) -> str | None:
    """Why samples of `dcfg.formulation` cannot differ under (sampler, eta); None when they do."""
    return get_formulation(dcfg.formulation).deterministic_reason(dcfg, sampler, eta)


class Moments(NamedTuple):
    """What the sample driver returns: the mean of the samples and, when asked, their spread."""

    mean: torch.Tensor  # [N, 3, H, W] model range
    var: torch.Tensor | None  # [N, 3, H, W] float32 per-channel sample variance (1 / (n - 1))


class _Welford:
    """Running per-element variance (Welford 1962), float32: stable where sum/sumsq cancels."""

    def __init__(self) -> None:
        self.n, self.mean, self.m2 = 0, torch.zeros(()), torch.zeros(())

    def add(self, x: torch.Tensor) -> None:
        x = x.float()
        self.n += 1
        delta = x - self.mean
        self.mean = self.mean + delta / self.n
        self.m2 = self.m2 + delta * (x - self.mean)

    def variance(self, like: torch.Tensor) -> torch.Tensor:
        """The unbiased sample variance; 0 for a single sample (no spread to measure)."""
        if self.n < 2:
            return torch.zeros(like.shape, dtype=torch.float32, device=like.device)
        return self.m2 / (self.n - 1)


@torch.no_grad()
def formulation_sample(
    dcfg: DiffusionConfig,
    model: torch.nn.Module,
    sched: Schedule,
    cond: torch.Tensor,
    *,
    steps: int,
    sampler: str = "ddim",
    eta: float = 0.0,
    generator: Generators = None,
    samples: int = 1,
    clip_x0: bool = True,
    progress: bool = False,
    detail: float = 1.0,
) -> torch.Tensor:
    """Restore a batch: cond [N, 3, H, W] in [-1, 1] -> x0 [N, 3, H, W] in [-1, 1] (clipped
    when clip_x0), the mean of `samples` independent samples (`formulation_moments`' mean)."""
    return formulation_moments(
        dcfg, model, sched, cond, steps=steps, sampler=sampler, eta=eta, generator=generator,
        samples=samples, clip_x0=clip_x0, progress=progress, detail=detail,
    ).mean  # fmt: skip


def _detail_argument(f: Formulation, detail: float) -> dict[str, float]:
    """`sample_once`'s detail keyword for `f` ({} for a formulation without the knob);
    ValueError for detail outside [0, 1], or other than 1 where `f` has no detail knob."""
    if not 0.0 <= detail <= 1.0 or (detail != 1.0 and not f.detail_knob):
        raise ValueError(
            f"detail must be in [0, 1] (and 1 for the {f.name} formulation, which has no detail "
            f"knob: use steps), got {detail}"
        )
    return {"detail": detail} if f.detail_knob else {}


@torch.no_grad()
def formulation_moments(
    dcfg: DiffusionConfig,
    model: torch.nn.Module,
    sched: Schedule,
    cond: torch.Tensor,
    *,
    steps: int,
    sampler: str = "ddim",
    eta: float = 0.0,
    generator: Generators = None,
    samples: int = 1,
    clip_x0: bool = True,
    progress: bool = False,
    variance: bool = False,
    detail: float = 1.0,
) -> Moments:
    """The one sample driver: cond [N, 3, H, W] in [-1, 1] -> `Moments`: the mean of `samples`
    independent samples in [-1, 1] (each clipped when clip_x0) and, when `variance`, their
    per-channel unbiased variance (Welford; 0 with one sample). The mean is the same bits with
    or without `variance` (it is summed and divided exactly as before).

    The formulation draws its own start from `generator`. steps: sampler steps (1..T for
    sr3/residual, >= 1 for indi; unused by formulations without a knob). sampler/eta: 'ddim' |
    'ddpm' and its eta (indi: eta in [0, 1] is the share of fresh noise per step). A pure
    function of (weights, cond, generator states, arguments). detail in [0, 1]: for a
    formulation with a detail knob (`Formulation.detail_knob`), 0 = its posterior mean, 1 = its
    sample; others accept only 1.
    """
    f = get_formulation(dcfg.formulation)
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    knob = _detail_argument(f, detail)
    if f.detail_knob and detail == 0.0:
        samples = 1  # the posterior mean itself: every sample is the same image
    if f.deterministic_reason(dcfg, sampler, eta) is not None:
        samples = 1  # no randomness (e.g. indi with noise 0): every sample is the same image
    args = dict(steps=steps, sampler=sampler, eta=eta, samples=samples, clip_x0=clip_x0,
                variance=variance, detail=detail)  # fmt: skip
    per_item = generator is not None and not isinstance(generator, torch.Generator)
    if per_item and f.draws_noise(dcfg, sampler, eta) and cond.shape[0] > 1:
        # per-item generators and per-step noise: run each item alone
        gens = list(generator)  # type: ignore[arg-type]
        if len(gens) != cond.shape[0]:
            raise ValueError(f"{len(gens)} generators for a batch of {cond.shape[0]}")
        items = [
            formulation_moments(dcfg, model, sched, cond[i : i + 1], generator=g, **args)
            for i, g in enumerate(gens)
        ]
        var = torch.cat([m.var for m in items]) if variance else None  # type: ignore[misc]
        return Moments(torch.cat([m.mean for m in items]), var)
    # per-step noise: the one generator, or a single item's own (or deterministic steps)
    step_gen = list(generator)[0] if per_item else generator  # type: ignore[arg-type]
    prepared = f.prepare(dcfg, model, cond)
    acc = None
    spread = _Welford() if variance else None
    for _ in range(samples):
        x = f.sample_once(
            dcfg, model, sched, cond, prepared, steps=steps, sampler=sampler, eta=eta,
            generator=generator, step_gen=step_gen, progress=progress, clip_x0=clip_x0, **knob,
        )  # fmt: skip
        if clip_x0:
            x = x.clamp(-1, 1)
        acc = x if acc is None else acc + x
        if spread is not None:
            spread.add(x)
    assert acc is not None
    mean = acc / samples if samples > 1 else acc
    return Moments(mean, None if spread is None else spread.variance(mean))
