"""Uncertainty maps: the per-pixel std of N samples, from the one restore path to files,
manifests, refusals, evaluation and the report.

* the sample driver's variance (Welford) equals numpy's on seeded toy samples, and the mean is
  the same bits with it on;
* a toy formulation with a known spread gives the std it must, through Restorer + tiled engine;
* a tiled std map equals the untiled one where the model is deterministic per position, and has
  no seam where tiles draw different noise;
* `enhance --samples N --uncertainty` writes <stem>.uncertainty.png/.npy atomically, records
  them, skips and resumes them, and leaves the output bytes unchanged;
* samples < 2 and models whose samples cannot differ are refused in one line, exit 2;
* evaluate's correlation fields, a golden correlation, and the report's map panel.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from diffenhance.cli import app
from diffenhance.config import ConfigError, DiffusionConfig, load_config
from diffenhance.data.pairs import Pair
from diffenhance.diffusion import Schedule
from diffenhance.diffusion.formulations import (
    Formulation,
    draw_normal,
    formulation_moments,
    formulation_sample,
    register,
    unregister,
)
from diffenhance.enhance import MANIFEST_DIR, plan_job
from diffenhance.evaluate import evaluate_pairs, load_model
from diffenhance.infer import TiledEnhancer, axis_windows, tile_seed, tile_starts
from diffenhance.io import read_image, write_image
from diffenhance.model import build_restorer, load_restorer
from diffenhance.report import build_report
from diffenhance.restore import (
    engine,
    image_key,
    restore,
    restore_with_uncertainty,
    sampling_spec,
)
from diffenhance.uncertainty import (
    LUT,
    STD_FULL_SCALE,
    colorize,
    error_correlation,
    uncertainty_keys,
)
from tests.enhance_helpers import IdentityTiles, random_checkpoint
from tests.tiny import TINY_MODEL, smooth_image


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    yield


class Jitter(Formulation):
    """Toy: sample = cond + AMP * c, c ~ N(0, 1) one scalar per item and sample, drawn from the
    item's generator: every pixel's spread across samples is AMP * std(c), exactly known."""

    name = "jitter_toy"
    AMP = 0.1

    def loss(self, dcfg, model, sched, x0, cond, *, generator):
        raise NotImplementedError

    def draws_noise(self, dcfg, sampler, eta):
        return False

    def sample_once(self, dcfg, model, sched, cond, prepared, *, generator, **kw):
        c = draw_normal((cond.shape[0], 1, 1, 1), generator, cond.device)
        return cond + self.AMP * c


@pytest.fixture
def jitter():
    register(Jitter)
    yield DiffusionConfig(timesteps=10, formulation=Jitter.name)
    unregister(Jitter.name)


class Grain(Jitter):
    """Toy: sample = cond + AMP * eps, eps ~ N(0, I) per pixel: pure start noise on the output
    grid, as a knob model's detail is drawn."""

    name = "grain_toy"

    def sample_once(self, dcfg, model, sched, cond, prepared, *, generator, **kw):
        return cond + self.AMP * draw_normal(cond.shape, generator, cond.device)


def infer_cfg(*extra: str):
    return load_config(None, [*TINY_MODEL, "infer.precision=fp32", *extra]).infer


# ----------------------------------------------------------------------------- the driver


def test_driver_variance_equals_numpy_and_leaves_the_mean_unchanged(jitter):
    cond = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 1.2 - 0.6
    sched = Schedule.from_config(jitter)

    def gens() -> list[torch.Generator]:
        return [torch.Generator().manual_seed(s) for s in (3, 4)]

    m = formulation_moments(jitter, None, sched, cond, steps=1, generator=gens(), samples=5,
                            variance=True)  # fmt: skip
    mean = formulation_sample(jitter, None, sched, cond, steps=1, generator=gens(), samples=5)
    assert torch.equal(m.mean, mean)  # the same bits with the variance on
    for i, g in enumerate(gens()):  # item i's 5 offsets, drawn as the toy draws them
        c = np.array([torch.randn((1, 1, 1), generator=g).item() for _ in range(5)])
        want = np.var(np.clip(cond[i].numpy()[None] + 0.1 * c[:, None, None, None], -1, 1),
                      axis=0, ddof=1)  # fmt: skip
        np.testing.assert_allclose(m.var[i].numpy(), want, rtol=1e-4, atol=1e-8)
    one = formulation_moments(jitter, None, sched, cond, steps=1, generator=gens(), variance=True)
    assert torch.equal(one.var, torch.zeros_like(cond))  # one sample: no spread


def test_known_std_through_restorer_and_tiled_engine(jitter):
    """Untiled: one tile whose generator seed is known, so the std is exactly AMP * std(c) / 2
    ([-1, 1] -> [0, 1] halves it) at every pixel, and the output is restore()'s bits."""
    cfg = load_config(None, TINY_MODEL)
    r = build_restorer(cfg.model, jitter, "sr2", cfg.degrade)
    spec = sampling_spec(r, infer_cfg("infer.tile=64"), samples=6, seed=5)
    img = 0.3 + 0.4 * smooth_image(np.random.default_rng(0), 12, 16)  # no clipping
    out, std = restore_with_uncertainty(r, img, spec)
    assert std.dtype == np.float32 and std.shape == (24, 32)
    g = torch.Generator().manual_seed(tile_seed(5, image_key(img), 0, 0))
    c = np.array([torch.randn((1, 1, 1), generator=g).item() for _ in range(6)])
    np.testing.assert_allclose(std, Jitter.AMP * c.std(ddof=1) / 2, rtol=1e-4)
    np.testing.assert_array_equal(out, restore(r, img, spec))


def test_tiled_std_equals_untiled_where_the_model_is_deterministic_per_position():
    """A TileModel whose output and variance depend only on the pixel: the cross-fade must
    reproduce them whatever the tiling (the weights sum to 1)."""

    class Spread(IdentityTiles):
        def moments(self, lq, generators, autocast_dtype):
            y = self(lq, generators, autocast_dtype)
            return y, (0.05 * y.mean(dim=1, keepdim=True)) ** 2

    img = smooth_image(np.random.default_rng(1), 37, 29)
    maps = {}
    for tile in (64, 12):
        cfg = infer_cfg(f"infer.tile={tile}", "infer.tile_overlap=4", "infer.tile_batch=3")
        eng = TiledEnhancer(Spread(scale=1), cfg, uncertainty=True)  # exact per pixel
        res = eng.enhance_one(img, "k")
        maps[tile] = (res.image, res.std)
    assert eng.stats.tiles > 4  # really tiled
    np.testing.assert_allclose(maps[12][1], maps[64][1], atol=1e-6)
    np.testing.assert_allclose(maps[12][0], maps[64][0], atol=1e-6)
    with pytest.raises(ValueError, match="no `moments`"):
        TiledEnhancer(IdentityTiles(), infer_cfg(), uncertainty=True)


def test_tiles_with_different_noise_cross_fade_without_a_seam(jitter):
    """Each tile draws its own offsets, so its (constant) variance differs from its
    neighbours'; the map is exactly the square root of the tiles' variances cross-faded with
    the output's raised-cosine windows: it ramps over each overlap instead of jumping."""
    cfg = load_config(None, TINY_MODEL)
    r = build_restorer(cfg.model, jitter, "sr2", cfg.degrade)
    spec = sampling_spec(r, infer_cfg("infer.tile=8", "infer.tile_overlap=4"), samples=3)
    # 7x23 px + the engine's one step (1 px here) of margin: one row of 5 tiles over 8x24 px
    img = 0.3 + 0.4 * smooth_image(np.random.default_rng(2), 7, 23)
    out, std = restore_with_uncertainty(r, img, spec)
    starts = [0, 4, 8, 12, 16]
    assert tile_starts(24, 8, 4) == starts and engine(r, spec).step == 1
    var = []
    for x in starts:  # each tile's offsets, drawn from its own seeded generator
        g = torch.Generator().manual_seed(tile_seed(spec.seed, image_key(img), 0, x))
        c = np.array([torch.randn((1, 1, 1), generator=g).item() for _ in range(3)])
        var.append((Jitter.AMP * c.std(ddof=1) / 2) ** 2)
    num, den = np.zeros(48), np.zeros(48)
    for x, w, v in zip(starts, axis_windows(starts, 8, 2), var, strict=True):
        num[2 * x : 2 * x + 16] += w.numpy() * v
        den[2 * x : 2 * x + 16] += w.numpy()
    want = np.sqrt(num / den)[: std.shape[1]]
    np.testing.assert_allclose(std, np.broadcast_to(want, std.shape), rtol=1e-4)
    assert max(var) > 4 * min(var)  # the tiles really differ: a hard switch would jump
    np.testing.assert_array_equal(out, restore(r, img, spec))


def test_overlapping_tiles_start_from_the_same_noise():
    """Tiles draw their start noise from one field over the image (`diffusion.noise`): in an
    overlap both tiles start from the same numbers, so a tiled sample equals the untiled one
    and keeps its full spread there. With a generator per tile the cross-fade averaged two
    independent samples: bands along every overlap with up to 30% less detail."""
    register(Grain)
    try:
        cfg = load_config(None, TINY_MODEL)
        r = build_restorer(cfg.model, DiffusionConfig(timesteps=10, formulation=Grain.name),
                           "sr2", cfg.degrade)  # fmt: skip
        img = 0.3 + 0.4 * smooth_image(np.random.default_rng(3), 37, 29)  # no clipping
        outs = {}
        for seed in (0, 1):
            for tile in (64, 12):
                spec = sampling_spec(r, infer_cfg(f"infer.tile={tile}", "infer.tile_overlap=4"),
                                     seed=seed)  # fmt: skip
                outs[seed, tile] = restore(r, img, spec)
            assert engine(r, spec).step == 1
        for seed in (0, 1):  # up to the bicubic upsampling of the input at tile edges (2e-4)
            np.testing.assert_allclose(outs[seed, 12], outs[seed, 64], atol=1e-3)
        assert np.abs(outs[0, 12] - outs[1, 12]).mean() > 0.02  # the noise is really there
    finally:
        unregister(Grain.name)


def test_shipped_sr4_map_of_constant_statistics_has_no_dark_corner():
    """Issue 23.5: every sr4 map had the same dark bottom-right corner, whatever the content.
    On i.i.d. uniform pixels (the same statistics everywhere) the std of the shipped model's
    samples, through the engine as evaluate runs it (1 step, detail 0.25, 16 samples here),
    must be no lower in the bottom-right 16x16 output px than in the other blocks (whose own
    spread, edges included, is 0.8-1.1 of their median). Today: half. The cause is not the
    engine's variance path (the tests above: it blends a uniform variance to a uniform map)
    but the network's edge, see uncertainty.py."""
    from diffenhance.infer import RestorerTiles
    from diffenhance.model import pretrained_model

    r = load_restorer(pretrained_model("sr4"))
    spec = replace(sampling_spec(r, infer_cfg(), steps=1, samples=16, seed=0), detail=0.25)
    img = np.random.default_rng(0).random((32, 32, 3)).astype(np.float32)
    eng = TiledEnhancer(RestorerTiles.from_spec(r, spec), spec, uncertainty=True)
    blocks = eng.enhance_one(img, "k").std.reshape(8, 16, 8, 16).mean(axis=(1, 3))
    others = np.delete(blocks.ravel(), -1)
    assert blocks[-1, -1] >= 0.9 * others.min(), blocks / np.median(others)


# ----------------------------------------------------------------------------- files


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return random_checkpoint(tmp_path_factory.mktemp("m") / "sr2.safetensors")  # residual


def enhance(inp: Path, out: Path, model: Path, *flags: str):
    params = out.parent / "params.yaml"
    params.write_text("{}\n")
    args = ["enhance", str(inp), str(out), "-m", str(model), "--params", str(params), *flags,
            *TINY_MODEL, "infer.tile=8", "infer.tile_overlap=2", "infer.steps=2"]  # fmt: skip
    return CliRunner().invoke(app, args)


def test_enhance_writes_maps_records_resumes_and_keeps_output_bytes(tmp_path, ckpt, monkeypatch):
    inp = tmp_path / "in"
    for i, (h, w) in enumerate([(9, 13), (12, 8)]):
        write_image(inp / f"d{i}" / f"img{i}.jpg", smooth_image(np.random.default_rng(i), h, w))
    plain = enhance(inp, tmp_path / "plain", ckpt, "--samples", "2")
    res = enhance(inp, tmp_path / "out", ckpt, "--samples", "2", "--uncertainty")
    assert plain.exit_code == 0 and res.exit_code == 0, res.output
    out = tmp_path / "out"
    (manifest,) = (out / MANIFEST_DIR).glob("*.json")
    m = json.loads(manifest.read_text())
    assert (
        m["uncertainty"]["std_range"] == [0.0, STD_FULL_SCALE] and m["uncertainty"]["samples"] == 2
    )
    for rec in m["images"]:
        key = rec["output_key"]
        assert (out / key).read_bytes() == (tmp_path / "plain" / key).read_bytes()
        unc = rec["uncertainty"]
        assert (unc["map"], unc["std"]) == uncertainty_keys(key)
        assert unc["map"] == key.removesuffix(".jpg") + ".uncertainty.png"
        std = np.load(out / unc["std"])
        png = np.asarray(Image.open(out / unc["map"]))
        assert (
            std.dtype == np.float32
            and std.shape == png.shape[:2] == read_image(out / key).shape[:2]
        )
        assert png.dtype == np.uint8 and png.shape[2] == 3
        np.testing.assert_array_equal(png, np.round(colorize(std) * 255))
        assert std.min() >= 0 and std.max() > 0 and unc["std_max"] == round(float(std.max()), 6)
    assert not list(out.rglob(".*.tmp"))  # nothing half-written
    again = enhance(inp, out, ckpt, "--samples", "2", "--uncertainty")
    assert "0 enhanced, 2 already done" in again.output
    # a missing map makes its image redo (resume needs every recorded file)
    (out / m["images"][0]["uncertainty"]["std"]).unlink()
    assert "1 enhanced, 1 already done" in enhance(inp, out, ckpt, "--samples", "2",
                                                   "--uncertainty").output  # fmt: skip

    # a std that fails half-written: its image fails, no temp file, no .npy, no record
    def full_disk(f, a, **kw):
        f.write(b"\x93NUMPY half")
        raise OSError("disk full")

    monkeypatch.setattr(np, "save", full_disk)
    bad = enhance(inp, tmp_path / "bad", ckpt, "--samples", "2", "--uncertainty")
    assert bad.exit_code == 1 and "OSError: disk full" in bad.output
    assert not list((tmp_path / "bad").rglob("*.npy"))
    assert not list((tmp_path / "bad").rglob(".*.tmp"))


def test_refusals_say_what_to_do(tmp_path, ckpt):
    img = tmp_path / "in" / "a.png"
    write_image(img, smooth_image(np.random.default_rng(0), 8, 8))
    res = enhance(img, tmp_path / "o.png", ckpt, "--uncertainty")  # residual recommends 1 sample
    assert res.exit_code == 2 and "--samples N" in res.output and "samples=1" in res.output
    assert len(res.output.strip().splitlines()) == 1
    for kind, why in [("regression", "regression formulation draws no noise"),
                      ("indi", "diffusion.options.indi.noise=0")]:  # fmt: skip
        det = random_checkpoint(tmp_path / f"{kind}.safetensors", overrides=[
            f"diffusion.formulation={kind}"])  # fmt: skip
        res = enhance(img, tmp_path / "o.png", det, "--samples", "4", "--uncertainty")
        assert res.exit_code == 2 and why in res.output and "shipped sr4" in res.output
        assert not (tmp_path / "o.png").exists()
    noisy = random_checkpoint(tmp_path / "indi_noisy.safetensors", overrides=[
        "diffusion.formulation=indi", "diffusion.options.indi.noise=0.1"])  # fmt: skip
    assert enhance(img, tmp_path / "o.png", noisy, "--samples", "2", "--uncertainty").exit_code == 0
    with pytest.raises(ConfigError, match="uncertainty_samples"):
        load_config(None, ["evaluate.uncertainty_samples=1"])


def test_planning_refuses_inputs_whose_maps_would_clash(tmp_path, ckpt):
    inp = tmp_path / "in"
    for name in ("a.png", "a.jpg", "b.png", "b.uncertainty.png"):
        write_image(inp / name, smooth_image(np.random.default_rng(0), 6, 6))
    cfg = load_config(None, [*TINY_MODEL, f"enhance.input={inp}", f"enhance.output={tmp_path}/o",
                             f"enhance.model={ckpt}", "infer.samples=2", "infer.uncertainty=true"])  # fmt: skip
    job = plan_job(cfg)
    ignored = {i["key"]: i["reason"] for i in job.ignored}
    assert sorted(ignored) == ["a.png", "b.uncertainty.png"]  # a.jpg and b.png come first
    assert "a.uncertainty.png would be written for it and for a.jpg" in ignored["a.png"]
    assert "b.uncertainty.png would be written for it and for b.png" in ignored["b.uncertainty.png"]
    plain = plan_job(replace(cfg, infer=replace(cfg.infer, uncertainty=False)))
    assert not plain.ignored
    assert plain.params_hash != job.params_hash


# ----------------------------------------------------------------------------- evidence


def test_golden_correlation_on_a_constructed_input():
    std = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)
    hr = np.zeros((2, 2, 3), np.float32)
    pred = hr + np.array([[1.0, 3.0], [2.0, 4.0]])[..., None] / 10
    c = error_correlation(std, pred, hr)
    assert c["pearson"] == pytest.approx(0.8) and c["spearman"] == pytest.approx(0.8)
    assert c["abs_error_mean"] == pytest.approx(0.25) and c["std_mean"] == pytest.approx(2.5)
    big = np.pad(std, 1, constant_values=9)  # the border is cropped away
    c1 = error_correlation(
        big, np.pad(pred, ((1, 1), (1, 1), (0, 0))), np.pad(hr, ((1, 1),) * 2 + ((0, 0),)), crop=1
    )
    assert c1["pearson"] == pytest.approx(0.8)
    tied = error_correlation(std, hr + np.array([[0, 0], [1, 1]])[..., None], hr)
    assert tied["spearman"] == pytest.approx(np.sqrt(0.8))  # ties share their mean rank
    assert np.isnan(error_correlation(std, hr, hr)["pearson"])  # no error: undefined


def test_colour_map_is_inferno_from_black_over_a_fixed_range():
    import matplotlib

    t = np.linspace(0, 1, 201)
    got = colorize(t * STD_FULL_SCALE)
    want = matplotlib.colormaps["inferno"](t)[:, :3]
    assert np.abs(got - want).max() < 8 / 255
    assert np.array_equal(colorize(np.array([0.0, 1.0])), LUT[[0, -1]])  # 0 dark, saturated
    assert LUT[0].sum() < 0.02
    assert uncertainty_keys("a/b.c/photo.tif") == ("a/b.c/photo.uncertainty.png",
                                                   "a/b.c/photo.uncertainty.npy")  # fmt: skip


def _pair(task_scale: int = 2) -> Pair:
    hr = smooth_image(np.random.default_rng(4), 32, 32)
    return Pair("photo", hr, hr[::task_scale, ::task_scale].copy())


def test_evaluate_records_the_correlation_and_the_report_shows_the_map(tmp_path, ckpt):
    cfg = load_config(None, [*TINY_MODEL, "infer.steps=2", "infer.device=cpu", "evaluate.steps=[2]",
                             "evaluate.uncertainty_samples=3", "report.crops=1"])  # fmt: skip
    r = load_model(ckpt, cfg)
    ev = evaluate_pairs(r, [_pair()], "sr2", cfg, tmp_path / "ev", source={"kind": "test"})
    unc = ev.protocol["uncertainty"]
    assert unc["samples"] == 3 and unc["sampling"]["samples"] == 3
    std = np.load(tmp_path / "ev/images/uncertainty/photo.npy")
    head = ev.image("model", "photo")  # 8-bit; the metric used the float output
    want = error_correlation(std, head, _pair().hr, crop=2)
    assert ev.metrics["uncertainty_pearson"] == pytest.approx(want["pearson"], abs=0.02)
    # spearman against the same independent recomputation (ranks: the 8-bit rounding of the
    # output moves it a little more than pearson), then the record agrees with the metrics
    assert ev.metrics["uncertainty_spearman"] == pytest.approx(want["spearman"], abs=0.03)
    assert ev.metrics["uncertainty_spearman"] == unc["mean"]["spearman"]
    assert unc["per_image"]["photo"]["pearson"] == ev.metrics["uncertainty_pearson"]
    _, again = restore_with_uncertainty(r, _pair().lq, sampling_spec(r, cfg.infer, samples=3))
    np.testing.assert_array_equal(std, again)  # the map is the restore path's, first seed
    rep = build_report(tmp_path / "ev", tmp_path / "ev", cfg.report)
    page = rep.html.read_text()
    assert "uncertainty (std of 3 samples vs |error|)" in page and "Pearson" in page
    assert "std vs |error| Pearson" in page  # the crop caption
    # a model whose samples cannot differ: skipped with a note, not an error
    det = load_restorer(random_checkpoint(tmp_path / "reg.safetensors",
                                          overrides=["diffusion.formulation=regression"]))  # fmt: skip
    ev2 = evaluate_pairs(det, [_pair()], "sr2", cfg, tmp_path / "ev2", source={"kind": "test"})
    assert "draws no noise" in ev2.protocol["uncertainty"]["skipped"]
    assert any(n.startswith("uncertainty skipped") for n in ev2.protocol["notes"])
    assert not any(k.startswith("uncertainty_") for k in ev2.metrics)
    assert (
        "not measured"
        in build_report(tmp_path / "ev2", tmp_path / "ev2", cfg.report).html.read_text()
    )
