"""Restoration formulations: how the network is trained and sampled, behind two entry points.

`formulation_loss` (used by `train.train_task`) and `formulation_sample` (used by
`Restorer.restore`) dispatch on `diffusion.formulation`:

* ``sr3`` - conditional diffusion from pure noise (Saharia et al. 2021, "Image Super-Resolution
  via Iterative Refinement"): `process.training_loss` + the DDPM/DDIM samplers. The reference.
* ``regression`` - the same U-Net as a one-shot regressor: x^ = y + net(y, 0, y), L1/L2 to x.
  The same-size regression baseline (one network evaluation; steps and samples are ignored).
* ``indi`` - Inversion by Direct Iteration (Delbracio & Milanfar 2023; see `indi.py`): starts
  at the degraded image; 1 step = a regression, more steps = sharper, the mean of several
  samples (different start noise) = more faithful.
* ``residual`` - predict and refine (Whang et al. 2022, "Deblurring via Stochastic Refinement";
  Shang et al. 2024, "ResDiff"): a small predictor U-Net gives mu (trained with L1/L2 to x),
  and SR3 diffusion models the scaled residual r = s (x - mu) conditioned on mu; x^ = mu + r^/s.
  1 DDIM step from pure noise returns about mu + E[r], more steps add sampled detail.

The network is whatever `model.build_network` made for the formulation: a `UNet` for sr3,
regression and indi; a `nn.predict_refine.PredictRefine` for residual. Images are in the model
range [-1, 1]; `cond` is the degraded image upsampled to the output size.

Randomness: `generator` is one `torch.Generator` for the whole batch, or one per batch item
(a sequence), in which case item i draws all its randomness from generator i, so a result
does not depend on how items were batched.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import get_args

import torch

from diffenhance.config import DiffusionConfig, Formulation
from diffenhance.diffusion.indi import indi_loss, indi_sample
from diffenhance.diffusion.process import training_loss
from diffenhance.diffusion.samplers import sample
from diffenhance.diffusion.schedule import Schedule

FORMULATIONS: tuple[str, ...] = get_args(Formulation)  # sr3, regression, indi, residual
Generators = torch.Generator | Sequence[torch.Generator] | None
Model = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _check(dcfg: DiffusionConfig) -> str:
    if dcfg.formulation not in FORMULATIONS:
        raise ValueError(
            f"unknown diffusion.formulation {dcfg.formulation!r}; choose one of {FORMULATIONS}"
        )
    return dcfg.formulation


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside DDP (`.module`) and/or torch.compile (`._orig_mod`) wrappers."""
    while True:
        inner = getattr(model, "_orig_mod", None) or getattr(model, "module", None)
        if not isinstance(inner, torch.nn.Module):
            return model
        model = inner


def draw_normal(
    shape: Sequence[int], generator: Generators, device: torch.device | str
) -> torch.Tensor:
    """N(0, I) float32 of `shape` [N, ...] on `device`, drawn on the generator's device.

    One generator (or None: the global CPU RNG) draws the whole batch; a sequence of N
    generators draws item i from generator i (for N = 1 both give the same numbers).
    """
    if generator is None or isinstance(generator, torch.Generator):
        gdev = generator.device if generator is not None else torch.device("cpu")
        return torch.randn(tuple(shape), generator=generator, device=gdev).to(device)
    gens = list(generator)
    if len(gens) != shape[0]:
        raise ValueError(f"{len(gens)} generators for a batch of {shape[0]}: pass one per item")
    items = [torch.randn(tuple(shape[1:]), generator=g, device=g.device) for g in gens]
    return torch.stack(items).to(device)


def regress(model: Model, y: torch.Tensor) -> torch.Tensor:
    """The one-shot regression x^ = y + model(y, 0, y): y [N, 3, H, W] -> [N, 3, H, W]."""
    t = torch.zeros(y.shape[0], device=y.device)
    return y + model(y, t, y).to(y.dtype)


def _pixel_loss(pred: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-sample mean |pred - target| ('l1') or squared error ('mse'), float32 [N]."""
    err = pred.float() - target.float()
    return (err.abs() if kind == "l1" else err.square()).mean(dim=tuple(range(1, pred.ndim)))


# ----------------------------------------------------------------------------- training


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
    kind = _check(dcfg)
    if kind == "sr3":
        return training_loss(
            model, sched, x0, cond, prediction=dcfg.prediction, loss=dcfg.loss,
            min_snr_gamma=dcfg.min_snr_gamma, generator=generator,
        )  # fmt: skip
    if kind == "regression":
        total = _pixel_loss(regress(model, cond), x0, dcfg.loss).mean()
        return total, {"loss": total.detach()}
    if kind == "indi":
        return indi_loss(
            model, x0, cond, sigma=dcfg.indi_noise, t1_prob=dcfg.indi_t1_prob,
            loss=dcfg.loss, generator=generator,
        )  # fmt: skip
    return _residual_loss(dcfg, model, sched, x0, cond, generator=generator)


def _residual_loss(dcfg, model, sched, x0, cond, *, generator):
    """Predictor loss ||mu - x0|| + SR3 loss on r = s (x0 - mu) conditioned on mu."""
    inner = unwrap(model)
    with torch.no_grad():  # mu for building r_t; the forward below recomputes it with grad
        mu0 = inner.predict(cond).to(x0.dtype)
    r = dcfg.residual_scale * (x0 - mu0)
    held: dict[str, torch.Tensor] = {}

    def denoiser(x_t: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        out = model(x_t, t, c)  # PredictRefine.forward: [denoiser prediction, mu]
        held["mu"] = out[:, 3:]
        return out[:, :3]

    diff, stats = training_loss(
        denoiser, sched, r, cond, prediction=dcfg.prediction, loss=dcfg.loss,
        min_snr_gamma=dcfg.min_snr_gamma, generator=generator,
    )  # fmt: skip
    pred = _pixel_loss(held["mu"], x0, dcfg.loss).mean()
    total = diff + pred
    return total, {**stats, "loss": total.detach(), "loss_diffusion": diff.detach(),
                   "loss_predictor": pred.detach()}  # fmt: skip


# ----------------------------------------------------------------------------- sampling


def stochastic_steps(dcfg: DiffusionConfig, sampler: str, eta: float) -> bool:
    """Whether sampling draws noise after its start (so per-item generators run item by item)."""
    kind = _check(dcfg)
    if kind == "regression":
        return False
    if kind == "indi":
        return eta > 0 and dcfg.indi_noise > 0
    return eta > 0  # ddim and ddpm are both deterministic at eta = 0


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
) -> torch.Tensor:
    """Restore a batch: cond [N, 3, H, W] in [-1, 1] -> x0 [N, 3, H, W] in [-1, 1] (clipped
    when clip_x0), the mean of `samples` independent samples.

    Draws its own start (x_T for sr3/residual, x_1 = y + sigma eps for indi) from `generator`.
    steps: sampler steps (1..T for sr3/residual, >= 1 for indi; ignored by regression).
    sampler/eta: 'ddim' | 'ddpm' and its eta for sr3/residual; for indi eta in [0, 1] is the
    share of fresh noise per step (the sampler name is unused). A pure function of (weights,
    cond, generator states, arguments).
    """
    kind = _check(dcfg)
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    if kind == "regression":
        x = regress(model, cond)
        return x.clamp(-1, 1) if clip_x0 else x
    if (
        generator is not None
        and not isinstance(generator, torch.Generator)
        and stochastic_steps(dcfg, sampler, eta)
        and cond.shape[0] > 1
    ):  # per-item generators and per-step noise: run each item alone
        gens = list(generator)
        if len(gens) != cond.shape[0]:
            raise ValueError(f"{len(gens)} generators for a batch of {cond.shape[0]}")
        args = dict(steps=steps, sampler=sampler, eta=eta, samples=samples, clip_x0=clip_x0)
        return torch.cat(
            [
                formulation_sample(dcfg, model, sched, cond[i : i + 1], generator=g, **args)
                for i, g in enumerate(gens)
            ]
        )
    step_gen = generator if isinstance(generator, torch.Generator) else None
    if not isinstance(generator, torch.Generator) and generator is not None:
        step_gen = list(generator)[0]  # one item (or deterministic steps): its own generator
    mu = unwrap(model).predict(cond) if kind == "residual" else None
    acc = None
    for _ in range(samples):
        if kind == "sr3":
            x_T = draw_normal(cond.shape, generator, cond.device).to(cond.dtype)
            x = sample(
                sampler, model, sched, x_T, cond, steps=steps, eta=eta,
                prediction=dcfg.prediction, generator=step_gen, clip_x0=clip_x0,
                progress=progress,
            )  # fmt: skip
        elif kind == "indi":
            eps = draw_normal(cond.shape, generator, cond.device).to(cond.dtype)
            x = indi_sample(
                model, cond + dcfg.indi_noise * eps, cond, steps=steps, sigma=dcfg.indi_noise,
                eta=eta, randn=lambda like: draw_normal(like.shape, step_gen, like.device),
                progress=progress,
            )  # fmt: skip
        else:
            x = _residual_sample(
                dcfg, model, sched, mu, steps=steps, sampler=sampler, eta=eta,
                generator=generator, step_gen=step_gen, progress=progress,
            )  # fmt: skip
        if clip_x0:
            x = x.clamp(-1, 1)
        acc = x if acc is None else acc + x
    return acc / samples if samples > 1 else acc


def _residual_sample(dcfg, model, sched, mu, *, steps, sampler, eta, generator, step_gen, progress):
    """SR3 (DDIM/DDPM) on the scaled residual conditioned on mu; returns mu + r^ / s."""
    inner = unwrap(model)
    r_T = draw_normal(mu.shape, generator, mu.device).to(mu.dtype)
    r = sample(
        sampler, inner.denoise, sched, r_T, mu, steps=steps, eta=eta,
        prediction=dcfg.prediction, generator=step_gen, clip_x0=False, progress=progress,
    )  # fmt: skip
    return mu + r / dcfg.residual_scale
