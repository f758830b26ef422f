"""Formulations (sr3, regression, indi, residual): forward processes and samplers agree, the
fidelity/sharpness knobs behave, and every formulation trains and round-trips a checkpoint."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from dataclasses import replace

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from diffenhance.config import DiffusionConfig, ModelConfig, with_options
from diffenhance.diffusion import Schedule, formulation_loss, formulation_sample
from diffenhance.diffusion.formulations import FORMULATIONS, draw_normal, regress
from diffenhance.diffusion.indi import indi_degrade, indi_estimate, indi_sample
from diffenhance.diffusion.process import pred_to_x0_eps
from diffenhance.metrics import hf_energy_ratio
from diffenhance.model import build_network, load_restorer
from diffenhance.nn.predict_refine import PredictRefine
from diffenhance.train import train_model
from tests.tiny import make_dataset, smooth_image, tiny_config

T = 50
SCHED = Schedule.from_config(DiffusionConfig(timesteps=T))


def dcfg(kind: str, **options: dict) -> DiffusionConfig:
    """Tiny diffusion settings of `kind`, with formulation options: indi={"noise": 0.1}."""
    return with_options(DiffusionConfig(timesteps=T, formulation=kind), **options)


def images(n: int = 2, size: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(x0, y) in [-1, 1]: smooth clean images and a blurred, shifted 'degraded' version."""
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(n, 3, size, size, generator=g) * 1.6 - 0.8
    y = F.avg_pool2d(F.pad(x0, (1, 1, 1, 1), mode="reflect"), 3, stride=1) * 0.9
    return x0, y


def v_oracle(sched: Schedule, x0: torch.Tensor):
    """A model that returns the exact v target for x_t, given the true x0."""

    def model(x_t, t, cond):
        ab = sched.alphas_cumprod[t.long()].view(-1, 1, 1, 1).double()
        eps = (x_t.double() - ab.sqrt() * x0) / (1 - ab).sqrt()
        return (ab.sqrt() * eps - (1 - ab).sqrt() * x0).float()

    return model


def smooth_model(x_t, t, cond):
    """A deterministic, nonlinear, time-dependent stand-in for a trained network."""
    return 0.3 * torch.tanh(x_t - cond) + 1e-4 * t.view(-1, 1, 1, 1) * cond


class Refine(torch.nn.Module):
    """Duck-typed PredictRefine: fixed predictor mu = 0.5 y, a given denoiser."""

    def __init__(self, denoise):
        super().__init__()
        self._denoise = denoise

    def predict(self, y):
        return 0.5 * y

    def denoise(self, x_t, t, mu):
        return self._denoise(x_t, t, mu)


# ----------------------------------------------------------------------------- oracles


def test_sampler_labels_name_what_each_formulation_runs():
    """Reports and evaluate's method keys name the sampler a formulation runs: ddim/ddpm only
    where infer.sampler chooses one (sr3, residual), the flow's Euler steps, InDI's own
    iteration and regression's one pass whatever it says."""
    from diffenhance.diffusion.formulations import get_formulation

    got = {name: [get_formulation(name).sampler_label(s) for s in ("ddim", "ddpm")]
           for name in FORMULATIONS}  # fmt: skip
    assert got == {"sr3": ["ddim", "ddpm"], "residual": ["ddim", "ddpm"], "indi": ["indi"] * 2,
                   "regression": ["direct"] * 2, "pmrf": ["euler"] * 2}  # fmt: skip


@pytest.mark.parametrize(
    ("sampler", "eta", "steps"), [("ddim", 0.0, 1), ("ddim", 0.0, 5), ("ddpm", 1.0, 5)]
)
def test_sr3_oracle_returns_ground_truth(sampler, eta, steps):
    x0, y = images()
    g = torch.Generator().manual_seed(1)
    out = formulation_sample(
        dcfg("sr3"), v_oracle(SCHED, x0.double()), SCHED, y, steps=steps, sampler=sampler,
        eta=eta, generator=g,
    )  # fmt: skip
    torch.testing.assert_close(out, x0, atol=2e-4, rtol=0)


def test_regression_oracle_returns_ground_truth():
    x0, y = images()
    out = formulation_sample(
        dcfg("regression"), lambda x, t, c: x0 - c, SCHED, y, steps=7, samples=3
    )
    torch.testing.assert_close(out, x0, atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    ("steps", "eta", "sigma"), [(1, 0.0, 0.1), (4, 0.0, 0.1), (7, 0.5, 0.1), (3, 0.0, 0.0)]
)
def test_indi_oracle_returns_ground_truth(steps, eta, sigma):
    """F = x0 exactly (the network outputs x0 - x_t): every chain lands on x0."""
    x0, y = images()
    out = formulation_sample(
        dcfg("indi", indi={"noise": sigma}), lambda x, t, c: x0 - x, SCHED, y, steps=steps,
        eta=eta, generator=torch.Generator().manual_seed(2), clip_x0=False,
    )  # fmt: skip
    torch.testing.assert_close(out, x0, atol=1e-5, rtol=0)


@pytest.mark.parametrize("steps", [1, 2, 3, 5])
def test_indi_deterministic_steps_follow_eq_3_in_closed_form(steps):
    """Eq. (3) x_s = (s/t) x_t + (1 - s/t) F at every step, not only the last (an oracle F hides
    the others). With F = x + a (x0 - x) and x_1 = y (sigma 0), the gap x0 - x shrinks by
    1 - a (1 - s/t) per step and by 1 - a at the last (x_0 = F): for K = 2, a = 1/2,
    (1 - 1/4) (1 - 1/2) = 3/8 of x0 - y is left."""
    x0, y = images()
    a = 0.5
    out = formulation_sample(
        dcfg("indi", indi={"noise": 0.0}), lambda x, t, c: a * (x0 - x), SCHED, y, steps=steps,
        generator=torch.Generator().manual_seed(2), clip_x0=False,
    )  # fmt: skip
    times = [1 - i / steps for i in range(steps)] + [0.0]
    gap = 1.0
    for t, s in zip(times[:-1], times[1:], strict=True):
        gap *= 1 - a * (1 - s / t)
    assert steps != 2 or gap == pytest.approx(3 / 8)
    torch.testing.assert_close(out, x0 - gap * (x0 - y), atol=1e-6, rtol=0)


def test_indi_eq_4_carries_sqrt_1_minus_eta2_of_the_noise_and_adds_eta_fresh():
    """Eq. (4) at every step, not only the last. With the oracle F = x0, each state the model
    sees is exactly x_t = (1 - t) x0 + t y + t sigma eps_t, and eq. (4) makes
    eps_s = c eps_t + eta z with c = sqrt(1 - eta^2): over K = 3 steps the model is fed eps_1 = e,
    then c e + eta z1, then c^2 e + c eta z1 + eta z2 (z's drawn by `randn` in order)."""
    x0, y = images()
    sigma, eta = 0.2, 0.6
    c = math.sqrt(1 - eta**2)  # 0.8
    g = torch.Generator().manual_seed(3)
    e, z1, z2 = (torch.randn(x0.shape, generator=g) for _ in range(3))
    fresh = [z1, z2]
    seen: list[torch.Tensor] = []

    def oracle(x, t, cond):
        seen.append(x.clone())
        return x0 - x

    out = indi_sample(oracle, y + sigma * e, y, steps=3, sigma=sigma, eta=eta,
                      randn=lambda like: fresh.pop(0))  # fmt: skip
    eps = [e, c * e + eta * z1, c * c * e + c * eta * z1 + eta * z2]
    for x, t, eps_t in zip(seen, (1.0, 2 / 3, 1 / 3), eps, strict=True):
        torch.testing.assert_close(x, (1 - t) * x0 + t * y + t * sigma * eps_t, atol=1e-5, rtol=0)
    assert not fresh  # one fresh draw per step before the last
    torch.testing.assert_close(out, x0, atol=1e-6, rtol=0)


def test_indi_forward_process_endpoints_and_noise_level():
    x0, y = images(4, 32)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    ones, zeros = torch.ones(4), torch.zeros(4)
    torch.testing.assert_close(indi_degrade(x0, y, zeros, noise, 0.3), x0)
    torch.testing.assert_close(indi_degrade(x0, y, ones, noise, 0.3), y + 0.3 * noise)
    half = indi_degrade(x0, y, ones / 2, noise, 0.3) - (x0 + y) / 2
    assert float(half.std()) == pytest.approx(0.15, rel=0.05)  # t * sigma at t = 1/2


@pytest.mark.parametrize(("sampler", "eta"), [("ddim", 0.0), ("ddpm", 1.0)])
def test_residual_oracle_returns_ground_truth(sampler, eta):
    x0, y = images()
    cfg = dcfg("residual", residual={"scale": 4.0})
    r0 = cfg.options["residual"].scale * (x0 - 0.5 * y)
    model = Refine(v_oracle(SCHED, r0.double()))
    out = formulation_sample(
        cfg, model, SCHED, y, steps=4, sampler=sampler, eta=eta,
        generator=torch.Generator().manual_seed(3), clip_x0=False,
    )  # fmt: skip
    torch.testing.assert_close(out, x0, atol=5e-4, rtol=0)


# ----------------------------------------------------------------------------- one step


def test_one_step_equals_the_models_estimate():
    """One step of each chain returns exactly the model's x0 estimate at its start."""
    _, y = images()

    def gen():
        return torch.Generator().manual_seed(5)

    # indi: F(x_1, 1) with x_1 = y + sigma eps, eps the generator's first draw.
    cfg = dcfg("indi", indi={"noise": 0.1})
    x1 = y + 0.1 * draw_normal(y.shape, gen(), "cpu")
    want = indi_estimate(smooth_model, x1, torch.ones(2), y)
    got = formulation_sample(cfg, smooth_model, SCHED, y, steps=1, generator=gen(), clip_x0=False)
    torch.testing.assert_close(got, want, atol=0, rtol=0)
    # regression: y + net(y, 0, y).
    got = formulation_sample(dcfg("regression"), smooth_model, SCHED, y, steps=1, clip_x0=False)
    torch.testing.assert_close(got, regress(smooth_model, y), atol=0, rtol=0)
    # sr3: the v-prediction's x0 at t = T - 1 from x_T (clipped, as the sampler clips).
    x_T = draw_normal(y.shape, gen(), "cpu")
    t = torch.full((2,), T - 1)
    x0, _ = pred_to_x0_eps(SCHED, x_T, t, smooth_model(x_T, t.float(), y), "v")
    got = formulation_sample(dcfg("sr3"), smooth_model, SCHED, y, steps=1, generator=gen())
    torch.testing.assert_close(got, x0.clamp(-1, 1), atol=1e-6, rtol=0)
    # residual: mu + r0^ / s with r0^ the denoiser's x0 at T - 1 from r_T.
    cfg = dcfg("residual", residual={"scale": 2.0})
    mu = 0.5 * y
    r0, _ = pred_to_x0_eps(SCHED, x_T, t, smooth_model(x_T, t.float(), mu), "v")
    got = formulation_sample(
        cfg, Refine(smooth_model), SCHED, y, steps=1, generator=gen(), clip_x0=False
    )
    torch.testing.assert_close(got, mu + r0 / 2.0, atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------- averaging


def test_samples_of_a_model_that_draws_no_noise_run_once():
    """indi with noise 0 (the shipped denoise and jpeg) starts at the input and draws nothing:
    --samples 4 is the same image, so the network runs `steps` times, not 4 x steps (it used
    to, for 3.4x the time); with noise > 0 each sample runs."""
    x0, y = images()
    calls: list[int] = []

    def model(x, t, c):
        calls.append(1)
        return 0.5 * (x0 - x)

    for noise, runs in ((0.0, 3), (0.1, 12)):
        calls.clear()
        out = formulation_sample(
            dcfg("indi", indi={"noise": noise}), model, SCHED, y, steps=3, samples=4,
            generator=torch.Generator().manual_seed(0), clip_x0=False,
        )  # fmt: skip
        assert len(calls) == runs, noise
        if noise == 0:
            one = formulation_sample(dcfg("indi", indi={"noise": 0.0}), model, SCHED, y,
                                     steps=3, clip_x0=False)  # fmt: skip
            assert torch.equal(out, one)


def test_indi_averaging_divides_the_variance_by_n():
    """Zero network, one step: the output is y + sigma * mean of N normals, variance sigma^2/N."""
    sigma = 0.2
    y = torch.zeros(4, 3, 32, 32)
    for n in (1, 4, 16):
        out = formulation_sample(
            dcfg("indi", indi={"noise": sigma}), lambda x, t, c: torch.zeros_like(x), SCHED, y,
            steps=1, samples=n, generator=torch.Generator().manual_seed(n),
        )  # fmt: skip
        # 12288 pixels: the sample variance is within about 1.3% (1 sd) of sigma^2 / N.
        assert float(out.var()) == pytest.approx(sigma**2 / n, rel=0.06)


@pytest.mark.parametrize("kind", ["sr3", "indi", "residual"])
def test_averaged_samples_are_independent(kind):
    """Across 12 seeds, the per-pixel variance of the mean of 4 samples is ~1/4 of a single
    sample's (tolerance 30%: 11 degrees of freedom per pixel, pixels correlated)."""
    _, y = images(1, 16)
    cfg = dcfg(kind, indi={"noise": 0.2})
    model = Refine(smooth_model) if kind == "residual" else smooth_model
    kw = dict(steps=3, sampler="ddpm", eta=1.0, clip_x0=False)
    if kind == "indi":
        kw["eta"] = 0.5

    def spread(n: int) -> float:
        outs = [
            formulation_sample(
                cfg,
                model,
                SCHED,
                y,
                samples=n,
                generator=torch.Generator().manual_seed(100 * n + s),
                **kw,
            )
            for s in range(12)
        ]
        return float(torch.stack(outs).var(dim=0).mean())

    assert spread(4) / spread(1) == pytest.approx(0.25, rel=0.3)


def test_per_item_generators_make_results_batch_independent():
    """Item i of a batch with generators [g_0, g_1] equals item i restored alone with g_i."""
    _, y = images(2, 16)
    for cfg, eta in (
        (dcfg("indi", indi={"noise": 0.1}), 0.5),
        (dcfg("sr3"), 0.0),
        (dcfg("sr3"), 1.0),
    ):
        gens = [torch.Generator().manual_seed(s) for s in (7, 8)]
        both = formulation_sample(
            cfg, smooth_model, SCHED, y, steps=3, sampler="ddpm", eta=eta, generator=gens
        )
        for i, s in enumerate((7, 8)):
            alone = formulation_sample(
                cfg, smooth_model, SCHED, y[i : i + 1], steps=3, sampler="ddpm", eta=eta,
                generator=torch.Generator().manual_seed(s),
            )  # fmt: skip
            torch.testing.assert_close(both[i : i + 1], alone, atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------- the knob


def _blur(x: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), 3, stride=1)


def test_indi_steps_and_samples_are_monotone_in_sharpness():
    """Hand-made InDI network F(x_t) = x_t + 0.5 (x_t - blur(x_t)) (an unsharp mask): each step
    sharpens by (1 - s/t) of it, so more steps compound to more detail; averaging samples of
    the start noise removes high-frequency energy."""
    rng = __import__("numpy").random.default_rng(0)
    hr = torch.from_numpy(smooth_image(rng, 64, 64)).permute(2, 0, 1)[None]
    y = _blur(_blur(hr * 2 - 1))

    def unsharp(x, t, c):
        return 0.5 * (x - _blur(x))

    def sharpness(out: torch.Tensor) -> float:
        return float(hf_energy_ratio((out + 1) / 2, hr, cutoff=0.25).mean())

    by_steps = [
        sharpness(formulation_sample(dcfg("indi", indi={"noise": 0.0}), unsharp, SCHED, y, steps=k))
        for k in (1, 2, 4, 8, 16)
    ]
    assert all(a < b for a, b in zip(by_steps, by_steps[1:], strict=False)), by_steps
    cfg = dcfg("indi", indi={"noise": 0.1})
    by_samples = [
        sharpness(
            formulation_sample(
                cfg,
                unsharp,
                SCHED,
                y,
                steps=4,
                samples=n,
                generator=torch.Generator().manual_seed(0),
            )
        )
        for n in (1, 2, 4, 8)
    ]
    assert all(a > b for a, b in zip(by_samples, by_samples[1:], strict=False)), by_samples


# ----------------------------------------------------------------------------- training


def test_residual_loss_reaches_every_parameter_in_one_call():
    """One forward of PredictRefine per loss (DDP-safe): predictor and denoiser all get grads."""
    cfg = dcfg("residual", residual={"predictor_channels": 8})
    mcfg = ModelConfig(
        base_channels=16, channel_mults=(1, 2), attn_resolutions=(2,), head_channels=16
    )
    net = build_network(mcfg, cfg, 2)
    assert isinstance(net, PredictRefine)
    calls = []
    net.register_forward_hook(lambda *a: calls.append(1))
    x0, y = images(2, 16)
    loss, stats = formulation_loss(
        cfg, net, SCHED, x0, y, generator=torch.Generator().manual_seed(0)
    )
    loss.backward()
    assert len(calls) == 1
    assert all(p.grad is not None for p in net.parameters())
    assert float(stats["loss"]) == pytest.approx(
        float(stats["loss_diffusion"] + stats["loss_predictor"]), rel=1e-6
    )


@pytest.mark.parametrize("kind", ["regression", "indi"])
def test_pixel_losses_match_their_definition(kind):
    """regression: mean |y + net(y) - x0|; indi at t1_prob = 1: the same on y + sigma eps."""
    x0, y = images()
    cfg = dcfg(kind, indi={"t1_prob": 1.0, "noise": 0.0})
    loss, _ = formulation_loss(cfg, smooth_model, SCHED, x0, y, generator=torch.Generator())
    want = (regress(smooth_model, y) - x0).abs().mean() if kind == "regression" else (
        indi_estimate(smooth_model, y, torch.ones(2), y) - x0).abs().mean()  # fmt: skip
    assert float(loss) == pytest.approx(float(want), rel=1e-6)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("formulations")
    make_dataset(root)
    return root


@pytest.mark.parametrize("kind", FORMULATIONS)
def test_trains_and_round_trips_through_load_restorer(kind, dataset, tmp_path):
    cfg = tiny_config(
        dataset, f"train.out_dir={tmp_path}", "train.steps=2", "train.val_every=2",
        f"diffusion.formulation={kind}", "diffusion.options.residual.predictor_channels=8",
    )  # fmt: skip
    out = train_model(cfg, "sr2")
    log = pd.read_csv(out / "train_log.csv")
    assert list(log["step"]) == [1, 2] and log["loss"].notna().all()
    assert math.isfinite(log["val_psnr"].dropna().iloc[-1])
    r = load_restorer(out)
    assert r.diffusion_cfg == cfg.diffusion and r.meta["formulation"] == kind
    assert isinstance(r.unet, PredictRefine) == (kind == "residual")
    saved = load_file(str(out / "model.safetensors"))
    assert set(saved) == set(r.unet.state_dict())
    if kind == "residual":
        assert any(k.startswith("predictor.") for k in saved)
    lq = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    a = r.restore(lq, steps=2, generator=torch.Generator().manual_seed(1), samples=2)
    b = r.restore(lq, steps=2, generator=torch.Generator().manual_seed(1), samples=2)
    assert a.shape == (2, 3, 16, 16) and torch.equal(a, b)
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0


def test_checkpoint_without_formulation_loads_as_sr3(dataset, tmp_path):
    """Checkpoints written before formulations existed have no 'formulation' key: sr3."""
    cfg = tiny_config(
        dataset, f"train.out_dir={tmp_path}", "train.steps=1", "train.val_every=1",
        "diffusion.formulation=sr3",
    )  # fmt: skip
    out = train_model(cfg, "sr2")
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        meta = dict(f.metadata())
    diff = json.loads(meta["diffusion"])
    for k in ("formulation", "options"):
        diff.pop(k)
    meta["diffusion"] = json.dumps(diff)
    meta.pop("formulation")
    old = tmp_path / "old.safetensors"
    save_file(load_file(str(out / "model.safetensors")), str(old), metadata=meta)
    r = load_restorer(old)
    assert r.diffusion_cfg.formulation == "sr3"
    assert replace(r.diffusion_cfg, formulation="sr3") == replace(cfg.diffusion, formulation="sr3")


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["residual", "indi"])
def test_ddp_gloo_two_processes(kind, dataset, tmp_path):
    """torchrun --nproc_per_node=2 with the formulation (residual: one DDP forward per step)."""
    from diffenhance.config import write_resolved

    cfg = tiny_config(
        dataset, f"train.out_dir={tmp_path / 'ddp'}", "train.steps=2",
        f"diffusion.formulation={kind}", "diffusion.options.residual.predictor_channels=8",
    )  # fmt: skip
    params = write_resolved(cfg, tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
         "--standalone", "-m", "diffenhance.train", "--params", str(params)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert load_restorer(tmp_path / "ddp" / "sr2").diffusion_cfg.formulation == kind
