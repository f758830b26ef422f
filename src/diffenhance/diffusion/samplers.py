"""Samplers: ancestral DDPM and DDIM, with one shared signature.

References: Ho et al. 2020, "Denoising Diffusion Probabilistic Models" (Alg. 2, posterior
eqs. 6-7); Song et al. 2021, "Denoising Diffusion Implicit Models" (eq. 12, eta; eq. 16 sigma);
Nichol & Dhariwal 2021, "Improved DDPM" (respacing a chain to fewer steps); Lin et al. 2023,
"Common Diffusion Noise Schedules and Sample Steps are Flawed" (trailing timestep spacing).

Timestep spacing is "trailing": t_i = round(T - i * T / steps) - 1 for i = 0..steps-1, so the
first step always starts at t = T - 1 (where x_T ~ N(0, I) is closest to true) and the last
step goes to alpha_bar = 1, i.e. returns the model's x0 prediction at t_{steps-1}.

Every sampler is deterministic given x_T and `generator` (x_T is drawn by the caller), runs
under `torch.no_grad()`, and calls the model as `model(x_t, t, cond)` with `t` a float32 [N]
tensor holding the ORIGINAL timestep index (0..T-1), whatever the number of steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch

from diffenhance.diffusion.noise import FieldGenerator
from diffenhance.diffusion.process import PREDICTIONS, pred_to_x0_eps, x0_to_eps
from diffenhance.diffusion.schedule import Schedule

Model = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def trailing_timesteps(T: int, steps: int) -> list[int]:
    """Descending original timesteps visited by a `steps`-step sampler over a T-step chain.

    t_i = round(T - i * T / steps) - 1, i = 0..steps-1 (Lin et al. 2023, table 2 "trailing").
    Raises ValueError unless 1 <= steps <= T.
    """
    if not isinstance(steps, int | np.integer) or not 1 <= steps <= T:
        raise ValueError(f"steps must be an integer in 1..{T} (the schedule's T), got {steps!r}")
    ts = [int(round(T - i * T / steps)) - 1 for i in range(steps)]
    assert (
        all(a > b for a, b in zip(ts[:-1], ts[1:], strict=True)) and ts[0] == T - 1 and ts[-1] >= 0
    )
    return ts


def _check(sched: Schedule, x_T: torch.Tensor, cond: torch.Tensor, prediction: str, eta: float):
    if prediction not in PREDICTIONS:
        raise ValueError(f"unknown prediction {prediction!r}; choose one of {PREDICTIONS}")
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    if x_T.ndim != 4 or cond.ndim != 4 or x_T.shape[0] != cond.shape[0]:
        raise ValueError(
            f"x_T {tuple(x_T.shape)} and cond {tuple(cond.shape)} must be [N, C, H, W] batches "
            "of the same size"
        )


def _randn(like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """N(0, I) noise shaped like `like`, drawn on the generator's device, moved to like's; a
    tile's `FieldGenerator` (one item: tiles run alone when a sampler adds noise per step)
    gives its crop of the image's next noise field, as for the start noise."""
    if isinstance(generator, FieldGenerator) and like.shape[0] == 1:
        return generator.draw(tuple(like.shape[1:]))[None].to(like)
    device = generator.device if generator is not None else like.device
    z = torch.randn(like.shape, generator=generator, device=device, dtype=like.dtype)
    return z.to(like.device)


def _predict(
    model: Model,
    sched: Schedule,
    x: torch.Tensor,
    t: int,
    cond: torch.Tensor,
    prediction: str,
    clip_x0: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x0, eps) predicted at original timestep t; with clip_x0, x0 is clamped to [-1, 1]
    and eps recomputed from it so that the two stay consistent (as in guided-diffusion)."""
    n = x.shape[0]
    t_model = torch.full((n,), float(t), device=x.device, dtype=torch.float32)
    t_idx = torch.full((n,), t, device=sched.device, dtype=torch.long)
    x0, eps = pred_to_x0_eps(sched, x, t_idx, model(x, t_model, cond), prediction)
    if clip_x0:
        x0 = x0.clamp(-1.0, 1.0)
        eps = x0_to_eps(sched, x, t_idx, x0)
    return x0, eps


def _progress(it: Iterable[Any], enabled: bool, desc: str) -> Iterable[Any]:
    if not enabled:
        return it
    from tqdm.auto import tqdm

    return tqdm(it, desc=desc, leave=False)


@torch.no_grad()
def ddpm_sample(
    model: Model,
    sched: Schedule,
    x_T: torch.Tensor,
    cond: torch.Tensor,
    *,
    steps: int,
    eta: float = 1.0,
    prediction: str,
    generator: torch.Generator | None = None,
    clip_x0: bool = True,
    progress: bool = False,
) -> torch.Tensor:
    """Ancestral DDPM sampling (Ho et al. Alg. 2) on the chain respaced to `steps` steps.

    x_T: [N, 3, H, W] starting noise; cond: [N, C, H, W] condition, both on the model's
    device, in the model range. With steps < T the chain visits the trailing timesteps with
    betas respaced so that alpha_bar is unchanged there (steps = T is plain DDPM). `eta` scales
    the std of the added noise: 1 = posterior variance beta-tilde (Ho et al. sigma^2 = beta~),
    0 = posterior mean only (deterministic). Returns x_0 [N, 3, H, W] in x_T's dtype,
    in [-1, 1] when clip_x0.
    """
    _check(sched, x_T, cond, prediction, eta)
    ts = trailing_timesteps(sched.num_timesteps, steps)
    post = sched.respaced(
        ts, device="cpu"
    ).f64  # index k of the respaced chain = ascending position of t
    x = x_T
    for i, t in enumerate(_progress(ts, progress, "ddpm")):
        k = steps - 1 - i
        # Alg. 2 line 4 (x0 form): predict x0 from x_t, the model output and alpha_bar_t.
        x0, _ = _predict(model, sched, x, t, cond, prediction, clip_x0)
        # Posterior mean mu~(x_t, x0) (Ho et al. eq. 7) on the respaced chain.
        c1, c2 = float(post["posterior_mean_coef1"][k]), float(post["posterior_mean_coef2"][k])
        x = c1 * x0 + c2 * x
        # Alg. 2 line 4, noise term: sigma_t z with sigma^2 = eta^2 beta~_t (0 at the last step).
        sigma = eta * math.sqrt(float(post["posterior_variance"][k]))
        if sigma > 0:
            x = x + sigma * _randn(x, generator)
    return x


@torch.no_grad()
def ddim_sample(
    model: Model,
    sched: Schedule,
    x_T: torch.Tensor,
    cond: torch.Tensor,
    *,
    steps: int,
    eta: float = 0.0,
    prediction: str,
    generator: torch.Generator | None = None,
    clip_x0: bool = True,
    progress: bool = False,
) -> torch.Tensor:
    """DDIM sampling (Song et al. eq. 12) over `steps` trailing timesteps.

    Same arguments as `ddpm_sample`. eta = 0 is deterministic (the generator is unused);
    eta = 1 matches DDPM's posterior variance. Returns x_0 [N, 3, H, W] in x_T's dtype,
    in [-1, 1] when clip_x0.
    """
    _check(sched, x_T, cond, prediction, eta)
    ts = trailing_timesteps(sched.num_timesteps, steps)
    ab = sched.alphas_cumprod_f64
    x = x_T
    for i, t in enumerate(_progress(ts, progress, "ddim")):
        a_t = float(ab[t])
        a_prev = float(ab[ts[i + 1]]) if i + 1 < steps else 1.0  # last step: alpha_bar = 1
        # Eq. 12, "predicted x0" and the eps it implies.
        x0, eps = _predict(model, sched, x, t, cond, prediction, clip_x0)
        # Eq. 16: sigma_t(eta) = eta sqrt((1 - a_prev) / (1 - a_t)) sqrt(1 - a_t / a_prev).
        sigma = eta * math.sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))
        # Eq. 12: x_prev = sqrt(a_prev) x0 + sqrt(1 - a_prev - sigma^2) eps + sigma z.
        x = math.sqrt(a_prev) * x0 + math.sqrt(max(1 - a_prev - sigma**2, 0.0)) * eps
        if sigma > 0:
            x = x + sigma * _randn(x, generator)
    return x


SAMPLERS: dict[str, Callable[..., torch.Tensor]] = {"ddpm": ddpm_sample, "ddim": ddim_sample}


def sample(
    name: str,
    model: Model,
    sched: Schedule,
    x_T: torch.Tensor,
    cond: torch.Tensor,
    **kwargs: Any,
) -> torch.Tensor:
    """Run the sampler called `name` ('ddpm' | 'ddim') with the shared keyword arguments
    (steps, eta, prediction, generator, clip_x0, progress). Returns x_0 [N, 3, H, W]."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {sorted(SAMPLERS)}")
    return SAMPLERS[name](model, sched, x_T, cond, **kwargs)
