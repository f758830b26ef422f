"""The one restore path and the formulation registry.

* What `evaluate` scores is byte-identical to what `diffenhance enhance` writes for the same
  checkpoint, LQ image and params (sr4 and denoise; tiled and untiled; with and without colour
  correction): reports measure what ships.
* `sampling_spec` is the one place sampler settings are resolved.
* A formulation registered from this file alone, with an option of its own, trains, samples
  and evaluates through the normal path (config validation, train stage, checkpoint, evaluate,
  enhance); so does a network with an option of its own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from diffenhance.cli import app
from diffenhance.config import ConfigError, load_config, with_options, write_resolved
from diffenhance.data.pairs import Pair
from diffenhance.diffusion.formulations import (
    Formulation,
    formulation_names,
    get_formulation,
    register,
    unregister,
)
from diffenhance.diffusion.formulations.base import pixel_loss
from diffenhance.evaluate import evaluate_pairs, load_model
from diffenhance.io import read_image, write_image
from diffenhance.model import load_restorer, set_recommended
from diffenhance.nn import Network, build_cond_net
from diffenhance.nn.network import register as register_network
from diffenhance.nn.network import unregister as unregister_network
from diffenhance.restore import SamplingSpec, restore, sampling_spec
from diffenhance.train import train_model
from tests.enhance_helpers import random_checkpoint
from tests.tiny import TINY_MODEL, make_dataset, smooth_image, tiny_config


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    yield


def _lq_pair(tmp_path: Path, task: str, hr_side: int) -> tuple[Path, Pair]:
    """An LQ PNG on disk and the Pair evaluate scores (LQ read back from that PNG)."""
    rng = np.random.default_rng(3)
    hr = smooth_image(rng, hr_side, hr_side)
    s = 4 if task == "sr4" else 1
    lq = hr[::s, ::s] if s > 1 else np.clip(hr + rng.normal(0, 0.1, hr.shape), 0, 1)
    path = write_image(tmp_path / "in" / "photo.png", lq.astype(np.float32))
    return path, Pair("photo", hr, read_image(path))


@pytest.mark.parametrize("task", ["sr4", "denoise"])
@pytest.mark.parametrize("tiled", [False, True])
@pytest.mark.parametrize("color", ["none", "wavelet"])
def test_evaluate_scores_exactly_what_enhance_writes(tmp_path, task, tiled, color):
    ckpt = random_checkpoint(tmp_path / "m.safetensors", task=task)  # residual: noise matters
    lq_path, pair = _lq_pair(tmp_path, task, 48)
    tile = ["infer.tile=8", "infer.tile_overlap=2"] if tiled else ["infer.tile=64"]
    overrides = [
        *TINY_MODEL, *tile, f"infer.color_correction={color}", "infer.steps=2",
        "infer.device=cpu", "evaluate.steps=[2]", "evaluate.seeds=[0]",
    ]  # fmt: skip
    cfg = load_config(None, overrides)
    ev = evaluate_pairs(
        load_model(ckpt, cfg), [pair], task, cfg, tmp_path / "ev", source={"kind": "test"}
    )
    assert ev.protocol["sampling"] == sampling_spec(load_restorer(ckpt), cfg.infer).describe()
    params = write_resolved(cfg, tmp_path / "cfg")
    out = tmp_path / "out.png"
    res = CliRunner().invoke(
        app, ["enhance", str(lq_path), str(out), "-m", str(ckpt), "--params", str(params)]
    )
    assert res.exit_code == 0, res.output
    scored = tmp_path / "ev" / "images" / "model" / "photo.png"
    assert out.read_bytes() == scored.read_bytes()
    lq_side = pair.lq.shape[0]
    assert read_image(out).shape == (lq_side * (4 if task == "sr4" else 1),) * 2 + (3,)


def test_sampling_spec_resolution_order(tmp_path):
    """params > checkpoint recommendation > formulation default; overrides for sweeps."""
    ckpt = random_checkpoint(tmp_path / "m.safetensors", task="sr4")
    r = load_restorer(ckpt)
    cfg = load_config(None, TINY_MODEL)
    f = get_formulation(r.diffusion_cfg.formulation)
    spec = sampling_spec(r, cfg.infer)
    assert (spec.steps, spec.samples) == (f.default_steps, f.default_samples)
    assert (spec.tile, spec.tile_overlap, spec.seed) == (cfg.infer.tile, cfg.infer.tile_overlap, 0)
    set_recommended(ckpt, 3, 2, "test")
    r = load_restorer(ckpt)
    assert (sampling_spec(r, cfg.infer).steps, sampling_spec(r, cfg.infer).samples) == (3, 2)
    cfg5 = load_config(None, [*TINY_MODEL, "infer.steps=5"])
    assert (sampling_spec(r, cfg5.infer).steps, sampling_spec(r, cfg5.infer).samples) == (5, 2)
    assert sampling_spec(r, cfg.infer, steps=7, samples=None).steps == 7  # None: not overridden
    with pytest.raises(ValueError, match="unknown sampling setting"):
        sampling_spec(r, cfg.infer, stpes=7)
    with pytest.raises(ValueError, match=">= 1"):
        sampling_spec(r, cfg.infer, samples=0)
    assert isinstance(spec, SamplingSpec) and spec.describe()["sampler"] == "ddim"


def test_same_pixels_same_output_whatever_the_key_source(tmp_path):
    """The noise key is the decoded pixels: a copy of the image restores identically."""
    ckpt = random_checkpoint(tmp_path / "m.safetensors", task="sr4")
    r = load_restorer(ckpt)
    spec = sampling_spec(r, load_config(None, [*TINY_MODEL, "infer.steps=2"]).infer)
    img = smooth_image(np.random.default_rng(0), 12, 10)
    a = restore(r, img, spec)
    np.testing.assert_array_equal(a, restore(r, img.copy(), spec))
    assert not np.array_equal(a, restore(r, img, replace(spec, seed=1)))  # the seed matters


# ----------------------------------------------------------------------------- a toy formulation


class Halfway(Formulation):
    """Toy: x^ = y + gain * net(y, 0, y), L1 to x; no randomness, no knob. `gain` is its own
    option (diffusion.options.halfway_toy.gain)."""

    name = "halfway_toy"
    default_steps = 1
    has_knob = False
    uses_start_noise = False

    @dataclass(frozen=True)
    class Options:
        gain: float = 0.5

        def check(self, bad: Callable[[str, str], Exception]) -> None:
            if not self.gain > 0:
                raise bad("gain", f"= {self.gain} must be > 0")

    def build_network(self, model_cfg, dcfg, scale, cond_channels=3):
        return build_cond_net(model_cfg, scale, in_channels=3 + cond_channels, out_channels=3)

    def _predict(self, dcfg, model, y):
        gain = dcfg.options[self.name].gain
        return y + gain * model(y, torch.zeros(y.shape[0], device=y.device), y).to(y.dtype)

    def loss(self, dcfg, model, sched, x0, cond, *, generator):
        total = pixel_loss(self._predict(dcfg, model, cond), x0, "l1").mean()
        return total, {"loss": total.detach()}

    def draws_noise(self, dcfg, sampler, eta):
        return False

    def sample_once(self, dcfg, model, sched, cond, prepared, **kw):
        return self._predict(dcfg, model, cond)


@pytest.fixture
def toy_formulation():
    register(Halfway)
    yield Halfway.name
    unregister(Halfway.name)


def test_unknown_formulation_lists_the_registry():
    with pytest.raises(ConfigError, match="registered formulation") as e:
        load_config(None, ["diffusion.formulation=halfway_toy"])
    for name in formulation_names():
        assert repr(name) in str(e.value)


def test_a_toy_formulation_trains_and_evaluates_through_the_normal_path(tmp_path, toy_formulation):
    make_dataset(tmp_path, tasks=("sr2",), n_train=2, n_val=1, size=16)
    cfg = tiny_config(
        tmp_path, f"diffusion.formulation={toy_formulation}", "train.steps=6",
        "train.val_every=3", "train.ckpt_every=3", "train.log_every=3",
        f"evaluate.out_dir={tmp_path / 'reports'}", "evaluate.steps=[1]",
        f"diffusion.options.{toy_formulation}.gain=0.25",
    )  # fmt: skip
    with pytest.raises(ConfigError, match=rf"'diffusion\.options\.{toy_formulation}\.gain' = "):
        load_config(None, [f"diffusion.options.{toy_formulation}.gain=0"])  # its own rule
    model_dir = train_model(cfg, "sr2")
    r = load_restorer(model_dir)  # the checkpoint names the toy and rebuilds its network
    assert r.diffusion_cfg.formulation == toy_formulation
    assert r.diffusion_cfg.options[toy_formulation].gain == 0.25  # and records its option
    spec = sampling_spec(r, cfg.infer)
    assert (spec.steps, spec.samples) == (1, 1)
    lq = smooth_image(np.random.default_rng(1), 8, 8)
    out = restore(r, lq, spec)
    assert out.shape == (16, 16, 3) and np.isfinite(out).all()

    def at_gain(gain: float) -> np.ndarray:
        dcfg = with_options(r.diffusion_cfg, **{toy_formulation: {"gain": gain}})
        return restore(replace(r, diffusion_cfg=dcfg), lq, spec)

    # the option is what sampling uses: twice the gain, twice the correction over y
    y, double = at_gain(1e-9), at_gain(0.5)
    inside = ((double > 0) & (double < 1) & (y > 0) & (y < 1)).all(axis=-1)  # not clipped
    assert inside.mean() > 0.5 and np.abs(out - y)[inside].max() > 1e-3
    np.testing.assert_allclose((double - y)[inside], 2 * (out - y)[inside], atol=1e-4)
    np.testing.assert_array_equal(out, restore(r, lq, replace(spec, seed=9)))  # no randomness
    from diffenhance.evaluate import evaluate_model

    ev = evaluate_model(cfg, "sr2")
    assert ev.protocol["model"]["formulation"] == toy_formulation
    assert np.isfinite(ev.metrics["model_ddim1_psnr_y"])


# ----------------------------------------------------------------------------- a toy network


class _Conv(torch.nn.Module):
    """One convolution over [x_t, cond]: `forward(x_t, t, cond)`."""

    size_multiple = 1

    def __init__(self, in_channels: int, out_channels: int, kernel: int) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2)

    def forward(self, x_t, t, cond):
        return self.conv(torch.cat([x_t, cond.to(x_t.dtype)], dim=1))


class _ConvRegressor(_Conv):
    def forward(self, cond):  # type: ignore[override]
        return self.conv(cond)


class ConvToy(Network):
    """Toy network: one convolution of `kernel` (its own option, model.options.conv_toy.kernel)."""

    name = "conv_toy"
    label = "toy convolution"

    @dataclass(frozen=True)
    class Options:
        kernel: int = 3

        def check(self, bad: Callable[[str, str], Exception]) -> None:
            if self.kernel < 1 or self.kernel % 2 == 0:
                raise bad("kernel", f"= {self.kernel} must be odd and >= 1")

    def cond_net(self, cfg, scale, in_channels=6, out_channels=3):
        return _Conv(in_channels, out_channels, cfg.options[self.name].kernel)

    def predictor(self, cfg, width, scale, cond_channels):
        return _ConvRegressor(cond_channels, 3, cfg.options[self.name].kernel)


@pytest.fixture
def toy_network():
    register_network(ConvToy)
    yield ConvToy.name
    unregister_network(ConvToy.name)


def test_a_toy_network_with_its_own_option_trains_and_restores(tmp_path, toy_network):
    """A network registered here, with an option of its own, is chosen by `model.space` and
    configured by `model.options.<name>`; the residual formulation builds both its modules."""
    with pytest.raises(ConfigError, match="registered network"):
        load_config(None, ["model.space=conv_tyo"])
    with pytest.raises(ConfigError, match=r"'model\.options\.conv_toy\.kernel' = 4 must be odd"):
        load_config(None, ["model.options.conv_toy.kernel=4"])
    make_dataset(tmp_path, tasks=("sr2",), n_train=2, n_val=1, size=16)
    cfg = tiny_config(
        tmp_path, f"model.space={toy_network}", f"model.options.{toy_network}.kernel=5",
        "diffusion.formulation=residual", "train.steps=2", "train.val_every=2",
        "train.ckpt_every=2", "train.log_every=1",
    )  # fmt: skip
    r = load_restorer(train_model(cfg, "sr2"))  # the checkpoint rebuilds the toy network
    assert r.model_cfg.space == toy_network and r.model_cfg.options[toy_network].kernel == 5
    assert r.unet.denoiser.conv.kernel_size == r.unet.predictor.conv.kernel_size == (5, 5)
    out = restore(r, smooth_image(np.random.default_rng(2), 8, 8), sampling_spec(r, cfg.infer))
    assert out.shape == (16, 16, 3) and np.isfinite(out).all()
