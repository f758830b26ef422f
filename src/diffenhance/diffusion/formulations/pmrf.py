"""``pmrf``: Posterior-Mean Rectified Flow (Ohayon, Michaeli & Elad, ICLR 2025, "Posterior-Mean
Rectified Flow: Towards Minimum MSE Photo-Realistic Image Restoration", arXiv 2410.00418).

Two stages, one network (`PosteriorMeanFlow`: ``mean.*`` and ``flow.*`` tensors):

  (1) the posterior mean  mu = E[x | y]: the 1-step output of another registered formulation
      (`diffusion.options.pmrf.mean`, e.g. ``residual``), trained with its own loss or loaded
      frozen from a shipped model (`options.pmrf.train_mean: false` + `train.init_from`),
      started from its noise's mean (`MEAN_START`), so mu is a function of y alone: the same
      image for every seed;
  (2) a rectified flow from Z_0 = mu + sigma_s eps (sigma_s = `diffusion.options.pmrf.noise`,
      model range) to Z_1 = x on the straight path Z_t = (1 - t) Z_0 + t x, t in [0, 1], with the
      condition added (at this compute the flow is told what mu and y are).

The velocity is parameterised by a clean estimate anchored at the mean (as InDI's and EDM's
x0 parameterisations): x^(Z_t, t) = mu + net(Z_t, t, [mu, cond]), v = (x^ - Z_t) / (1 - t),
trained by ||x^ - x||^2, which is the paper's flow-matching loss ||v - (x - Z_0)||^2 weighted by
(1 - t)^2: the minimiser is the same, E[x | Z_t, y]. At initialisation (net = 0) the flow
removes the start noise and ends exactly at mu, so an undertrained flow is a fidelity model,
never grain; what the network learns is only the detail x - mu.

Sampling (paper Alg. 2): Z_0 = mu + sigma_s eps, K Euler steps Z_{t + 1/K} = Z_t + v / K (the
last one lands on x^ exactly).
The flow transports the mean's distribution towards the images' along the shortest path, so
its end point keeps most of mu's fidelity while restoring the high frequencies mu averaged away.

The knob (`detail` in [0, 1]): x_d = mu + d (Z_1 - mu). d = 0 is the posterior mean exactly
(no flow evaluation); d = 1 the flow's sample. For a true posterior sample the error grows as
E||x_d - x||^2 = (1 + d^2) E||mu - x||^2: PSNR falls smoothly, by at most 3 dB (Blau &
Michaeli 2018), while the detail grows linearly in d.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from diffenhance.config import DiffusionConfig, ModelConfig, in_range
from diffenhance.config import Formulation as FormulationName
from diffenhance.diffusion.formulations.base import (
    MEAN_START,
    Formulation,
    Generators,
    Stats,
    draw_normal,
    get_formulation,
    pixel_loss,
    register,
    unwrap,
)
from diffenhance.diffusion.schedule import Schedule
from diffenhance.nn import build_cond_net

TIME_SCALE = 1000.0  # flow time t in [0, 1] -> the U-Net's timestep input, like DDPM's 0..999


class PosteriorMeanFlow(nn.Module):
    """`mean`: the stage-1 network (built by the mean formulation); `flow`: the conditional
    network v(Z_t, t, [mu, cond]) -> [N, 3, H, W] (`nn.build_cond_net`, `model.space`)."""

    def __init__(self, mean: nn.Module, flow: nn.Module) -> None:
        super().__init__()
        self.mean = mean
        self.flow = flow
        a, b = mean.size_multiple, flow.size_multiple
        self.size_multiple: int = max(a, b) if max(a, b) % min(a, b) == 0 else a * b

    def estimate(
        self, z: torch.Tensor, t: torch.Tensor, mu: torch.Tensor, cond: torch.Tensor
    ) -> torch.Tensor:
        """x^(z, t) = mu + net(z, t, [mu, cond]): z, mu [N, 3, H, W], cond [N, C, H, W], t [N]
        in [0, 1) -> [N, 3, H, W]."""
        net = self.flow(z, t.float() * TIME_SCALE, torch.cat([mu, cond], dim=1))
        return mu + net.to(z.dtype)

    def forward(
        self, z: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, mu: torch.Tensor
    ) -> torch.Tensor:
        """Training pass (one call, so DDP sees the flow's parameters once): `estimate`."""
        return self.estimate(z, t, mu, cond)


def mean_config(dcfg: DiffusionConfig) -> DiffusionConfig:
    """The diffusion settings of stage 1: `dcfg` with the mean's formulation."""
    return dataclasses.replace(dcfg, formulation=dcfg.options[PMRF.name].mean)


@torch.no_grad()
def posterior_mean(
    dcfg: DiffusionConfig, net: PosteriorMeanFlow, sched: Schedule, cond: torch.Tensor
) -> torch.Tensor:
    """mu [N, 3, H, W]: the mean formulation's 1-step output (clamped to the model range) from
    the mean of its start noise (`MEAN_START`), so it draws nothing and depends on cond alone.

    A random start made the fidelity preset (detail 0) differ from seed to seed (sr2: up to
    6/255, 0.005 on average), while it is documented, sampled once and refused an uncertainty
    map as the one posterior mean; from the mean start it is that, and no worse (held-out
    photos, PSNR-Y: sr2 33.74 -> 33.79 dB, sr4 28.77 and blind 24.04 -> 24.03 dB)."""
    mcfg = mean_config(dcfg)
    f = get_formulation(mcfg.formulation)
    prepared = f.prepare(mcfg, net.mean, cond)
    return f.sample_once(
        mcfg, net.mean, sched, cond, prepared, steps=1, sampler="ddim", eta=0.0,
        generator=MEAN_START, step_gen=None, progress=False, clip_x0=True,
    ).clamp(-1, 1)  # fmt: skip


def start_noise(mu: torch.Tensor, opts: Any) -> torch.Tensor | float:
    """The std of the flow's start noise around mu: `opts.noise` (uniform), or (edges) that
    times m = min(1, floor + (|grad Y| / edge) ** power), Y = mu's channel mean, |grad| its
    forward differences' magnitude averaged over 3x3: [N, 1, H, W].

    The posterior is narrow where the image is flat (the error of mu is small there) and wide
    at edges and texture; white noise of one std asks the flow to remove noise in flat areas
    exactly, which an undertrained flow does not: grain. A start whose spread follows mu's
    edges puts what the flow cannot remove where detail is. A power above 1 takes the noise
    off weak gradients too (mu's own faint texture and the halo next to an edge), so the
    spread sits on the edges and texture that mu blurred (RESULTS.md, issue 21)."""
    if opts.noise_map == "uniform":
        return opts.noise
    y = mu.float().mean(dim=1, keepdim=True)
    gx = F.pad(y[..., :, 1:] - y[..., :, :-1], (0, 1, 0, 0), mode="replicate")
    gy = F.pad(y[..., 1:, :] - y[..., :-1, :], (0, 0, 0, 1), mode="replicate")
    g = F.avg_pool2d(F.pad((gx * gx + gy * gy).sqrt(), (1, 1, 1, 1), mode="replicate"), 3, 1)
    m = (opts.noise_floor + (g / opts.noise_edge) ** opts.noise_power).clamp(max=1.0)
    return (opts.noise * m).to(mu.dtype)


@register
class PMRF(Formulation):
    name = "pmrf"
    default_steps = 4  # Euler steps of the flow (the detail end); measured per model
    has_knob = True
    detail_knob = True

    @dataclasses.dataclass(frozen=True)
    class Options:  # diffusion.options.pmrf.*
        mean: FormulationName = "residual"  # stage 1 is this formulation's 1-step output
        noise: float = 0.1  # sigma_s of the flow's start mu + sigma_s eps (model range)
        train_mean: bool = True  # train stage 1 too (false: frozen, from train.init_from)
        # uniform: sigma_s everywhere (the paper's); edges: sigma_s times mu's edge map
        # (`start_noise`), so the flow starts near mu where the image is flat
        noise_map: Literal["uniform", "edges"] = "uniform"
        noise_floor: float = 0.1  # edges: the share of sigma_s where mu is flat
        noise_edge: float = 0.1  # edges: mu's gradient (model range) that gets all of it
        noise_power: float = 1.0  # edges: m = min(1, floor + (|grad| / edge) ** power)

        def check(self, bad: Callable[[str, str], Exception]) -> None:
            in_range(self, "noise", bad, 0, 1)
            in_range(self, "noise_floor", bad, 0, 1)
            in_range(self, "noise_edge", bad, 0, lo_open=True)
            in_range(self, "noise_power", bad, 0, lo_open=True)

    def build_network(
        self, model_cfg: ModelConfig, dcfg: DiffusionConfig, scale: int, cond_channels: int = 3
    ) -> torch.nn.Module:
        mcfg = mean_config(dcfg)
        if get_formulation(mcfg.formulation) is self:
            raise ValueError(
                "diffusion.options.pmrf.mean must name the stage-1 formulation, not pmrf"
            )
        mean = get_formulation(mcfg.formulation).build_network(
            model_cfg, mcfg, scale, cond_channels
        )
        mean.requires_grad_(dcfg.options[self.name].train_mean)
        flow = build_cond_net(model_cfg, scale, in_channels=3 + 3 + cond_channels, out_channels=3)
        return PosteriorMeanFlow(mean, flow)

    def label(self, dcfg: DiffusionConfig) -> str:
        return f"{self.name} (mean: {dcfg.options[self.name].mean})"

    def option_sections(self, dcfg: DiffusionConfig) -> tuple[str, ...]:
        mcfg = mean_config(dcfg)
        return (self.name, *get_formulation(mcfg.formulation).option_sections(mcfg))

    def scratch_problem(self, dcfg: DiffusionConfig) -> str | None:
        opts = dcfg.options[self.name]
        if opts.train_mean:
            return None
        return (
            "diffusion.options.pmrf.train_mean=false freezes stage 1, which then must come "
            f"from train.init_from (a {opts.mean} or pmrf model of this task and network); "
            "set diffusion.options.pmrf.train_mean=true to train it too"
        )

    def init_tensors(
        self, net: nn.Module, tensors: dict[str, torch.Tensor], meta: dict[str, str]
    ) -> dict[str, torch.Tensor]:
        # a checkpoint of the mean formulation alone (e.g. a shipped residual model) becomes
        # stage 1; the flow keeps its fresh initialisation
        if any(k.startswith(("mean.", "flow.")) for k in tensors):
            return tensors
        fresh = {k: v for k, v in net.state_dict().items() if k.startswith("flow.")}
        return {**fresh, **{f"mean.{k}": v for k, v in tensors.items()}}

    def loss(
        self, dcfg: DiffusionConfig, model: torch.nn.Module, sched: Schedule,
        x0: torch.Tensor, cond: torch.Tensor, *, generator: torch.Generator | None,
    ) -> tuple[torch.Tensor, Stats]:  # fmt: skip
        """Flow matching on the straight path from mu + sigma_s eps to x0, as ||x^ - x0||
        (module docstring; + the mean's own loss when `options.pmrf.train_mean`)."""
        inner: PosteriorMeanFlow = unwrap(model)  # type: ignore[assignment]
        stats: Stats = {}
        total = torch.zeros((), device=x0.device)
        opts = dcfg.options[self.name]
        if opts.train_mean:
            mcfg = mean_config(dcfg)
            mean_loss, _ = get_formulation(mcfg.formulation).loss(
                mcfg, inner.mean, sched, x0, cond, generator=generator
            )
            total = total + mean_loss
            stats["loss_mean"] = mean_loss.detach()
        mu = posterior_mean(dcfg, inner, sched, cond).to(x0.dtype)
        n, gdev = x0.shape[0], (generator.device if generator is not None else x0.device)
        t = torch.rand(n, generator=generator, device=gdev).to(x0.device)  # U[0, 1)
        z0 = mu + start_noise(mu, opts) * draw_normal(x0.shape, generator, x0.device).to(x0.dtype)
        tt = t.to(x0.dtype).reshape(-1, 1, 1, 1)
        z_t = (1 - tt) * z0 + tt * x0
        flow = pixel_loss(model(z_t, t, cond, mu), x0, dcfg.loss).mean()
        total = total + flow
        return total, {**stats, "loss": total.detach(), "loss_flow": flow.detach(),
                       "t_mean": t.mean()}  # fmt: skip

    def sampler_label(self, sampler: str) -> str:
        return "euler"  # Euler steps of the flow's ODE, whatever infer.sampler says

    def draws_noise(self, dcfg: DiffusionConfig, sampler: str, eta: float) -> bool:
        return False  # all its noise is the flow's start noise (the mean draws none)

    def prepare(self, dcfg: DiffusionConfig, model: torch.nn.Module, cond: torch.Tensor) -> Any:
        return None  # mu is computed in sample_once (MEAN_START: the same for every sample)

    def sample_once(
        self, dcfg: DiffusionConfig, model: torch.nn.Module, sched: Schedule,
        cond: torch.Tensor, prepared: Any, *, steps: int, sampler: str, eta: float,
        generator: Generators, step_gen: torch.Generator | None, progress: bool, clip_x0: bool,
        detail: float = 1.0,
    ) -> torch.Tensor:  # fmt: skip
        """Alg. 2: mu, then K Euler steps of the flow from mu + sigma_s eps; returns
        mu + detail (Z_1 - mu). The sampler name and eta are unused (the flow is an ODE)."""
        inner: PosteriorMeanFlow = unwrap(model)  # type: ignore[assignment]
        mu = posterior_mean(dcfg, inner, sched, cond).to(cond.dtype)
        if detail == 0.0:
            return mu
        noise = start_noise(mu, dcfg.options[self.name])
        z = mu + noise * draw_normal(mu.shape, generator, mu.device).to(mu.dtype)
        for i in range(steps):
            t = i / steps
            x_hat = inner.estimate(z, torch.full((z.shape[0],), t, device=z.device), mu, cond)
            if clip_x0:
                x_hat = x_hat.clamp(-1, 1)
            # Euler step of dZ/dt = v = (x^ - Z_t) / (1 - t) over dt = 1 / K
            z = z + (x_hat - z) / ((1 - t) * steps)
        return mu + detail * (z - mu)
