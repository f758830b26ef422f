"""pmrf (posterior-mean rectified flow): its Euler sampler, its detail knob, its loss and the
frozen stage 1 loaded from a model of the mean formulation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from diffenhance.config import DiffusionConfig, ModelConfig, with_options
from diffenhance.diffusion import Schedule, formulation_loss, formulation_sample
from diffenhance.diffusion.formulations import get_formulation
from diffenhance.diffusion.formulations.pmrf import (
    TIME_SCALE,
    PosteriorMeanFlow,
    posterior_mean,
    start_noise,
)
from diffenhance.model import build_network, load_matching
from diffenhance.nn.predict_refine import refine_cond

T = 50
SCHED = Schedule.from_config(DiffusionConfig(timesteps=T))
MCFG = ModelConfig(base_channels=16, channel_mults=(1, 2), attn_resolutions=(2,), head_channels=16)


def dcfg(formulation: str = "pmrf", loss: str = "l1", **options: dict) -> DiffusionConfig:
    """Tiny pmrf settings (mean: regression, noise 0.1), with formulation options:
    pmrf={"train_mean": False}, residual={"predictor_channels": 8}."""
    base = DiffusionConfig(timesteps=T, formulation=formulation, loss=loss)
    pmrf = {"mean": "regression", "noise": 0.1} | options.pop("pmrf", {})
    return with_options(base, pmrf=pmrf, **options)


def images(n: int = 2, size: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(n, 3, size, size, generator=g) * 1.6 - 0.8
    y = F.avg_pool2d(F.pad(x0, (1, 1, 1, 1), mode="reflect"), 3, stride=1) * 0.9
    return x0, y


class HalfY(torch.nn.Module):
    """A regression 'mean' network: y + net(y) = 0.5 y."""

    size_multiple = 1

    def forward(self, x_t, t, cond):
        return -0.5 * cond[:, :3]


class OracleFlow(torch.nn.Module):
    """The exact estimate of a fixed target x: net = x - mu (so x^ = x, v = (x - z) / (1 - t))."""

    size_multiple = 1

    def __init__(self, target: torch.Tensor) -> None:
        super().__init__()
        self.target = target
        self.calls: list[float] = []

    def forward(self, z, t, cond):
        tt = t / TIME_SCALE
        self.calls.append(float(tt[0]))
        return self.target - cond[:, :3]  # cond = [mu, the condition]


def sample(net, y, *, steps=4, detail=1.0, seed=0, cfg=None):
    return formulation_sample(
        cfg or dcfg(), net, SCHED, y, steps=steps, detail=detail, clip_x0=False,
        generator=torch.Generator().manual_seed(seed),
    )  # fmt: skip


@pytest.mark.parametrize("steps", [1, 3, 5])
def test_euler_reaches_the_target_of_an_exact_straight_flow(steps):
    """Straight paths: Euler with the exact velocity lands on the target for any step count,
    visiting t = 0, 1/K, ..., (K-1)/K (Alg. 2)."""
    x0, y = images()
    flow = OracleFlow(x0)
    out = sample(PosteriorMeanFlow(HalfY(), flow), y, steps=steps)
    torch.testing.assert_close(out, x0, atol=1e-5, rtol=0)
    assert flow.calls == pytest.approx([i / steps for i in range(steps)])


class PulledFlow(torch.nn.Module):
    """An estimate that depends on the state: x^ = a z + (1 - a) x, so each Euler step closes
    the share (1 - a) dt / (1 - t) of the gap to x, and only the last one lands on x^."""

    size_multiple = 1

    def __init__(self, target: torch.Tensor, a: float) -> None:
        super().__init__()
        self.target, self.a = target, a

    def forward(self, z, t, cond):
        return self.a * z + (1 - self.a) * self.target - cond[:, :3]


@pytest.mark.parametrize("steps", [1, 2, 3, 5])
def test_euler_steps_follow_the_closed_form_of_a_state_dependent_flow(steps):
    """Every intermediate Euler step counts (an oracle flow hides them: its last step lands on
    x^ whatever came before). With no start noise z_0 = mu, and the gap to x shrinks by
    1 - (1 - a) / (K - i) at step i (dt / (1 - t_i) = 1 / (K - i)): K = 3, a = 1/2 leaves
    5/6 * 3/4 * 1/2 = 5/16 of x - mu."""
    x0, y = images()
    a, mu = 0.5, 0.5 * y
    out = sample(PosteriorMeanFlow(HalfY(), PulledFlow(x0, a)), y, steps=steps,
                 cfg=dcfg(pmrf={"noise": 0.0}))  # fmt: skip
    gap = 1.0
    for i in range(steps):
        gap *= 1 - (1 - a) / (steps - i)
    assert steps != 3 or gap == pytest.approx(5 / 16)
    torch.testing.assert_close(out, x0 - gap * (x0 - mu), atol=1e-6, rtol=0)


def test_detail_zero_is_the_posterior_mean_and_the_knob_is_linear():
    x0, y = images()
    flow = OracleFlow(x0)
    net = PosteriorMeanFlow(HalfY(), flow)
    mean = sample(net, y, detail=0.0)
    torch.testing.assert_close(mean, 0.5 * y)
    assert flow.calls == []  # the fidelity end never runs the flow
    full = sample(net, y, detail=1.0)
    for d in (0.25, 0.5, 0.75):
        torch.testing.assert_close(sample(net, y, detail=d), mean + d * (full - mean))


def test_detail_is_refused_by_formulations_without_the_knob():
    x0, y = images()
    with pytest.raises(ValueError, match="no detail knob"):
        formulation_sample(
            DiffusionConfig(timesteps=T, formulation="regression"), HalfY(), SCHED, y, steps=1,
            detail=0.5,
        )  # fmt: skip
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        sample(PosteriorMeanFlow(HalfY(), OracleFlow(x0)), y, detail=1.5)


def test_samples_differ_by_their_start_noise_only():
    """Two seeds give two samples of a network that is not the oracle; one seed, one sample."""
    torch.manual_seed(0)
    cfg = dcfg()
    net = build_network(MCFG, cfg, 1)
    torch.nn.init.normal_(net.flow.out[-1].weight, std=0.05)  # zero at init: make it move
    _, y = images()
    a, b = sample(net, y, cfg=cfg, seed=1), sample(net, y, cfg=cfg, seed=2)
    torch.testing.assert_close(a, sample(net, y, cfg=cfg, seed=1))
    assert not torch.equal(a, b)


class Zero(torch.nn.Module):
    """An untrained flow: its last layer is zero-initialised."""

    size_multiple = 1

    def forward(self, z, t, cond):
        return torch.zeros_like(z)


class StateIsEstimate(torch.nn.Module):
    """net = z - mu, so x^(z_t, t) = z_t."""

    size_multiple = 1

    def forward(self, z, t, cond):
        return z - cond[:, :3]


def test_loss_is_flow_matching_on_the_straight_path():
    """With x^ = z_t the loss is mean((z_t - x0)^2) = mean(((1 - t)(z0 - x0))^2) per item,
    z0 = mu + sigma eps, t ~ U[0, 1) drawn before eps."""
    cfg = dcfg(loss="mse", pmrf={"train_mean": False})
    x0, y = images()
    net = PosteriorMeanFlow(HalfY(), StateIsEstimate())
    loss, stats = formulation_loss(cfg, net, SCHED, x0, y, generator=torch.Generator())
    g = torch.Generator()
    t = torch.rand(2, generator=g).view(-1, 1, 1, 1)
    z0 = 0.5 * y + 0.1 * torch.randn(x0.shape, generator=g)
    want = ((1 - t) * (z0 - x0)).square().mean()
    assert float(loss) == pytest.approx(float(want), rel=1e-5)
    assert "loss_mean" not in stats


def test_edge_start_noise_follows_the_edges_of_the_mean():
    """noise_map=edges: sigma_s min(1, floor + |grad Y| / edge), |grad| averaged over 3x3. A
    vertical step of 1 between columns 3 and 4 (Y: the channel mean) gives |grad| = 1 in
    column 3 only, 1/3 in columns 2..4 after the average: sigma_s there, floor x sigma_s
    elsewhere; uniform is sigma_s itself (the shipped checkpoints' start, unchanged)."""
    mu = torch.full((1, 3, 8, 8), -0.5)
    mu[..., 4:] = 0.5
    mu[:, 0] += 0.2  # the channel mean is what counts
    mu[:, 1] -= 0.2
    opts = dcfg(pmrf={"noise_map": "edges", "noise_floor": 0.1, "noise_edge": 0.5}).options
    got = start_noise(mu, opts["pmrf"])
    edge = 0.1 + (1 / 3) / 0.5  # 0.767: below the cap of 1
    want = 0.1 * torch.tensor([0.1, 0.1, edge, edge, edge, 0.1, 0.1, 0.1])
    assert got.shape == (1, 1, 8, 8)
    torch.testing.assert_close(got[0, 0], want.expand(8, 8), atol=1e-6, rtol=0)
    assert start_noise(mu, dcfg().options["pmrf"]) == 0.1


def test_edge_start_noise_power_takes_the_noise_off_weak_gradients():
    """noise_power p: m = min(1, floor + (|grad| / edge) ** p). Two steps, 1 (columns 1|2) and
    0.25 (columns 5|6): after the 3x3 average |grad| is 1/3 in columns 0..2 and 1/12 in
    columns 4..6, 0 in 3 and 7. With edge 0.5 and floor 0 the strong edge gets 2/3 of sigma_s
    and the weak one 1/6 at p = 1; at p = 2, 4/9 and 1/36: the weak one loses 4x more."""
    mu = torch.zeros((1, 3, 8, 8))
    mu[..., 2:] = 1.0
    mu[..., 6:] = 1.25
    got = {}
    for p in (1.0, 2.0):
        o = dcfg(pmrf={"noise_map": "edges", "noise_floor": 0.0, "noise_edge": 0.5,
                       "noise_power": p, "noise": 0.1}).options["pmrf"]  # fmt: skip
        got[p] = start_noise(mu, o)[0, 0, 3]  # one row: the map is constant down the columns
    strong, weak = 1 / 3 / 0.5, 1 / 12 / 0.5
    want1 = torch.tensor([strong, strong, strong, 0, weak, weak, weak, 0])
    torch.testing.assert_close(got[1.0], 0.1 * want1, atol=1e-6, rtol=0)
    torch.testing.assert_close(got[2.0], 0.1 * want1**2, atol=1e-6, rtol=0)
    assert float(got[2.0][4]) / float(got[2.0][0]) == pytest.approx(1 / 16)


def test_edge_start_noise_trains_and_samples_around_the_mean():
    """With edges the start noise is small where mu is flat: a flow that keeps its state
    (x^ = z) ends at mu + that noise, so its spread is the map's; the loss is finite."""
    cfg = dcfg(loss="mse", pmrf={"noise_map": "edges", "noise_floor": 0.1, "noise_edge": 0.05,
                                 "train_mean": False})  # fmt: skip
    x0, y = images(n=1, size=16)
    y[..., :8] = 0.3  # flat on the left, textured on the right
    net = PosteriorMeanFlow(HalfY(), StateIsEstimate())
    loss, _ = formulation_loss(cfg, net, SCHED, x0, y, generator=torch.Generator())
    assert torch.isfinite(loss)
    outs = torch.stack([sample(net, y, steps=1, cfg=cfg, seed=s) - 0.5 * y for s in range(8)])
    flat, busy = outs[..., 1:6].std(), outs[..., 11:].std()
    assert float(flat) == pytest.approx(0.01, rel=0.2) and float(busy) > 0.05


def test_start_noise_options_are_checked():
    from diffenhance.config import ConfigError, load_config

    for kv, pattern in (("noise_map=edge", r"'diffusion\.options\.pmrf\.noise_map' = 'edge'"),
                        ("noise_edge=0", r"noise_edge' = 0\.0 must be a finite number > 0"),
                        ("noise_floor=1.5", r"noise_floor' = 1\.5 must be in \[0, 1\]"),
                        ("noise_power=0", r"noise_power' = 0\.0 must be a finite number > 0")):  # fmt: skip
        with pytest.raises(ConfigError, match=pattern):
            load_config(None, [f"diffusion.options.pmrf.{kv}"])


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_an_untrained_flow_returns_the_mean_not_grain(steps):
    """The flow is anchored at mu: with a zero network every Euler step removes start noise
    and the end point is mu exactly, at any detail."""
    _, y = images()
    net = PosteriorMeanFlow(HalfY(), Zero())
    for d in (0.5, 1.0):
        torch.testing.assert_close(sample(net, y, steps=steps, detail=d), 0.5 * y)


def test_frozen_mean_gets_no_gradient_and_trained_mean_does():
    x0, y = images()
    for train_mean in (False, True):
        cfg = dcfg(
            pmrf={"mean": "residual", "train_mean": train_mean}, residual={"predictor_channels": 8}
        )
        net = build_network(MCFG, cfg, 1)
        loss, stats = formulation_loss(
            cfg, net, SCHED, x0, y, generator=torch.Generator().manual_seed(0)
        )
        loss.backward()
        assert all(p.grad is not None for p in net.flow.parameters())
        mean_grads = [p.grad is not None for p in net.mean.parameters()]
        assert all(mean_grads) if train_mean else not any(mean_grads)
        assert ("loss_mean" in stats) == train_mean


def test_a_mean_formulation_checkpoint_becomes_stage_one():
    """init_tensors puts a residual model's tensors under mean.* and keeps the fresh flow; the
    posterior mean is then exactly that model's 1-step output."""
    torch.manual_seed(0)
    rcfg = dcfg("residual", residual={"predictor_channels": 8})
    residual = build_network(MCFG, rcfg, 1)
    for p in residual.parameters():  # a 'trained' model: not the zero-initialised output
        p.data.add_(0.01 * torch.randn_like(p))
    cfg = dcfg(pmrf={"mean": "residual", "train_mean": False}, residual={"predictor_channels": 8})
    net = build_network(MCFG, cfg, 1)
    fresh_flow = {k: v.clone() for k, v in net.state_dict().items() if k.startswith("flow.")}
    tensors = get_formulation("pmrf").init_tensors(net, residual.state_dict(), {})
    assert load_matching(net, tensors, strict=True, source="test") == []
    for k, v in fresh_flow.items():
        torch.testing.assert_close(net.state_dict()[k], v)
    _, y = images()
    # the residual model's 1-step DDIM output from r_T = 0 (the mean of its start noise),
    # written out: mu0 + x0-estimate / scale, x0 from the v prediction at the last timestep
    mu0 = residual.predict(y)
    zero = torch.zeros_like(y)
    t = torch.full((y.shape[0],), T - 1)
    v = residual.denoise(zero, t, refine_cond(mu0, y))
    ab = SCHED.alphas_cumprod[T - 1]
    x0 = ab.sqrt() * zero - (1 - ab).sqrt() * v
    want = (mu0 + x0 / rcfg.options["residual"].scale).clamp(-1, 1)
    got = posterior_mean(cfg, net, SCHED, y)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    # the fidelity end is the posterior mean for every seed: nothing is drawn
    fid = [sample(net, y, cfg=cfg, detail=0.0, seed=s) for s in (1, 2)]
    assert torch.equal(fid[0], fid[1]) and torch.equal(fid[0], got)
    # a pmrf checkpoint is loaded as it is
    assert get_formulation("pmrf").init_tensors(net, net.state_dict(), {}).keys() == (
        net.state_dict().keys()
    )


def test_pmrf_cannot_be_its_own_mean():
    with pytest.raises(ValueError, match="stage-1"):
        build_network(MCFG, dcfg(pmrf={"mean": "pmrf"}), 1)


# ----------------------------------------------------------------------------- presets end to end


@pytest.fixture(scope="module")
def pmrf_model(tmp_path_factory):
    """A tiny pmrf sr2 model with measured-looking presets recorded; (root, model dir)."""
    from diffenhance.model import set_recommended
    from diffenhance.train import train_model
    from tests.tiny import make_dataset, tiny_config

    root = tmp_path_factory.mktemp("pmrf")
    make_dataset(root)
    cfg = tiny_config(
        root, "train.steps=3", "train.val_every=3", "diffusion.formulation=pmrf",
        "diffusion.options.pmrf.mean=regression", "infer.detail=1",
    )  # fmt: skip
    out = train_model(cfg, "sr2")
    presets = {"fidelity": {"steps": 1, "samples": 1, "detail": 0.0},
               "balanced": {"steps": 2, "samples": 1, "detail": 0.5},
               "detail": {"steps": 2, "samples": 1, "detail": 1.0}}  # fmt: skip
    set_recommended(out, 1, 1, "test presets (RESULTS.md)", presets=presets)
    return root, out


def test_presets_resolve_and_explicit_settings_win(pmrf_model):
    from dataclasses import replace

    from diffenhance.config import InferConfig
    from diffenhance.model import load_restorer, presets
    from diffenhance.restore import sampling_spec

    r = load_restorer(pmrf_model[1])
    assert list(presets(r)) == ["fidelity", "balanced", "detail"]
    base = InferConfig()
    got = lambda **kw: sampling_spec(r, replace(base, **kw))  # noqa: E731
    assert (got().steps, got().detail) == (1, 0.0)  # the default preset: fidelity
    assert (got(preset="detail").steps, got(preset="detail").detail) == (2, 1.0)
    assert got(preset="detail", steps=4, detail=0.25).steps == 4
    assert got(preset="detail", steps=4, detail=0.25).detail == 0.25
    with pytest.raises(ValueError, match="no preset 'sharp'.*fidelity, balanced, detail"):
        got(preset="sharp")
    # steps alone would leave the posterior mean (detail 0) untouched: they run at the knob's
    # detail end (the most detailed preset's), as evaluate's steps curve does ...
    assert (got(steps=4).steps, got(steps=4).detail) == (4, 1.0)
    assert got(steps=1).detail == 1.0  # the fidelity preset's own count is a step count too
    # ... and not when the user says where on the knob, nor for a caller's override (training's
    # validation scores the preset at train.val_steps)
    assert got(steps=4, detail=0.0).detail == 0.0
    assert got(steps=4, preset="fidelity").detail == 0.0
    assert got(steps=4, preset="balanced").detail == 0.5
    assert sampling_spec(r, base, steps=4).detail == 0.0
    assert sampling_spec(r, replace(base, steps=4), detail=0.0).detail == 0.0


def test_the_detail_end_is_the_most_detailed_preset(pmrf_model, tmp_path):
    import shutil

    from diffenhance.config import InferConfig, load_config
    from diffenhance.enhance import plan_job
    from diffenhance.model import detail_end, load_restorer, set_recommended
    from diffenhance.restore import sampling_spec

    d = tmp_path / "m"
    shutil.copytree(pmrf_model[1], d)
    fidelity = {"steps": 1, "samples": 1, "detail": 0.0}
    set_recommended(d, 1, 1, "test", presets={"fidelity": fidelity,
                                              "balanced": {"steps": 4, "detail": 0.75}})  # fmt: skip
    assert detail_end(load_restorer(d)) == 0.75
    # the detail steps alone run at, in the restore path and in a job's params
    assert sampling_spec(load_restorer(d), InferConfig(steps=4)).detail == 0.75
    cfg = load_config(None, [f"enhance.input={tmp_path}", f"enhance.output={tmp_path / 'o'}",
                             f"enhance.model={d}", "infer.steps=4"])  # fmt: skip
    assert plan_job(cfg).params["infer"]["detail"] == 0.75
    set_recommended(d, 1, 1, "test")  # no presets measured: the fidelity end only
    assert detail_end(load_restorer(d)) == 1.0
    assert sampling_spec(load_restorer(d), InferConfig(steps=4)).detail == 1.0


def test_steps_imply_no_detail_where_the_default_preset_is_not_the_mean(pmrf_model, tmp_path):
    """A model without a detail knob (indi) or one whose default preset samples: its steps act
    already, so nothing is implied, nothing said, and a job's params hash is the one it had."""
    import json
    import shutil

    from diffenhance.config import InferConfig, load_config
    from diffenhance.enhance import plan_job
    from diffenhance.enhance.job import output_params, params_hash
    from diffenhance.model import load_restorer, read_checkpoint, save_weights, set_recommended
    from diffenhance.restore import implied_detail, sampling_spec
    from diffenhance.train import train_model
    from tests.tiny import make_dataset, tiny_config

    make_dataset(tmp_path / "data")
    indi = train_model(tiny_config(tmp_path / "data", "train.steps=1", "train.val_every=1",
                                   "diffusion.formulation=indi"), "sr2")  # fmt: skip
    sampler = tmp_path / "sampler"
    shutil.copytree(pmrf_model[1], sampler)
    presets = {"fidelity": {"steps": 1, "detail": 0.0}, "balanced": {"steps": 2, "detail": 0.5}}
    set_recommended(sampler, 1, 1, "test", presets=presets)
    tensors, meta = read_checkpoint(sampler)  # a default preset other than fidelity
    rec = json.loads(meta["recommended"]) | {"preset": "balanced"}
    save_weights(sampler / "model.safetensors", tensors, meta | {"recommended": json.dumps(rec)})
    for model in (indi, sampler):
        base = [f"enhance.input={tmp_path / 'data'}", f"enhance.output={tmp_path / 'o'}",
                f"enhance.model={model}", "infer.steps=2"]  # fmt: skip
        cfg = load_config(None, base)
        assert implied_detail(load_restorer(model), cfg.infer) is None
        job = plan_job(cfg)
        assert "detail" not in job.params["infer"]
        assert job.params_hash == params_hash(output_params(cfg))
    assert sampling_spec(load_restorer(sampler), InferConfig(steps=2)).detail == 0.5


def test_evaluate_and_report_show_the_knob(pmrf_model):
    from diffenhance.evaluate import evaluate_model
    from diffenhance.report import build_report
    from tests.tiny import tiny_config

    root, out = pmrf_model
    cfg = tiny_config(
        root, f"evaluate.out_dir={root / 'reports'}", "evaluate.steps=[1, 2]", "report.crops=1",
        "report.zoom_size=8",
    )  # fmt: skip
    ev = evaluate_model(cfg, "sr2")
    m = ev.metrics
    # fidelity: the posterior mean; the flow runs Euler steps, whatever infer.sampler says,
    # and the keys, rows and protocol name that sampler (they said ddim)
    assert ev.headline == "model_euler1_d0"
    assert ev.protocol["sampler"] == "euler" and ev.protocol["sampling"]["sampler"] == "ddim"
    assert set(ev.per_image.query("kind != 'baseline'")["sampler"]) == {"euler"}
    assert "model_euler2_psnr_y" in m and not any("ddim" in k for k in m)
    for name in ("fidelity", "balanced", "detail"):
        assert (ev.dir / "images" / f"preset_{name}").is_dir()
        assert f"preset_{name}_psnr_y" in m and f"preset_{name}_err_std_flat_y" in m
    # edge coherence: the mean over images of metrics.edge_coherence, per preset
    rows = ev.per_image.query("method == 'preset_detail'")
    assert m["preset_detail_edge_coherence"] == pytest.approx(rows["edge_coherence"].mean())
    assert m["preset_detail_edge_coherence"] > 0 and "edge_coherence" in ev.protocol
    # the fidelity preset is the headline, bit for bit
    assert m["preset_fidelity_psnr_y"] == m["model_psnr_y"]
    want = (m["preset_detail_err_std_flat_y"] / m["preset_fidelity_err_std_flat_y"]) / (
        m["preset_detail_err_std_y"] / m["preset_fidelity_err_std_y"]
    )
    assert m["preset_detail_grain_score"] == pytest.approx(want, rel=1e-5)
    # the steps curve and the uncertainty maps run at the detail end (detail 1), not at the
    # headline's detail 0 (where every sample is the mean)
    assert set(ev.per_image.query("kind == 'model'")["detail"]) == {1.0}
    assert ev.protocol["uncertainty"]["sampling"]["detail"] == 1.0
    rep = build_report(ev.dir, ev.dir, cfg.report)
    knob = [p for p in rep.plots if p.name.startswith("knob_")]
    assert [p.name for p in knob] == ["knob_best_0.png", "knob_worst_1.png"]
    page = rep.html.read_text()
    assert "euler (eta 0.0); the configured sampler ddim does not apply" in page
    assert "grain score" in page
    assert f"detail: grain score {m['preset_detail_grain_score']:.2f} (bar &lt;= 1.1: " in page
    assert f"edge coherence {m['preset_detail_edge_coherence']:.2f} (bar &gt;= 0.85: " in page


def test_cli_preset_and_models_listing(pmrf_model, tmp_path):
    from typer.testing import CliRunner

    from diffenhance.cli import app
    from diffenhance.io import read_image, write_image

    root, out = pmrf_model
    write_image(tmp_path / "in.png", torch.rand(16, 16, 3).numpy())
    run = lambda *a: CliRunner().invoke(app, list(a))  # noqa: E731
    args = ["enhance", str(tmp_path / "in.png"), "--model", str(out), "--device", "cpu"]
    r = run(*args[:2], str(tmp_path / "fid.png"), *args[2:])
    assert r.exit_code == 0, r.output
    r = run(*args[:2], str(tmp_path / "det.png"), *args[2:], "--preset", "detail")
    assert r.exit_code == 0, r.output
    assert read_image(tmp_path / "det.png").shape == (32, 32, 3)
    # --steps alone runs at the detail end: 2 steps at detail 1 are the detail preset, bit for
    # bit; with --detail 0 they are the posterior mean, which no step count changes
    r = run(*args[:2], str(tmp_path / "s2.png"), *args[2:], "--steps", "2")
    assert r.exit_code == 0, r.output
    assert "steps 2 (--steps, infer.steps) without --preset or --detail: " in r.output
    assert "so they run at detail 1, the far end of its knob" in r.output
    assert np.array_equal(read_image(tmp_path / "s2.png"), read_image(tmp_path / "det.png"))
    assert not np.array_equal(read_image(tmp_path / "s2.png"), read_image(tmp_path / "fid.png"))
    r = run(*args[:2], str(tmp_path / "m2.png"), *args[2:], "--steps", "2", "--detail", "0")
    assert r.exit_code == 0, r.output
    assert "without --preset or --detail" not in r.output
    assert np.array_equal(read_image(tmp_path / "m2.png"), read_image(tmp_path / "fid.png"))
    r = run(*args[:2], str(tmp_path / "u.png"), *args[2:], "--samples", "2", "--uncertainty")
    assert r.exit_code == 2 and "detail=0 is the posterior mean" in r.output  # fidelity
    r = run(*args[:2], str(tmp_path / "u.png"), *args[2:], "--samples", "2", "--uncertainty",
            "--preset", "balanced")  # fmt: skip
    assert r.exit_code == 0, r.output
    assert (tmp_path / "u.uncertainty.png").is_file()
    r = run(*args[:2], str(tmp_path / "x.png"), *args[2:], "--preset", "sharp")
    assert r.exit_code == 2 and "no preset 'sharp'" in r.output
    assert not (tmp_path / "x.png").exists()
    r = run("models", "--models-dir", str(out.parent))
    assert r.exit_code == 0, r.output
    assert "--preset detail: steps 2, samples 1, detail 1" in r.output
    assert "--preset fidelity (default): steps 1, samples 1, detail 0" in r.output


def test_a_detail_implied_by_steps_is_part_of_the_jobs_params(pmrf_model, tmp_path):
    """Output pixels follow the implied detail, so the params hash that marks an output done
    records it: a `--steps 2` job from before steps implied a detail (it wrote the mean) is
    redone, and an explicit --detail 0 job keeps its hash."""
    from diffenhance.config import load_config
    from diffenhance.enhance import plan_job
    from diffenhance.enhance.job import output_params, params_hash
    from diffenhance.io import write_image

    write_image(tmp_path / "in" / "a.png", torch.rand(16, 16, 3).numpy())
    base = [f"enhance.input={tmp_path / 'in'}", f"enhance.output={tmp_path / 'out'}",
            f"enhance.model={pmrf_model[1]}", "infer.steps=2"]  # fmt: skip
    cfg = load_config(None, base)
    job = plan_job(cfg)
    assert job.params["infer"]["detail"] == 1.0
    assert job.params_hash != params_hash(output_params(cfg))  # the hash before: redone
    mean = load_config(None, [*base, "infer.detail=0"])
    assert plan_job(mean).params_hash == params_hash(output_params(mean))


def test_steps_alone_on_a_model_with_no_measured_knob(pmrf_model, tmp_path):
    """Its one preset, the mean, is no longer the headline when steps alone move it to the far
    end: evaluate scores it beside the headline, and the UI names no preset for what ran."""
    import shutil

    from diffenhance.config import InferConfig
    from diffenhance.evaluate import evaluate_model
    from diffenhance.model import set_recommended
    from diffenhance.ui.jobs import ran_with
    from tests.tiny import tiny_config

    root, model = pmrf_model
    shutil.copytree(model, tmp_path / "models" / "sr2")
    set_recommended(tmp_path / "models" / "sr2", 1, 1, "test")  # fidelity only
    m = tmp_path / "models" / "sr2" / "model.safetensors"
    assert ran_with(m, InferConfig())["preset"] == "fidelity"
    assert ran_with(m, InferConfig(steps=2)) == {"preset": None, "steps": 2, "samples": 1,
                                                 "detail": 1.0}  # fmt: skip
    assert ran_with(m, InferConfig(steps=2, preset="fidelity"))["detail"] == 0.0
    cfg = tiny_config(root, f"train.out_dir={tmp_path / 'models'}", "infer.steps=2",
                      f"evaluate.out_dir={tmp_path / 'reports'}", "evaluate.steps=[2]",
                      "evaluate.uncertainty_samples=0")  # fmt: skip
    ev = evaluate_model(cfg, "sr2")
    assert ev.headline == "model_euler2"  # detail 1: the far end
    assert "preset_fidelity_psnr_y" in ev.metrics  # the mean, scored beside it
    rows = ev.per_image.query("method == 'preset_fidelity'")
    assert set(rows["detail"]) == {0.0} and len(rows) > 0


def test_a_frozen_mean_without_a_checkpoint_is_refused(tmp_path):
    """options.pmrf.train_mean=false with nothing to load would train a flow on a random, frozen mean."""
    from diffenhance.train import train_model
    from tests.tiny import make_dataset, tiny_config

    make_dataset(tmp_path)
    cfg = tiny_config(
        tmp_path, "diffusion.formulation=pmrf", "diffusion.options.pmrf.train_mean=false",
        "train.init_from=null",
    )  # fmt: skip
    with pytest.raises(ValueError, match="train_mean=false freezes stage 1"):
        train_model(cfg, "sr2")
    assert not (tmp_path / "models" / "sr2" / "model.safetensors").exists()
