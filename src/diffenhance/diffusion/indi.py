"""Inversion by Direct Iteration (InDI): restoration as small steps from the degraded image.

Reference: Delbracio & Milanfar 2023, "Inversion by Direct Iteration: An Alternative to
Denoising Diffusion for Image Restoration", TMLR (arXiv 2303.11435). Related: Heitz et al.
2023, "Iterative alpha-(de)Blending"; Yue et al. 2023, "ResShift" (a Markov chain that also
starts from the degraded image, with a Gaussian noise schedule on the residual; InDI was
chosen here because one step of it is exactly a regression, which gives an honest knob).

Notation: x clean image, y degraded image at the output size, both in the model range
[-1, 1]; t in (0, 1]; sigma = `diffusion.options.indi.noise` (model range units). The network's
condition c is y itself, or y followed by side channels (inpainting's mask); the functions
below take c and read y as its first channels.

  (1) forward degradation:  x_t = (1 - t) x + t y + t sigma eps,   eps ~ N(0, I)
  (2) estimator:            F(x_t, t) = x_t + net(x_t, 1000 t, c)   (predicts x; L1/L2 to x)
  (3) update, t -> s < t:   x_s = (s / t) x_t + (1 - s / t) F(x_t, t)
  (4) update with fresh noise (eta in [0, 1]):
        eps^ = (x_t - (1 - t) F - t y) / (t sigma)                  (the noise x_t carries)
        x_s  = (1 - s) F + s y + s sigma (sqrt(1 - eta^2) eps^ + eta z),   z ~ N(0, I)

(3) is InDI's update with delta = t - s. With a constant sigma the noise that (3) carries over,
(s / t) t sigma eps = s sigma eps, is exactly the noise level (1) prescribes at s, so InDI's
noise-aware correction term, s sqrt(sigma_s^2 - sigma_t^2) z, is zero; (4) with eta = 0
equals (3) algebraically, and eta > 0 swaps part of the carried noise for fresh noise (as
DDIM's eta does). Sampling starts at t = 1 from x_1 = y + sigma eps, so one step returns
F(x_1, 1) (a regression on the noisy input), and more steps commit to detail gradually.
The residual parameterisation (2) makes the network's output 0 at initialisation = identity.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

Model = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
TIME_SCALE = 1000.0  # t in (0, 1] -> the U-Net's timestep input in (0, 1000], like DDPM's 0..999


def indi_degrade(
    x0: torch.Tensor, y: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, sigma: float
) -> torch.Tensor:
    """Eq. (1): x_t = (1 - t) x0 + t y + t sigma noise. x0, y, noise [N,C,H,W]; t [N] in [0, 1]."""
    tt = t.to(x0.dtype).reshape(-1, *([1] * (x0.ndim - 1)))
    return (1 - tt) * x0 + tt * y + tt * sigma * noise


def indi_estimate(
    model: Model, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor
) -> torch.Tensor:
    """Eq. (2): F(x_t, t) = x_t + model(x_t, 1000 t, cond). x_t [N,3,H,W], cond [N,C,H,W];
    t [N] float in (0, 1]."""
    return x_t + model(x_t, t.float() * TIME_SCALE, cond).to(x_t.dtype)


def indi_loss(
    model: Model,
    x0: torch.Tensor,
    y: torch.Tensor,
    *,
    sigma: float,
    t1_prob: float,
    loss: str,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """InDI training loss on one batch: || F(x_t, t) - x0 || ('l1' | 'mse', mean over pixels).

    x0: [N, 3, H, W] clean, y: [N, C, H, W] the condition (the degraded image at the output
    size in its first 3 channels), both in [-1, 1].
    t = 1 with probability `t1_prob` (the one-step regression point), else t ~ U(0, 1]; noise
    ~ N(0, I); both from `generator` (any device). Returns (scalar loss, detached stats).
    """
    n, device = x0.shape[0], x0.device
    gdev = generator.device if generator is not None else device
    u = torch.rand(n, generator=generator, device=gdev).to(device)
    at_one = torch.rand(n, generator=generator, device=gdev).to(device) < t1_prob
    t = torch.where(at_one, torch.ones_like(u), 1.0 - u)  # 1 - U[0, 1) lies in (0, 1]
    noise = torch.randn(x0.shape, generator=generator, device=gdev, dtype=x0.dtype).to(device)
    x_t = indi_degrade(x0, y[:, : x0.shape[1]], t, noise, sigma)
    err = indi_estimate(model, x_t, t, y).float() - x0.float()
    per_sample = (err.abs() if loss == "l1" else err.square()).mean(dim=tuple(range(1, x0.ndim)))
    total = per_sample.mean()
    return total, {"loss": total.detach(), "t_mean": t.mean()}


def indi_times(steps: int) -> list[float]:
    """The visited times 1 = t_0 > t_1 > ... > t_steps = 0, uniform: t_i = 1 - i / steps."""
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    return [1.0 - i / steps for i in range(steps)] + [0.0]


@torch.no_grad()
def indi_sample(
    model: Model,
    x_1: torch.Tensor,
    y: torch.Tensor,
    *,
    steps: int,
    sigma: float,
    eta: float = 0.0,
    randn: Callable[[torch.Tensor], torch.Tensor] | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Run the InDI chain from x_1 (= y + sigma eps, drawn by the caller) to t = 0.

    x_1: [N, 3, H, W], y: the condition [N, C, H, W] (the degraded image in its first 3
    channels), in the model range. `steps` uniform steps; eta in [0, 1] is the share
    of fresh noise per step (eq. 4; only used when sigma > 0), `randn(like)` draws it. Returns
    x_0 [N, 3, H, W] unclipped; with steps = 1 it is exactly F(x_1, 1).
    """
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must be in [0, 1] for the indi formulation, got {eta}")
    times = indi_times(steps)
    x, cond, y = x_1, y, y[:, : x_1.shape[1]]
    it = range(steps)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc="indi", leave=False)
    for i in it:
        t, s = times[i], times[i + 1]
        tt = torch.full((x.shape[0],), t, device=x.device, dtype=torch.float32)
        # Eq. (2): the model's estimate of the clean image at time t.
        f = indi_estimate(model, x, tt, cond)
        if s == 0.0:
            x = f  # eqs. (3)/(4) at s = 0: x_0 = F exactly
        elif eta > 0 and sigma > 0:
            # Eq. (4): recover the carried noise, keep sqrt(1 - eta^2) of it, add fresh noise.
            assert randn is not None
            eps_hat = (x - (1 - t) * f - t * y) / (t * sigma)
            fresh = math.sqrt(1 - eta**2) * eps_hat + eta * randn(x)
            x = (1 - s) * f + s * y + s * sigma * fresh
        else:
            # Eq. (3): InDI's update x_{t - delta} = (delta / t) F + (1 - delta / t) x_t.
            x = (s / t) * x + (1 - s / t) * f
    return x
