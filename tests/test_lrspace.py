"""The LR-space (space-to-depth) network, `model.space=lr` (nn/lrspace.py).

* shapes and `size_multiple` for scale 1, 2, 4, for every formulation's network;
* the pixel-unshuffle / shuffle wrapper puts every output pixel back where it came from;
* checkpoints of `model.space=lr` round-trip for every formulation, and checkpoints written
  before the key existed load as the HR U-Net they are;
* tiled restoration through the one restore path has no seam;
* a few training steps of `train_model` lower the loss.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from diffenhance.config import ModelConfig, load_config
from diffenhance.data.pairs import degrade_stage
from diffenhance.diffusion.formulations import FORMULATIONS, formulation_loss
from diffenhance.model import (
    build_network,
    build_restorer,
    checkpoint_metadata,
    load_restorer,
    read_checkpoint,
    save_weights,
)
from diffenhance.nn import LRResidualNet, LRSpaceUNet, UNet, build_cond_net, space_factor
from diffenhance.nn.predict_refine import PredictRefine
from diffenhance.restore import restore, sampling_spec
from diffenhance.train import train_model
from tests.tiny import TINY_MODEL, make_dataset, smooth_image, tiny_config

TINY = ModelConfig(
    base_channels=16, channel_mults=(1, 2), attn_resolutions=(2,), head_channels=16, space="lr"
)
LR = [*TINY_MODEL, "model.space=lr"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    yield


def _perturb(net: nn.Module, seed: int = 0, std: float = 0.02) -> nn.Module:
    """Give the zero-initialised output layers weight, so outputs are not all 0."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(std * torch.randn(p.shape, generator=g))
    return net


# ----------------------------------------------------------------------------- shapes


@pytest.mark.parametrize(("scale", "factor"), [(1, 2), (2, 2), (4, 4)])
def test_lr_unet_shapes_and_size_multiple(scale, factor):
    assert space_factor(scale) == factor
    net = build_cond_net(TINY, scale)
    assert isinstance(net, LRSpaceUNet) and net.factor == factor
    assert net.size_multiple == factor * 2  # f * the body's 2**(levels - 1)
    assert net.body.in_channels == 6 * factor**2 and net.body.out_channels == 3 * factor**2
    h, w = 2 * net.size_multiple, 3 * net.size_multiple
    x, c = torch.randn(2, 3, h, w), torch.randn(2, 3, h, w)
    out = net(x, torch.tensor([0, 5]), c)
    assert out.shape == (2, 3, h, w)
    assert torch.count_nonzero(out) == 0  # zero-initialised output, as the HR UNet
    assert _perturb(net)(x, torch.tensor([0, 5]), c).abs().max() > 0


@pytest.mark.parametrize("formulation", FORMULATIONS)
@pytest.mark.parametrize("scale", [1, 2, 4])
def test_every_formulation_builds_its_lr_network(formulation, scale):
    cfg = load_config(None, [*LR, f"diffusion.formulation={formulation}"])
    net = build_network(cfg.model, cfg.diffusion, scale)
    f = space_factor(scale)
    if formulation == "pmrf":  # the mean formulation's network (residual) and an LR flow
        assert isinstance(net.mean, PredictRefine) and isinstance(net.mean.denoiser, LRSpaceUNet)
        assert isinstance(net.flow, LRSpaceUNet) and net.flow.factor == f
    elif formulation == "residual":
        assert isinstance(net, PredictRefine)
        assert isinstance(net.predictor, LRResidualNet) and net.predictor.factor == f
        assert isinstance(net.denoiser, LRSpaceUNet) and net.denoiser.factor == f
    else:
        assert isinstance(net, LRSpaceUNet) and net.factor == f
    assert net.size_multiple == 2 * f
    x = torch.randn(1, 3, 2 * net.size_multiple, net.size_multiple)
    loss, stats = formulation_loss(cfg.diffusion, net, _sched(cfg), x.clamp(-1, 1), x.tanh(),
                                   generator=torch.Generator().manual_seed(0))  # fmt: skip
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in net.parameters())


def _sched(cfg):
    from diffenhance.diffusion import Schedule

    return Schedule.from_config(cfg.diffusion)


def test_hr_space_is_the_default_and_builds_todays_network():
    cfg = load_config(None, TINY_MODEL)
    assert cfg.model.space == "hr"
    assert type(build_network(cfg.model, cfg.diffusion, 4)) is type(
        build_network(cfg.model, cfg.diffusion, 1)
    )
    assert isinstance(build_cond_net(cfg.model, 4), UNet)


def test_lr_predictor_shapes_and_zero_residual_at_init():
    net = LRResidualNet(4, width=8, blocks=2)
    y = torch.randn(2, 3, 16, 24)
    assert net(y).shape == y.shape and torch.count_nonzero(net(y)) == 0
    assert _perturb(net)(y).shape == y.shape


def test_size_not_a_multiple_is_a_user_error():
    net = build_cond_net(TINY, 4)  # size_multiple 8
    x = torch.zeros(1, 3, 12, 16)
    with pytest.raises(ValueError, match="not divisible by 8.*pad H and W"):
        net(x, torch.zeros(1), x)


# ----------------------------------------------------------------------------- the wrapper


class _Pick(nn.Module):
    """A stand-in body returning its LR-grid x_t (which=0) or condition (which=1)."""

    def __init__(self, which: int) -> None:
        super().__init__()
        self.which = which

    def forward(self, x, t, cond):
        return (x, cond)[self.which]


@pytest.mark.parametrize("factor", [2, 4])
def test_unshuffle_then_shuffle_returns_every_pixel_to_its_place(factor):
    x = torch.randn(2, 3, 8 * factor, 4 * factor)
    lr = F.pixel_unshuffle(x, factor)
    assert lr.shape == (2, 3 * factor**2, 8, 4)
    # channel c * f^2 + i * f + j of LR pixel (y, x) is HR pixel (f y + i, f x + j) of channel c
    assert lr[1, 2 * factor**2 + factor + 1, 3, 2] == x[1, 2, 3 * factor + 1, 2 * factor + 1]
    assert torch.equal(F.pixel_shuffle(lr, factor), x)
    net = LRSpaceUNet(TINY, factor)
    cond = torch.randn_like(x)
    for which, want in ((0, x), (1, cond)):
        net.body = _Pick(which)  # the wrapper alone: an identity body gives back its input
        assert torch.equal(net(x, torch.zeros(2), cond), want)


# ----------------------------------------------------------------------------- checkpoints


@pytest.mark.parametrize("formulation", FORMULATIONS)
def test_lr_checkpoint_round_trip(tmp_path, formulation):
    cfg = load_config(None, [*LR, f"diffusion.formulation={formulation}"])
    r = build_restorer(cfg.model, cfg.diffusion, "sr4", cfg.degrade)
    _perturb(r.unet)
    path = save_weights(tmp_path / "m.safetensors", r.unet.state_dict(), checkpoint_metadata(r))
    assert json.loads(read_checkpoint(path)[1]["model"])["space"] == "lr"
    loaded = load_restorer(path)
    assert loaded.model_cfg == r.model_cfg and loaded.scale == 4
    assert type(loaded.unet) is type(r.unet)
    own, back = r.unet.state_dict(), loaded.unet.state_dict()
    assert own.keys() == back.keys() and all(torch.equal(own[k], back[k]) for k in own)
    lq = torch.rand(1, 3, 4, 6)
    a = r.restore(lq, steps=2, generator=torch.Generator().manual_seed(0))
    b = loaded.restore(lq, steps=2, generator=torch.Generator().manual_seed(0))
    assert a.shape == (1, 3, 16, 24) and torch.equal(a, b)


def test_checkpoint_without_space_loads_as_hr(tmp_path):
    """What every checkpoint from before `model.space` holds: no key -> the HR network."""
    cfg = load_config(None, TINY_MODEL)
    r = build_restorer(cfg.model, cfg.diffusion, "sr2", cfg.degrade)
    meta = checkpoint_metadata(r)
    model = json.loads(meta["model"])
    del model["space"]
    meta["model"] = json.dumps(model)
    path = save_weights(tmp_path / "old.safetensors", r.unet.state_dict(), meta)
    loaded = load_restorer(path)
    assert loaded.model_cfg.space == "hr" and isinstance(loaded.unet.denoiser, UNet)


# ----------------------------------------------------------------------------- tiling


class _LocalBody(nn.Module):
    """A stand-in body with a 5x5 LR-pixel receptive field and no global operation."""

    def __init__(self, factor: int, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.a = nn.Conv2d(6 * factor**2, 32, 3, padding=1)
        self.b = nn.Conv2d(32, 3 * factor**2, 3, padding=1)

    def forward(self, x, t, cond):
        return 0.5 * self.b(torch.tanh(self.a(torch.cat([x, cond], 1))))


@pytest.mark.parametrize(
    ("task", "side", "tile", "overlap"), [("sr4", 40, 16, 6), ("denoise", 90, 32, 12)]
)
def test_tiled_restore_has_no_seam(task, side, tile, overlap):
    """regression through the one restore path: tiled and one-pass outputs agree and the
    pixel-to-pixel steps across tile borders are those of the one-pass output.

    The body is a local stand-in: a U-Net's GroupNorm and attention see the whole tile, so an
    *untrained* U-Net (HR or LR) changes with the tile however it is wrapped; what LR space
    adds - the unshuffle grid on every tile, padding to its size_multiple - is tested here.
    denoise (f = 2): tiles must start on even pixels (infer snaps starts to the network's
    step); one at an odd pixel sees another unshuffle phase, a different function there.
    """
    cfg = load_config(None, [*LR, "diffusion.formulation=regression"])
    r = build_restorer(cfg.model, cfg.diffusion, task, cfg.degrade)
    r.unet.body = _LocalBody(r.unet.factor)
    img = smooth_image(np.random.default_rng(1), side, side)
    one = restore(r, img, sampling_spec(r, cfg.infer, tile=256, tile_overlap=0))
    tiled = restore(r, img, sampling_spec(r, cfg.infer, tile=tile, tile_overlap=overlap))
    s = r.scale
    cond = restore(build_restorer(cfg.model, cfg.diffusion, task, cfg.degrade), img,
                   sampling_spec(r, cfg.infer, tile=256, tile_overlap=0))  # fmt: skip
    assert one.shape == tiled.shape == (side * s, side * s, 3)
    signal = np.abs(one - cond).mean()
    assert signal > 0.01  # the network changes the image ...
    assert np.abs(tiled - one).mean() < 0.02 * signal  # ... and tiling barely does
    assert np.abs(tiled - one).max() < 0.1
    for axis in (0, 1):  # column-to-column (row-to-row) steps, averaged along the border
        step = np.abs(np.diff(tiled, axis=axis)).mean(axis=(1 - axis, 2))
        ref = np.abs(np.diff(one, axis=axis)).mean(axis=(1 - axis, 2))
        assert np.max(np.abs(step - ref)) < 0.05 * ref.mean()


# ----------------------------------------------------------------------------- training


def test_training_an_lr_network_lowers_the_loss(tmp_path):
    """denoise (f = 2): on smooth images the noise is all there is to learn, so the loss falls
    fast (for sr2 bicubic is already near-perfect on them); one noise level keeps it steady."""
    make_dataset(tmp_path, tasks=("denoise",), n_train=4, size=32)
    steps = 30
    cfg = tiny_config(
        tmp_path, *LR, "diffusion.formulation=regression", "train.tasks=[denoise]",
        f"train.steps={steps}", f"train.val_every={steps}", f"train.ckpt_every={steps}",
        "train.lr=1e-3", "train.batch_size=4", "degrade.noise_sigma=[30,30]",
    )  # fmt: skip
    degrade_stage(cfg, ["denoise"])  # the range is recorded by degrade, as in the pipeline
    out = train_model(cfg, "denoise")
    r = load_restorer(out)
    assert r.model_cfg.space == "lr" and isinstance(r.unet, LRSpaceUNet) and r.unet.factor == 2
    loss = pd.read_csv(out / "train_log.csv")["loss"].to_numpy()
    assert len(loss) == steps
    assert loss[-5:].mean() < 0.9 * loss[:5].mean(), loss  # measured: 0.179 -> 0.153
