"""Diffusion: schedules against closed forms, exact conversions, samplers with an oracle model,
determinism, a golden sample, and the training loss (all targets, min-SNR, overfitting)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffenhance.config import DiffusionConfig, ModelConfig
from diffenhance.diffusion import (
    PREDICTIONS,
    SAMPLERS,
    Schedule,
    ddim_sample,
    ddpm_sample,
    eps_to_x0,
    from_model_range,
    make_betas,
    make_target,
    min_snr_weight,
    pred_to_x0_eps,
    q_sample,
    sample,
    to_model_range,
    trailing_timesteps,
    training_loss,
    v_to_eps,
    v_to_x0,
    x0_to_eps,
)
from diffenhance.diffusion.schedule import cosine_alpha_bar
from diffenhance.nn import build_unet

TINY = ModelConfig(base_channels=16, channel_mults=(1, 2), attn_resolutions=(2,), head_channels=8)


pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------- schedules


def test_linear_schedule_matches_closed_form() -> None:
    betas = make_betas("linear", 1000, 1e-4, 0.02)
    assert betas.dtype == np.float64 and betas[0] == 1e-4 and math.isclose(betas[-1], 0.02)
    s = Schedule(betas)
    for k in (0, 1, 499, 999):
        assert math.isclose(s.alphas_cumprod_f64[k], np.prod(1 - betas[: k + 1]), rel_tol=1e-12)
    assert s.alphas_cumprod.dtype == torch.float32 and s.betas.dtype == torch.float32
    assert torch.allclose(s.alphas_cumprod, torch.tensor(np.cumprod(1 - betas)).float())


def test_cosine_schedule_matches_closed_form_and_golden_values() -> None:
    T = 1000
    s = Schedule.from_config(DiffusionConfig(schedule="cosine", timesteps=T))
    f = cosine_alpha_bar(np.arange(T + 1), T)
    closed = f[1:] / f[0]  # alphas_cumprod[k] = f(k + 1) / f(0)
    clipped = make_betas("cosine", T) >= 0.999
    assert clipped.sum() == 1 and clipped[-1]  # only the very last beta is clipped
    np.testing.assert_allclose(s.alphas_cumprod_f64[:-1], closed[:-1], atol=1e-6, rtol=0)
    golden = [0.999958715775178, 0.4938435904406382, 2.4287669070348567e-09]
    np.testing.assert_allclose(s.alphas_cumprod_f64[[0, 499, 999]], golden, rtol=1e-9)
    for name in Schedule._TENSORS:
        assert getattr(s, name).dtype == torch.float32, name
    assert (
        torch.all(s.posterior_variance >= 0)
        and torch.isfinite(s.posterior_log_variance_clipped).all()
    )


def test_schedule_errors_and_respacing() -> None:
    with pytest.raises(ValueError, match="linear' or 'cosine"):
        make_betas("quadratic", 10)
    with pytest.raises(ValueError, match="beta_start"):
        make_betas("linear", 10, 0.5, 0.1)
    s = Schedule(make_betas("linear", 100, 1e-3, 0.05))
    r = s.respaced([99, 66, 33])
    np.testing.assert_allclose(r.alphas_cumprod_f64, s.alphas_cumprod_f64[[33, 66, 99]], rtol=1e-12)
    with pytest.raises(ValueError, match="unique"):
        s.respaced([5, 5])
    assert s.to("cpu") is s


def test_trailing_timesteps() -> None:
    assert trailing_timesteps(1000, 4) == [999, 749, 499, 249]
    assert trailing_timesteps(1000, 1) == [999]
    assert trailing_timesteps(10, 10) == list(range(9, -1, -1))
    assert trailing_timesteps(10, 3) == [9, 6, 2]
    with pytest.raises(ValueError, match="steps must be an integer in 1..10"):
        trailing_timesteps(10, 11)


# ----------------------------------------------------------------------------- conversions


def test_model_range_round_trip() -> None:
    x = torch.rand(2, 3, 4, 4)
    y = to_model_range(x)
    assert y.min() >= -1 and y.max() <= 1
    assert torch.allclose(from_model_range(y), x)
    assert from_model_range(torch.tensor([3.0])).item() == 1.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_conversions_invert_each_other(dtype: torch.dtype) -> None:
    s = Schedule(make_betas("cosine", 1000))
    g = torch.Generator().manual_seed(0)
    x0 = (torch.rand(4, 3, 8, 8, generator=g) * 2 - 1).to(dtype)
    eps = torch.randn(4, 3, 8, 8, generator=g).to(dtype)
    t = torch.tensor([0, 10, 500, 900])
    x_t = q_sample(s, x0, t, eps)
    tol = dict(atol=1e-5, rtol=0) if dtype == torch.float32 else dict(atol=1e-6, rtol=0)
    assert torch.allclose(eps_to_x0(s, x_t, t, eps), x0, **tol)
    assert torch.allclose(x0_to_eps(s, x_t, t, x0), eps, **tol)
    v = make_target(s, x0, t, eps, "v")
    assert torch.allclose(v_to_x0(s, x_t, t, v), x0, **tol)
    assert torch.allclose(v_to_eps(s, x_t, t, v), eps, **tol)
    for pred in PREDICTIONS:
        p0, pe = pred_to_x0_eps(s, x_t, t, make_target(s, x0, t, eps, pred), pred)
        assert torch.allclose(p0, x0, **tol) and torch.allclose(pe, eps, **tol)
    with pytest.raises(ValueError, match="unknown prediction"):
        make_target(s, x0, t, eps, "score")


# ----------------------------------------------------------------------------- samplers


def _oracle(sched: Schedule, x0: torch.Tensor, prediction: str):
    """A perfect model: returns the exact `prediction` target of x_t for the known x0."""

    def model(x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        assert t.dtype == torch.float32 and torch.all(t == t.round())
        eps = x0_to_eps(sched, x_t, t.long(), x0)
        return make_target(sched, x0.expand_as(x_t), t.long(), eps, prediction)

    return model


def _pair(dtype: torch.dtype = torch.float64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x0 = (torch.rand(2, 3, 8, 8, generator=g) * 2 - 1).to(dtype)
    x_T = torch.randn(2, 3, 8, 8, generator=g).to(dtype)
    return x0, x_T


@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize(
    "sampler,schedule,T,steps",
    [
        ("ddim", "cosine", 1000, 1),
        ("ddim", "cosine", 1000, 4),
        ("ddim", "cosine", 1000, 50),
        ("ddim", "linear", 20, 7),
        ("ddpm", "linear", 20, 20),  # full chain, small T
        ("ddpm", "cosine", 1000, 8),  # respaced
        ("ddpm", "cosine", 1000, 1),
    ],
)
def test_oracle_model_recovers_x0(
    sampler: str, schedule: str, T: int, steps: int, prediction: str
) -> None:
    s = Schedule(make_betas(schedule, T, 1e-3, 0.1))
    x0, x_T = _pair()  # float64: eps -> x0 at t = T-1 divides by sqrt(ab) ~ 5e-5
    g = torch.Generator().manual_seed(1)
    eta = 1.0 if sampler == "ddpm" else 0.0
    out = sample(
        sampler,
        _oracle(s, x0, prediction),
        s,
        x_T,
        x_T,
        steps=steps,
        eta=eta,
        prediction=prediction,
        generator=g,
    )
    assert out.dtype == torch.float64
    assert (out - x0).abs().max() < 1e-4


def test_oracle_recovery_in_float32_with_stochastic_ddim() -> None:
    s = Schedule(make_betas("cosine", 1000))
    x0, x_T = _pair(torch.float32)
    g = torch.Generator().manual_seed(3)
    out = ddim_sample(
        _oracle(s, x0, "v"), s, x_T, x_T, steps=10, eta=1.0, prediction="v", generator=g
    )
    assert (out - x0).abs().max() < 1e-4


def _tiny_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_unet(TINY).eval()
    torch.nn.init.normal_(model.out[-1].weight, std=0.05)  # non-zero output layer
    return model


def test_ddim_eta0_is_deterministic_and_ignores_generator() -> None:
    model, s = _tiny_model(), Schedule(make_betas("cosine", 100))
    _, x_T = _pair(torch.float32)
    cond = torch.zeros_like(x_T)
    outs = [
        ddim_sample(model, s, x_T, cond, steps=3, prediction="eps", generator=g)
        for g in (None, torch.Generator().manual_seed(0), torch.Generator().manual_seed(9))
    ]
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_stochastic_sampling_follows_the_seed(name: str) -> None:
    model, s = _tiny_model(), Schedule(make_betas("cosine", 100))
    _, x_T = _pair(torch.float32)

    def run(seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return sample(name, model, s, x_T, x_T, steps=5, eta=1.0, prediction="v", generator=g)

    a, b, c = run(0), run(0), run(1)
    assert torch.equal(a, b) and not torch.allclose(a, c)
    assert a.min() >= -1 and a.max() <= 1  # clip_x0 keeps the final x0 in range


def test_ddim_golden_sample_of_a_seeded_model() -> None:
    model, s = _tiny_model(), Schedule(make_betas("cosine", 100))
    g = torch.Generator().manual_seed(123)
    x_T = torch.randn(1, 3, 16, 16, generator=g)
    cond = torch.rand(1, 3, 16, 16, generator=g) * 2 - 1
    out = ddim_sample(model, s, x_T, cond, steps=4, prediction="v")
    assert math.isclose(out.sum().item(), 19.728084564208984, abs_tol=1e-3)
    assert math.isclose(out.mean().item(), 0.02568761073052883, abs_tol=1e-4)
    golden = torch.tensor([0.21690084040164948, -0.7872649431228638, -0.28164878487586975])
    assert torch.allclose(out[0, 0, 0, :3], golden, atol=1e-4)


def test_ddpm_posterior_is_gaussian_conditioning_of_the_forward_chain() -> None:
    """q(x_{k-1} | x_k, x0) by conditioning the joint Gaussian of x_{k-1} = sqrt(ab') x0 +
    sqrt(1 - ab') e1 and x_k = sqrt(a) x_{k-1} + sqrt(b) e2 on x_k (an independent derivation of
    Ho et al.'s eq. 7): mean = sqrt(ab') x0 + C / V (x_k - sqrt(ab) x0), variance = (1 - ab') -
    C^2 / V, with C = sqrt(a) (1 - ab') and V = a (1 - ab') + b."""
    s = Schedule(make_betas("cosine", 100))
    f = s.f64
    b, ab, ab_prev = f["betas"], f["alphas_cumprod"], f["alphas_cumprod_prev"]
    a = 1 - b
    cov, var = np.sqrt(a) * (1 - ab_prev), a * (1 - ab_prev) + b
    np.testing.assert_allclose(var, 1 - ab, rtol=1e-12)  # the chain's marginal at k
    np.testing.assert_allclose(f["posterior_mean_coef2"], cov / var, rtol=1e-9, atol=1e-12)
    coef1 = np.sqrt(ab_prev) - cov / var * np.sqrt(ab)
    np.testing.assert_allclose(f["posterior_mean_coef1"], coef1, rtol=1e-9, atol=1e-12)
    post_var = (1 - ab_prev) - cov**2 / var
    np.testing.assert_allclose(f["posterior_variance"], post_var, rtol=1e-9, atol=1e-12)


def test_stochastic_golden_samples_of_a_seeded_model() -> None:
    """DDPM and DDIM at eta = 1 on a seeded model and generator. An oracle model cannot see
    the intermediate steps' noise (posterior variance, eq. 16's sigma): every chain's last
    step lands on its x0 estimate. Here DDIM at eta = 1 must be DDPM's ancestral step on the
    same grid (Song et al. 2021, eq. 16), draw for draw, and golden values (this code at the
    commit that added the test) pin both."""
    model, s = _tiny_model(), Schedule(make_betas("cosine", 100))
    g = torch.Generator().manual_seed(123)
    x_T = torch.randn(1, 3, 16, 16, generator=g)
    cond = torch.rand(1, 3, 16, 16, generator=g) * 2 - 1
    got = {}
    for name in ("ddpm", "ddim"):
        out = sample(name, model, s, x_T, cond, steps=4, eta=1.0, prediction="v",
                     generator=torch.Generator().manual_seed(7))  # fmt: skip
        got[name] = out
    torch.testing.assert_close(got["ddim"], got["ddpm"], atol=1e-5, rtol=0)
    assert math.isclose(got["ddpm"].sum().item(), 37.11276626586914, abs_tol=1e-3)
    golden = torch.tensor([-0.964447021484375, 0.35996150970458984, 0.3418441116809845])
    assert torch.allclose(got["ddpm"][0, 0, 0, :3], golden, atol=1e-4)


def test_sampler_argument_errors() -> None:
    s = Schedule(make_betas("linear", 10, 1e-3, 0.1))
    x = torch.zeros(1, 3, 8, 8)
    with pytest.raises(ValueError, match="unknown sampler"):
        sample("euler", _oracle(s, x, "eps"), s, x, x, steps=2, prediction="eps")
    with pytest.raises(ValueError, match="steps must be"):
        ddpm_sample(_oracle(s, x, "eps"), s, x, x, steps=0, prediction="eps")
    with pytest.raises(ValueError, match="eta"):
        ddim_sample(_oracle(s, x, "eps"), s, x, x, steps=2, eta=-1, prediction="eps")


# ----------------------------------------------------------------------------- training loss


@pytest.mark.parametrize(("loss", "gamma"), [("l1", 0.0), ("mse", 0.0), ("l1", 5.0), ("mse", 1.0)])
def test_training_loss_applies_its_per_sample_error_and_min_snr_weight(loss, gamma) -> None:
    """A zero eps-model at fixed t: the per-sample error is mean |eps| (l1) or mean eps^2 (mse)
    of the seeded noise, weighted by min(SNR_t, gamma) / SNR_t when gamma > 0, then averaged.
    Recomputed here from the same draws (t given: the generator draws the noise only)."""
    s = Schedule(make_betas("cosine", 100))
    x0 = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    t = torch.tensor([2, 40, 95])
    total, stats = training_loss(
        lambda x, tt, c: torch.zeros_like(x), s, x0, x0, prediction="eps", loss=loss,
        min_snr_gamma=gamma, generator=torch.Generator().manual_seed(3), t=t,
    )  # fmt: skip
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(3))
    per = (noise.abs() if loss == "l1" else noise.square()).mean(dim=(1, 2, 3))
    snr = torch.from_numpy(s.f64["snr"][t.numpy()]).float()
    weight = torch.minimum(snr, torch.tensor(gamma)) / snr if gamma > 0 else torch.ones(3)
    assert gamma == 0 or weight.min() < 0.99  # some sample is really down-weighted
    torch.testing.assert_close(total, (weight * per).mean(), rtol=1e-6, atol=0)
    torch.testing.assert_close(stats["loss_unweighted"], per.mean(), rtol=1e-6, atol=0)


def test_min_snr_weights() -> None:
    snr = torch.tensor([0.5, 5.0, 50.0])
    assert torch.allclose(min_snr_weight(snr, 5.0, "x0"), torch.tensor([0.5, 5.0, 5.0]))
    assert torch.allclose(min_snr_weight(snr, 5.0, "eps"), torch.tensor([1.0, 1.0, 0.1]))
    assert torch.allclose(min_snr_weight(snr, 5.0, "v"), torch.tensor([0.5 / 1.5, 5 / 6, 5 / 51]))


@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("loss", ["l1", "mse"])
@pytest.mark.parametrize("gamma", [0.0, 5.0])
def test_training_loss_runs_and_is_reproducible(prediction: str, loss: str, gamma: float) -> None:
    model, s = _tiny_model(), Schedule(make_betas("cosine", 100))
    x0, _ = _pair(torch.float32)
    x0 = torch.nn.functional.interpolate(x0, size=16)
    kw = dict(prediction=prediction, loss=loss, min_snr_gamma=gamma)
    a, stats = training_loss(model, s, x0, x0, generator=torch.Generator().manual_seed(0), **kw)
    b, _ = training_loss(model, s, x0, x0, generator=torch.Generator().manual_seed(0), **kw)
    assert a.ndim == 0 and a.requires_grad and torch.isfinite(a) and torch.equal(a, b)
    assert set(stats) == {"loss", "loss_unweighted", "weight_mean", "t_mean"}
    assert not stats["loss"].requires_grad
    if gamma == 0:
        assert stats["weight_mean"] == 1.0 and torch.isclose(stats["loss_unweighted"], a)
    a.backward()


def test_training_loss_errors() -> None:
    model, s = _tiny_model(), Schedule(make_betas("cosine", 100))
    x = torch.zeros(2, 3, 16, 16)
    with pytest.raises(ValueError, match="unknown loss"):
        training_loss(model, s, x, x, prediction="v", loss="huber")
    with pytest.raises(ValueError, match="min_snr_gamma"):
        training_loss(model, s, x, x, prediction="v", loss="l1", min_snr_gamma=-1)
    with pytest.raises(ValueError, match="t must have shape"):
        training_loss(model, s, x, x, prediction="v", loss="l1", t=torch.zeros(3))


def test_tiny_model_overfits_one_batch() -> None:
    torch.manual_seed(0)
    model = build_unet(ModelConfig(base_channels=16, channel_mults=(1, 2), attn_resolutions=()))
    s = Schedule(make_betas("cosine", 100))
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(4, 3, 16, 16, generator=g) * 2 - 1
    cond = x0 + 0.1 * torch.randn(x0.shape, generator=g)
    t = torch.tensor([10, 30, 50, 70])  # fixed t and noise (re-seeded generator): one batch
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(100):
        loss, _ = training_loss(
            model,
            s,
            x0,
            cond,
            prediction="v",
            loss="mse",
            min_snr_gamma=5.0,
            generator=torch.Generator().manual_seed(0),
            t=t,
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 10, (losses[0], losses[-1])


def test_field_generators_share_the_numbers_of_their_overlap():
    """Two tiles of one image (8x8 input px at (0, 0) and (0, 4), scale 2): the start noise of
    the shared 16x8 output px is the same numbers in both, the k-th draw reads field k, and
    per-step noise (torch.randn with the generator) is the tile's own seed's, as before."""
    from diffenhance.diffusion.noise import FieldGenerator

    a, b = FieldGenerator(11, 99, 0, 0, 8, 8), FieldGenerator(12, 99, 0, 4, 8, 8)
    na, nb = a.draw((3, 16, 16)), b.draw((3, 16, 16))
    assert na.shape == (3, 16, 16) and torch.equal(na[:, :, 8:], nb[:, :, :8])
    assert not torch.equal(na[:, :, :8], nb[:, :, 8:])
    again = FieldGenerator(11, 99, 0, 0, 8, 8)
    assert torch.equal(again.draw((3, 16, 16)), na)
    assert not torch.equal(again.draw((3, 16, 16)), na)  # sample 2 starts from field 2
    other = FieldGenerator(11, 100, 0, 0, 8, 8).draw((3, 16, 16))  # another image
    assert not torch.equal(other, na)
    assert abs(float(na.mean())) < 0.2 and 0.85 < float(na.std()) < 1.15
    step = torch.randn(5, generator=FieldGenerator(11, 99, 0, 0, 8, 8))
    assert torch.equal(step, torch.randn(5, generator=torch.Generator().manual_seed(11)))
    scalar = FieldGenerator(11, 99, 0, 0, 8, 8).draw((1, 1, 1))  # off the grid: its own seed
    assert torch.equal(scalar, torch.randn((1, 1, 1), generator=torch.Generator().manual_seed(11)))


def test_per_step_noise_of_a_tile_comes_from_the_field_too():
    """DDPM's ancestral noise (samplers._randn) of two overlapping tiles: the same numbers in
    the overlap, draw for draw, so a stochastic sampler's tiles agree there as well."""
    from diffenhance.diffusion.noise import FieldGenerator
    from diffenhance.diffusion.samplers import _randn

    a, b = FieldGenerator(1, 7, 0, 0, 8, 8), FieldGenerator(2, 7, 0, 4, 8, 8)
    like = torch.zeros(1, 3, 16, 16)
    for _ in range(3):
        na, nb = _randn(like, a), _randn(like, b)
        assert torch.equal(na[..., 8:], nb[..., :8]) and not torch.equal(na, nb)
