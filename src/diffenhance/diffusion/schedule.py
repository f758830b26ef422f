"""Noise schedules of the discrete-time Gaussian diffusion.

References: Ho et al. 2020, "Denoising Diffusion Probabilistic Models" (linear schedule,
posterior q(x_{t-1} | x_t, x_0), eqs. 6-7); Nichol & Dhariwal 2021, "Improved Denoising
Diffusion Probabilistic Models" (cosine schedule, eq. 17).

Every quantity is computed in float64 and stored as a float32 tensor; the float64
`alphas_cumprod` is kept (as numpy) for exact respacing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from diffenhance.config import DiffusionConfig

COSINE_S = 0.008  # Nichol & Dhariwal's offset: keeps beta_0 from being vanishingly small
MAX_BETA = 0.999  # their clip: avoids the singularity at t = T


def cosine_alpha_bar(t: np.ndarray | float, T: int, s: float = COSINE_S) -> np.ndarray:
    """f(t) = cos(((t / T + s) / (1 + s)) * pi / 2) ** 2 (float64); alpha_bar(t) = f(t) / f(0)."""
    return np.cos((np.asarray(t, dtype=np.float64) / T + s) / (1 + s) * math.pi / 2) ** 2


def make_betas(kind: str, T: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> np.ndarray:
    """Betas beta_1..beta_T as a float64 array of shape [T], values in (0, 1).

    'linear': evenly spaced from `beta_start` to `beta_end` (DDPM; used as given, not rescaled
    by 1000 / T). 'cosine': beta_t = 1 - f(t + 1) / f(t), clipped to 0.999, so that
    alphas_cumprod[k] = f(k + 1) / f(0) (beta_start/beta_end are ignored).
    """
    if T < 1:
        raise ValueError(f"number of timesteps must be >= 1, got {T}")
    if kind == "linear":
        if not 0.0 < beta_start <= beta_end < 1.0:
            raise ValueError(
                f"linear schedule needs 0 < beta_start <= beta_end < 1, got "
                f"beta_start={beta_start}, beta_end={beta_end}"
            )
        return np.linspace(beta_start, beta_end, T, dtype=np.float64)
    if kind == "cosine":
        f = cosine_alpha_bar(np.arange(T + 1), T)
        return np.minimum(1.0 - f[1:] / f[:-1], MAX_BETA)
    raise ValueError(f"unknown noise schedule {kind!r}; choose 'linear' or 'cosine'")


class Schedule:
    """Per-timestep coefficients of a diffusion with betas [T] (index k = timestep k, 0-based).

    Attributes (float32 tensors of shape [T] on `self.device`): betas, alphas, alphas_cumprod,
    alphas_cumprod_prev (alpha_bar_{k-1}, 1 at k = 0), sqrt_alphas_cumprod,
    sqrt_one_minus_alphas_cumprod, snr (alpha_bar / (1 - alpha_bar)), posterior_variance,
    posterior_log_variance_clipped, posterior_mean_coef1 (multiplies x0), posterior_mean_coef2
    (multiplies x_t). `f64[name]` holds each as a float64 numpy array (samplers read their
    scalar coefficients there, avoiding device syncs); `alphas_cumprod_f64` = f64["alphas_cumprod"].
    """

    betas: torch.Tensor
    alphas: torch.Tensor
    alphas_cumprod: torch.Tensor
    alphas_cumprod_prev: torch.Tensor
    sqrt_alphas_cumprod: torch.Tensor
    sqrt_one_minus_alphas_cumprod: torch.Tensor
    snr: torch.Tensor
    posterior_variance: torch.Tensor
    posterior_log_variance_clipped: torch.Tensor
    posterior_mean_coef1: torch.Tensor
    posterior_mean_coef2: torch.Tensor

    _TENSORS = (
        "betas",
        "alphas",
        "alphas_cumprod",
        "alphas_cumprod_prev",
        "sqrt_alphas_cumprod",
        "sqrt_one_minus_alphas_cumprod",
        "snr",
        "posterior_variance",
        "posterior_log_variance_clipped",
        "posterior_mean_coef1",
        "posterior_mean_coef2",
    )

    def __init__(self, betas: np.ndarray | Sequence[float], device: torch.device | str = "cpu"):
        b = np.asarray(betas, dtype=np.float64)
        if b.ndim != 1 or b.size < 1 or not np.all((b > 0) & (b < 1)):
            raise ValueError("betas must be a non-empty 1-D array with values in (0, 1)")
        self.betas_f64 = b
        alphas = 1.0 - b
        ab = np.cumprod(alphas)
        ab_prev = np.append(1.0, ab[:-1])
        post_var = b * (1.0 - ab_prev) / (1.0 - ab)
        # log(0) at k = 0: use the next variance instead (as in guided-diffusion).
        post_log_var = np.log(np.append(post_var[1], post_var[1:]) if b.size > 1 else [1e-20])
        values = {
            "betas": b,
            "alphas": alphas,
            "alphas_cumprod": ab,
            "alphas_cumprod_prev": ab_prev,
            "sqrt_alphas_cumprod": np.sqrt(ab),
            "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - ab),
            "snr": ab / (1.0 - ab),
            "posterior_variance": post_var,
            "posterior_log_variance_clipped": post_log_var,
            "posterior_mean_coef1": b * np.sqrt(ab_prev) / (1.0 - ab),
            "posterior_mean_coef2": (1.0 - ab_prev) * np.sqrt(alphas) / (1.0 - ab),
        }
        self.alphas_cumprod_f64 = ab
        self.f64: dict[str, np.ndarray] = values  # the same quantities in float64
        self.device = torch.device(device)
        for name in self._TENSORS:
            setattr(self, name, torch.tensor(values[name], dtype=torch.float32, device=device))

    @property
    def num_timesteps(self) -> int:
        """T, the number of diffusion steps."""
        return int(self.betas_f64.size)

    @classmethod
    def from_config(cls, cfg: DiffusionConfig, device: torch.device | str = "cpu") -> Schedule:
        """Schedule for `diffusion.schedule`, `timesteps`, `beta_start`, `beta_end`."""
        return cls(make_betas(cfg.schedule, cfg.timesteps, cfg.beta_start, cfg.beta_end), device)

    def to(self, device: torch.device | str) -> Schedule:
        """A copy with every tensor on `device` (self if already there)."""
        if torch.device(device) == self.device:
            return self
        return Schedule(self.betas_f64, device)

    def respaced(
        self, timesteps: Sequence[int], device: torch.device | str | None = None
    ) -> Schedule:
        """The schedule of the sub-chain visiting `timesteps` (any order, unique, in 0..T-1).

        Respacing as in guided-diffusion (Nichol & Dhariwal 2021, sec. 4): new betas
        beta'_i = 1 - alpha_bar[s_i] / alpha_bar[s_{i-1}] over the ascending timesteps s_i
        (alpha_bar[s_{-1}] = 1), so the new alphas_cumprod equal the old ones at s_i.
        Tensors go to `device` (default: this schedule's).
        """
        s = np.sort(np.asarray(timesteps, dtype=np.int64))
        if s.size < 1 or np.any(np.diff(s) == 0) or s[0] < 0 or s[-1] >= self.num_timesteps:
            raise ValueError(f"timesteps must be unique and within 0..{self.num_timesteps - 1}")
        ab = self.alphas_cumprod_f64[s]
        betas = 1.0 - ab / np.append(1.0, ab[:-1])
        return Schedule(betas, self.device if device is None else device)
