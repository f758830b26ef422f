"""Forward process, prediction targets and the training loss.

References: Ho et al. 2020, "Denoising Diffusion Probabilistic Models" (q(x_t | x_0), eq. 4;
eps-prediction); Salimans & Ho 2022, "Progressive Distillation for Fast Sampling of Diffusion
Models" (v-prediction, v = sqrt(ab) eps - sqrt(1 - ab) x0); Hang et al. 2023, "Efficient
Diffusion Training via Min-SNR Weighting Strategy" (loss weights).

Notation: ab = alpha_bar_t = alphas_cumprod[t]. All images are in the model range [-1, 1]
(`to_model_range` maps [0, 1] images there). Coefficients are gathered from the schedule at
integer timesteps `t` ([N], long or float holding integers) and cast to the image dtype.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from diffenhance.diffusion.schedule import Schedule

PREDICTIONS = ("eps", "v", "x0")
LOSSES = ("l1", "mse")


def to_model_range(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] image -> [-1, 1] (same shape and dtype)."""
    return x * 2.0 - 1.0


def from_model_range(x: torch.Tensor, clamp: bool = True) -> torch.Tensor:
    """[-1, 1] model output -> [0, 1] image (clamped to [0, 1] unless `clamp=False`)."""
    y = (x + 1.0) * 0.5
    return y.clamp(0.0, 1.0) if clamp else y


def _check_prediction(prediction: str) -> None:
    if prediction not in PREDICTIONS:
        raise ValueError(f"unknown prediction {prediction!r}; choose one of {PREDICTIONS}")


def extract(arr: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """arr[t] reshaped to [N, 1, 1, 1] (broadcastable to `like`), in like's dtype and device."""
    t = t.to(arr.device).long()
    return arr[t].to(device=like.device, dtype=like.dtype).reshape(-1, *([1] * (like.ndim - 1)))


def _coefs(
    sched: Schedule, t: torch.Tensor, like: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    return (
        extract(sched.sqrt_alphas_cumprod, t, like),
        extract(sched.sqrt_one_minus_alphas_cumprod, t, like),
    )


def q_sample(
    sched: Schedule, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor
) -> torch.Tensor:
    """Sample q(x_t | x_0) (Ho et al. eq. 4): x_t = sqrt(ab) x0 + sqrt(1 - ab) noise.

    x0, noise: [N, C, H, W]; t: [N] integer timesteps. Returns [N, C, H, W] in x0's dtype.
    """
    a, s = _coefs(sched, t, x0)
    return a * x0 + s * noise


def make_target(
    sched: Schedule, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, prediction: str
) -> torch.Tensor:
    """Regression target for `prediction`: 'eps' -> noise, 'x0' -> x0,
    'v' -> sqrt(ab) noise - sqrt(1 - ab) x0. Shapes [N, C, H, W]."""
    _check_prediction(prediction)
    if prediction == "eps":
        return noise
    if prediction == "x0":
        return x0
    a, s = _coefs(sched, t, x0)
    return a * noise - s * x0


def eps_to_x0(
    sched: Schedule, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor
) -> torch.Tensor:
    """x0 = (x_t - sqrt(1 - ab) eps) / sqrt(ab)."""
    a, s = _coefs(sched, t, x_t)
    return (x_t - s * eps) / a


def x0_to_eps(
    sched: Schedule, x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor
) -> torch.Tensor:
    """eps = (x_t - sqrt(ab) x0) / sqrt(1 - ab)."""
    a, s = _coefs(sched, t, x_t)
    return (x_t - a * x0) / s


def v_to_x0(sched: Schedule, x_t: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """x0 = sqrt(ab) x_t - sqrt(1 - ab) v."""
    a, s = _coefs(sched, t, x_t)
    return a * x_t - s * v


def v_to_eps(sched: Schedule, x_t: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """eps = sqrt(1 - ab) x_t + sqrt(ab) v."""
    a, s = _coefs(sched, t, x_t)
    return s * x_t + a * v


def pred_to_x0_eps(
    sched: Schedule, x_t: torch.Tensor, t: torch.Tensor, pred: torch.Tensor, prediction: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Model output of kind `prediction` -> (x0, eps), both [N, C, H, W] in x_t's dtype.

    Exact algebraic conversions; no clipping (samplers clip x0 themselves).
    """
    _check_prediction(prediction)
    pred = pred.to(x_t.dtype)
    if prediction == "eps":
        return eps_to_x0(sched, x_t, t, pred), pred
    if prediction == "x0":
        return pred, x0_to_eps(sched, x_t, t, pred)
    return v_to_x0(sched, x_t, t, pred), v_to_eps(sched, x_t, t, pred)


def min_snr_weight(snr: torch.Tensor, gamma: float, prediction: str) -> torch.Tensor:
    """Min-SNR-gamma loss weight per sample (Hang et al. 2023, sec. 3.4), [N] like `snr`.

    x0 target: min(snr, g); eps target: min(snr, g) / snr; v target: min(snr, g) / (snr + 1).
    """
    _check_prediction(prediction)
    clipped = snr.clamp(max=gamma)
    if prediction == "x0":
        return clipped
    if prediction == "eps":
        return clipped / snr
    return clipped / (snr + 1.0)


def training_loss(
    model: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    sched: Schedule,
    x0: torch.Tensor,
    cond: torch.Tensor,
    *,
    prediction: str,
    loss: str,
    min_snr_gamma: float = 0.0,
    generator: torch.Generator | None = None,
    t: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Denoising loss on one batch (Ho et al. Alg. 1, with a choice of target).

    x0: [N, 3, H, W] clean images in [-1, 1]; cond: [N, C, H, W] condition in [-1, 1], already
    at the output size. Draws t ~ U{0..T-1} (unless `t` [N] is given) and noise ~ N(0, I) from
    `generator` (any device; results are moved to x0's device), builds x_t, calls
    `model(x_t, t.float(), cond)` and compares with the `prediction` target by `loss`
    ('l1' | 'mse', mean over C, H, W). With `min_snr_gamma > 0` each sample is weighted by the
    min-SNR weight. Returns (scalar loss with grad, stats of detached 0-d tensors:
    'loss', 'loss_unweighted', 'weight_mean', 't_mean') -- call .item() only when logging.
    """
    _check_prediction(prediction)
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; choose one of {LOSSES}")
    if min_snr_gamma < 0:
        raise ValueError(f"min_snr_gamma must be >= 0 (0 disables it), got {min_snr_gamma}")
    n, device = x0.shape[0], x0.device
    gen_device = generator.device if generator is not None else device
    if t is None:
        t = torch.randint(0, sched.num_timesteps, (n,), generator=generator, device=gen_device).to(
            device
        )
    elif t.shape != (n,):
        raise ValueError(f"t must have shape [{n}], got {tuple(t.shape)}")
    t = t.to(device=device, dtype=torch.long)
    noise = torch.randn(x0.shape, generator=generator, device=gen_device, dtype=x0.dtype)
    noise = noise.to(device)

    x_t = q_sample(sched, x0, t, noise)
    target = make_target(sched, x0, t, noise, prediction)
    pred = model(x_t, t.float(), cond).float()
    err = pred - target.float()
    per_sample = (err.abs() if loss == "l1" else err.square()).mean(dim=tuple(range(1, x0.ndim)))
    if min_snr_gamma > 0:
        snr = extract(sched.snr, t, per_sample).reshape(n)
        weight = min_snr_weight(snr, min_snr_gamma, prediction)
    else:
        weight = torch.ones_like(per_sample)
    total = (weight * per_sample).mean()
    stats = {
        "loss": total.detach(),
        "loss_unweighted": per_sample.detach().mean(),
        "weight_mean": weight.detach().mean(),
        "t_mean": t.float().mean(),
    }
    return total, stats
