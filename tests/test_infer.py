"""Tiled inference: no seams, any size, bounded memory, batching-independent results,
the bf16 guard and colour correction."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from diffenhance.config import InferConfig, load_config
from diffenhance.diffusion.formulations import get_formulation
from diffenhance.infer import (
    RestorerTiles,
    TiledEnhancer,
    axis_windows,
    enhance_image,
    ramp,
    tile_seed,
    tile_starts,
)
from diffenhance.io import to_uint8, to_uint16
from diffenhance.model import (
    CheckpointError,
    build_restorer,
    load_restorer,
    read_checkpoint,
    set_recommended,
)
from diffenhance.restore import sampling_spec
from tests.conftest import REPO
from tests.enhance_helpers import IdentityTiles, gradient, random_checkpoint
from tests.tiny import TINY_MODEL


def cfg(**kw) -> InferConfig:
    base = {"tile": 16, "tile_overlap": 6, "tile_batch": 4, "precision": "fp32", "steps": 2}
    return InferConfig(**(base | kw))


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def restorer(tmp_path_factory):
    path = random_checkpoint(tmp_path_factory.mktemp("infer") / "sr2.safetensors")
    return load_restorer(path)


# ----------------------------------------------------------------------------- geometry


def test_ramps_sum_to_one_and_windows_cover_every_pixel():
    for n in (1, 2, 7, 64):
        r = ramp(n)
        assert torch.allclose(r + r.flip(0), torch.ones(n, dtype=torch.float64), atol=1e-12)
        assert r.min() > 0 and r.max() < 1
    starts = tile_starts(100, 16, 6)
    assert starts[0] == 0 and starts[-1] == 84
    assert all(b - a <= 10 for a, b in zip(starts, starts[1:], strict=False))  # overlap >= 6
    total = torch.zeros(200)
    for a, w in zip(starts, axis_windows(starts, 16, 2), strict=True):
        total[a * 2 : a * 2 + 32] += w
    # a partition of unity wherever at most two tiles overlap: every pixel has weight 1
    assert torch.allclose(total, torch.ones(200), atol=1e-6)
    assert tile_seed(0, "a", 0, 16) != tile_seed(0, "a", 16, 0) != tile_seed(1, "a", 0, 16)


# ----------------------------------------------------------------------------- seams


@pytest.mark.parametrize("scale", [1, 2, 4])
@pytest.mark.parametrize("kind", ["constant", "gradient"])
def test_tiling_on_and_off_agree_to_1e3_everywhere(scale, kind):
    model, whole_model = IdentityTiles(scale, size_multiple=8), IdentityTiles(scale, 8)
    sizes = [(70, 53), (9, 9), (1, 1), (1, 40), (40, 1), (2, 300), (300, 3), (47, 130)]
    for h, w in sizes:
        img = np.full((h, w, 3), 0.3, np.float32) if kind == "constant" else gradient(h, w)
        tiled = enhance_image(img, model, cfg(), key="k")
        whole = enhance_image(img, whole_model, cfg(tile=512), key="k")
        assert tiled.shape == whole.shape == (h * scale, w * scale, 3)
        assert np.abs(tiled - whole).max() < 1e-3, (h, w)
        if kind == "constant":
            assert np.abs(tiled - 0.3).max() < 1e-6
    # tiles really were used: every model call saw at most 16 * scale pixels a side, or a
    # one-tile image's 16 + one size step (the margin a one-tile image keeps to one tile)
    step = TiledEnhancer(model, cfg()).step
    assert max(max(c[-2:]) for c in model.calls) <= max(16 * scale, 16 + step)


def test_a_batch_holds_tiles_of_one_image_only():
    """Images never share a forward pass, so an output's bits cannot depend on its neighbours
    in a shard (CPU convolutions round differently at another batch size)."""
    model = IdentityTiles(scale=2, size_multiple=4)
    eng = TiledEnhancer(model, cfg(tile_batch=8))
    imgs = [gradient(10, 12), gradient(10, 12), gradient(10, 12), gradient(40, 40)]
    res = list(eng.stream((i, f"k{i}", im) for i, im in enumerate(imgs)))
    assert [r.ident for r in res] == [0, 1, 2, 3] and all(r.error is None for r in res)
    # one tile each (10x12 and the engine's one step of margin, 2 px here), one pass each
    assert eng.step == 2 and model.calls[:3] == [(1, 3, 12, 14)] * 3
    assert all(c[0] <= 8 for c in model.calls)


def test_a_tile_no_longer_than_its_rounded_overlap_is_refused():
    """Tiles and overlaps snap to the network's step (8 px for x1 and multiple 8): tile 8 with
    overlap 4 would have an overlap of 8, that is none left to cross-fade in (neighbours meet at
    a hard edge, silently); it is refused, and tile 16 keeps an 8 px cross-fade."""
    model = IdentityTiles(scale=1, size_multiple=8)
    with pytest.raises(
        ValueError, match=r"infer.tile=8 rounds down to 8 and infer.tile_overlap=4 up to 8"
    ):
        TiledEnhancer(model, cfg(tile=8, tile_overlap=4))
    eng = TiledEnhancer(model, cfg(tile=16, tile_overlap=4))
    _, tile, starts = eng._axis(40)
    assert (eng.step, tile, starts) == (8, 16, [0, 8, 16, 24, 32])  # every tile shares 8 px


def test_progress_counts_each_images_tiles_batch_by_batch_and_changes_no_bits():
    seen: list[tuple[int, int]] = []
    plain = TiledEnhancer(IdentityTiles(scale=2, size_multiple=4), cfg(tile_batch=3))
    counted = TiledEnhancer(
        IdentityTiles(scale=2, size_multiple=4), cfg(tile_batch=3),
        progress=lambda done, total: seen.append((done, total)),
    )  # fmt: skip
    imgs = [("a", "a", gradient(40, 40)), ("b", "b", gradient(10, 12))]
    got = list(counted.stream(imgs))
    n = counted.stats.tiles - 1  # the second image is one tile
    assert n > 3 and seen[0] == (0, n) and seen[-2:] == [(0, 1), (1, 1)]
    first = [d for d, t in seen[: seen.index((0, 1))]]
    assert first == [0, *range(3, n, 3), n] and all(t == n for _, t in seen[: len(first)])
    for g, w in zip(got, plain.stream(imgs), strict=True):
        np.testing.assert_array_equal(g.image, w.image)


def test_a_bad_image_or_failing_batch_fails_alone():
    @dataclass
    class Flaky(IdentityTiles):
        def __call__(self, lq, generators, autocast_dtype):
            if lq.shape[-1] == 14:  # the 13 px wide image (+ 1 px margin)
                raise RuntimeError("boom")
            return super().__call__(lq, generators, autocast_dtype)

    eng = TiledEnhancer(Flaky(scale=1, size_multiple=1), cfg())
    jobs = [("ok", "a", gradient(8, 8)), ("int", "b", np.zeros((4, 4, 3), np.uint8))]
    jobs += [("boom", "c", gradient(5, 13)), ("ok2", "d", gradient(20, 20))]
    res = {r.ident: r for r in eng.stream(jobs)}
    assert res["ok"].error is None and res["ok2"].error is None
    assert "float32" in str(res["int"].error) and "boom" in str(res["boom"].error)


# ----------------------------------------------------------------------------- determinism


def test_real_restorer_output_does_not_depend_on_batching(restorer):
    img = gradient(30, 22)
    other = np.random.default_rng(1).random((30, 22, 3), dtype=np.float32)
    model = RestorerTiles(restorer, steps=2)
    alone = TiledEnhancer(model, cfg(tile_batch=1)).enhance(img, "img")
    among_others = [
        r.image
        for r in TiledEnhancer(model, cfg(tile_batch=1)).stream(
            [("o", "other", other), ("i", "img", img), ("o2", "other2", other[:7])]
        )
        if r.ident == "i"
    ][0]
    assert alone.shape == (60, 44, 3)
    np.testing.assert_array_equal(among_others, alone)  # bit for bit: no shared batches
    again = TiledEnhancer(model, cfg(tile_batch=3)).enhance(img, "img")
    np.testing.assert_allclose(again, alone, atol=1e-5)
    reseeded = TiledEnhancer(model, cfg(seed=1)).enhance(img, "img")
    assert np.abs(reseeded - alone).max() > 1e-2  # the seed really drives the noise


def test_stochastic_sampler_is_also_batching_independent(restorer):
    img = gradient(20, 20)
    model = RestorerTiles(restorer, steps=2, sampler="ddpm", eta=1.0)
    a = TiledEnhancer(model, cfg(tile_batch=1, eta=1.0)).enhance(img, "x")
    b = TiledEnhancer(model, cfg(tile_batch=5, eta=1.0)).enhance(img, "x")
    np.testing.assert_allclose(a, b, atol=1e-5)


# ----------------------------------------------------------------------------- precision


def test_non_finite_low_precision_tiles_are_redone_in_fp32():
    @dataclass
    class NanInBf16(IdentityTiles):
        def __call__(self, lq, generators, autocast_dtype):
            y = super().__call__(lq, generators, autocast_dtype)
            if autocast_dtype is not None:
                y[::2] = float("nan")  # every other tile overflows in low precision
            return y

    img = gradient(40, 40)
    eng = TiledEnhancer(NanInBf16(scale=2), cfg(precision="bf16"))
    assert eng.dtype == torch.bfloat16
    out = eng.enhance(img, "k")
    ref = TiledEnhancer(IdentityTiles(scale=2), cfg(precision="fp32")).enhance(img, "k")
    assert np.isfinite(out).all() and eng.stats.fp32_redone > 0
    np.testing.assert_array_equal(out, ref)
    assert TiledEnhancer(IdentityTiles(), cfg(precision="auto")).dtype is None  # CPU: fp32


# ----------------------------------------------------------------------------- colour


@pytest.mark.parametrize("method", ["meanstd", "wavelet"])
def test_colour_correction_removes_a_colour_cast(method):
    @dataclass
    class Cast(IdentityTiles):
        def __call__(self, lq, generators, autocast_dtype):
            y = super().__call__(lq, generators, autocast_dtype)
            y[:, 0] = (y[:, 0] * 0.7 + 0.25).clamp(0, 1)  # red cast + lost contrast
            return y

    img = 0.2 + 0.6 * gradient(48, 40)
    ref = enhance_image(img, IdentityTiles(scale=2), cfg())
    cast = enhance_image(img, Cast(scale=2), cfg())
    fixed = enhance_image(img, Cast(scale=2), cfg(color_correction=method))
    before = np.abs(cast - ref)[..., 0].mean()
    after = np.abs(fixed - ref)[..., 0].mean()
    assert before > 0.1 and after < 0.02, (before, after)


@pytest.mark.parametrize("method", ["meanstd", "wavelet"])
def test_colour_correction_of_a_one_pixel_image_gives_its_colour(method):
    """A 1x1 input has no spread: meanstd's std of one pixel was NaN (every pixel NaN)."""
    px = np.array([[[0.2, 0.5, 0.7]]], np.float32)
    out = enhance_image(px, IdentityTiles(scale=2, size_multiple=1), cfg(color_correction=method))
    assert out.shape == (2, 2, 3) and np.isfinite(out).all()
    np.testing.assert_allclose(out, np.broadcast_to(px, out.shape), atol=1e-6)


# ----------------------------------------------------------------------------- memory

# The measuring half of both scripts below: `status(field)` in bytes, and the peak reset to the
# current RSS (`base`) just before the measured call.
_PEAK_RESET = textwrap.dedent(
    """
    def status(field):  # kB -> bytes
        line = [x for x in open("/proc/self/status") if x.startswith(field + ":")][0]
        return int(line.split()[1]) * 1024

    open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to the current RSS
    base = status("VmRSS")
    """
)

_MEASURE = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from diffenhance.config import InferConfig, load_config
    from diffenhance.infer import RestorerTiles, TiledEnhancer
    from diffenhance.model import load_restorer

    path, side, tile = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    model = RestorerTiles(load_restorer(path), steps=2)
    eng = TiledEnhancer(model, InferConfig(tile=tile, tile_overlap=4, tile_batch=4))
    eng.enhance(np.full((24, 24, 3), 0.5, np.float32), "warm-up")
    img = np.random.default_rng(0).random((side, side, 3), dtype=np.float32)
    {peak_reset}
    out = eng.enhance(img, "k")
    peak = status("VmHWM")
    print(json.dumps({"extra": peak - base, "out_bytes": out.nbytes, "tiles": eng.stats.tiles}))
    """
).replace("{peak_reset}", _PEAK_RESET)


@pytest.mark.slow  # ~25 s; the default run: test_an_8_bit_output_needs_no_float_copy_of_the_whole_image
def test_peak_memory_does_not_grow_with_image_size(tmp_path):
    ckpt = random_checkpoint(tmp_path / "m.safetensors")
    # (side, tile): 32 and 128 px (4x the side, 16x the pixels) tiled; 96 px in one tile
    runs = {"small": (32, 16), "large": (128, 16), "untiled": (96, 96)}
    # the tiled runs twice each, in fresh processes, keeping the smaller working set: a
    # process's peak RSS carries a few MB of allocator slack that varies run to run (one run in
    # a fresh clone measured 5.7 MB over the bound, then passed), while memory that really grows
    # with the image grows in every run
    reps = {"small": 2, "large": 2, "untiled": 1}
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [
        (k, subprocess.Popen(
            [sys.executable, "-c", _MEASURE, str(ckpt), str(side), str(tile)],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        ))
        for k, (side, tile) in runs.items()
        for _ in range(reps[k])
    ]  # fmt: skip
    got: dict[str, list[dict]] = {k: [] for k in runs}
    for k, p in procs:
        got[k].append(json.loads(p.communicate(timeout=180)[0].splitlines()[-1]))
    # beyond the output image, the smallest of the repetitions
    work = {k: min(g["extra"] - g["out_bytes"] for g in gs) for k, gs in got.items()}
    assert got["large"][0]["tiles"] > 8 * got["small"][0]["tiles"], got
    # Tiled, the working set stays flat as the image grows 16x (allocator slack allowed) ...
    assert work["large"] - work["small"] < 4 * 2**20, (work, got)
    # ... while one forward pass over a smaller image, untiled, needs several times more.
    assert work["untiled"] > 3 * work["large"], (work, got)


# ----------------------------------------------------------------------------- stripes


@dataclass
class Noisy(IdentityTiles):
    """IdentityTiles plus each tile's own noise (from its generator), partly outside [0, 1]:
    overlapping tiles disagree, so a pixel's value depends on which tiles add to it and in
    which order; `moments` gives a tile-dependent variance."""

    def __call__(self, lq, generators, autocast_dtype):
        y = super().__call__(lq, generators, autocast_dtype)[:, :3]
        noise = torch.stack([torch.rand(y.shape[1:], generator=g) for g in generators])
        return y + 0.3 * (noise - 0.5)

    def moments(self, lq, generators, autocast_dtype):
        y = self(lq, generators, autocast_dtype)
        return y, (0.1 * y.mean(dim=1, keepdim=True)) ** 2


@dataclass
class NoisyFill(Noisy):
    """An inpainting `TileModel`: image + mask in, the inpaint task's `finish` (known pixels
    kept, their std 0)."""

    scale: int = 1
    size_multiple: int = 1
    lq_channels: int = 4

    def finish(self, out, lq, std):
        from diffenhance.restoration import get_task

        return get_task("inpaint").finish(out, lq, std)


def recording(eng: TiledEnhancer) -> list[tuple]:
    """The tiles `eng` adds, in order: (image, iy, ix, tile, variance)."""
    tiles: list[tuple] = []
    add = eng._add

    def record(img, iy, ix, y, v):
        tiles.append((img, iy, ix, y.clone(), None if v is None else v.clone()))
        add(img, iy, ix, y, v)

    eng._add = record
    return tiles


def one_buffer(eng: TiledEnhancer, tiles: list[tuple]) -> tuple[np.ndarray, np.ndarray | None]:
    """(image, std) as the engine computed them before issue 23: every tile added into one
    whole-output float32 buffer, then divided, colour-fixed, clamped and composed at once."""
    from diffenhance.infer import meanstd_color_fix
    from diffenhance.restoration.base import image_of

    img, s = tiles[0][0], eng.model.scale
    out, var = torch.zeros(3, img.h * s, img.w * s), torch.zeros(img.h * s, img.w * s)
    for _, iy, ix, y, v in tiles:
        y0, x0 = img.ys[iy] * s, img.xs[ix] * s
        y1, x1 = min(y0 + img.th * s, img.h * s), min(x0 + img.tw * s, img.w * s)
        wgt = img.wys[iy][: y1 - y0, None] * img.wxs[ix][None, : x1 - x0]
        out[:, y0:y1, x0:x1] += y[:, : y1 - y0, : x1 - x0] * wgt
        if v is not None:
            var[y0:y1, x0:x1] += v[0, : y1 - y0, : x1 - x0] * wgt
    out.div_(img.norm_y[None, :, None]).div_(img.norm_x[None, None, :])
    if eng.cfg.color_correction == "meanstd":
        meanstd_color_fix(out, image_of(img.lq, axis=0)[:, : img.h, : img.w])
    out.clamp_(0, 1)
    std = None
    if eng.uncertainty:
        std = var.div_(img.norm_y[:, None]).div_(img.norm_x[None, :]).clamp_(min=0).sqrt_()
    if hasattr(eng.model, "finish"):
        out, std = eng.model.finish(out, img.lq, std)
    return out.permute(1, 2, 0).numpy(), None if std is None else std.numpy()


STRIPE_SHAPES = [(1, 1), (5, 7), (16, 130), (37, 53), (70, 13)]  # one tile .. 7 tile rows


@pytest.mark.parametrize(
    "model",
    [Noisy(1, 1), Noisy(2, 4), Noisy(4, 8), NoisyFill()],
    ids=["x1", "x2", "x4", "inpaint"],
)
@pytest.mark.parametrize("colour", ["none", "meanstd", "wavelet"])
def test_stripes_give_the_one_buffer_result_bit_for_bit(model, colour):
    """The output is summed in a stripe one tile row tall and stored row stripe by row
    stripe, float or quantised; every pixel gets the additions of one whole-output buffer
    in the same order, so the float result is the same bits (and layout) and the 8/16-bit
    one is `to_uint8`/`to_uint16` of it; a quantised output has no whole-image float buffer
    (meanstd excepted: its statistics are the whole image's)."""
    rng = np.random.default_rng(0)
    c = cfg(tile_batch=3, color_correction=colour)  # batches straddle tile rows
    for uncertainty in (False, True):
        for h, w in STRIPE_SHAPES:
            img = rng.random((h, w, 3), dtype=np.float32)
            if isinstance(model, NoisyFill):
                mask = (rng.random((h, w, 1)) < 0.4).astype(np.float32)
                img = np.concatenate([img, mask], axis=-1)
            eng = TiledEnhancer(model, c, uncertainty=uncertainty)
            tiles = recording(eng)
            res = eng.enhance_one(img, "k")
            want, want_std = one_buffer(eng, tiles)
            assert res.image.strides == want.strides, (h, w)
            assert res.image.tobytes() == want.tobytes(), (h, w, uncertainty)
            assert (res.std is None) == (want_std is None)
            if want_std is not None:
                assert res.std.tobytes() == want_std.tobytes(), (h, w)
            for depth, quantise in ((8, to_uint8), (16, to_uint16)):
                eng = TiledEnhancer(model, c, uncertainty=uncertainty)
                tiles = recording(eng)
                if not np.isfinite(want).all():  # meanstd of a 1x1 input: std over 1 pixel
                    with pytest.raises(ValueError, match="NaN"):
                        eng.enhance_one(img, "k", bit_depth=depth)
                    continue
                got = eng.enhance_one(img, "k", bit_depth=depth)
                np.testing.assert_array_equal(got.image, quantise(want))
                assert got.image.dtype == quantise(want).dtype
                if want_std is not None:
                    assert got.std.tobytes() == want_std.tobytes()
                state, s = tiles[0][0], model.scale
                assert state.acc.shape[1] == min(state.th * s, h * s)  # one tile row
                assert (state.full is None) == (colour != "meanstd")
    assert len({iy for _, iy, *_ in tiles}) > 3  # the last shape: several stripes


def test_a_bit_depth_other_than_8_or_16_is_refused(tmp_path):
    eng = TiledEnhancer(IdentityTiles(), cfg())
    res = next(eng.stream([("a", "a", gradient(8, 8))], bit_depth=lambda _: 12))
    assert "bit_depth must be None, 8 or 16" in str(res.error)
    from diffenhance.io import ImageWriteError, write_image

    codes = eng.enhance(gradient(8, 8), bit_depth=16)
    with pytest.raises(ImageWriteError, match="bit_depth=8 are uint8, got uint16"):
        write_image(tmp_path / "a.png", codes, quantised=True)


_MEASURE_U8 = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from diffenhance.config import InferConfig
    from diffenhance.infer import TiledEnhancer
    from tests.enhance_helpers import IdentityTiles

    h, w = int(sys.argv[1]), int(sys.argv[2])
    eng = TiledEnhancer(IdentityTiles(2, 4), InferConfig(tile=32, tile_overlap=8, tile_batch=4))
    eng.enhance(np.full((48, 48, 3), 0.5, np.float32), "warm-up", bit_depth=8)
    img = np.random.default_rng(0).random((h, w, 3), dtype=np.float32)
    {peak_reset}
    out = eng.enhance(img, "k", bit_depth=8)
    peak = status("VmHWM")
    print(json.dumps({"extra": peak - base, "out_bytes": out.nbytes, "dtype": str(out.dtype)}))
    """
).replace("{peak_reset}", _PEAK_RESET)


def test_an_8_bit_output_needs_no_float_copy_of_the_whole_image():
    """Issue 23: a 12 MP photo at x4 is 192 MP of output, 2.3 GB as float32 but 576 MB as
    8-bit. Asked for 8 bits, the engine's peak beyond its uint8 output stays flat while the
    image grows 16x taller (a whole-output float32 buffer would add 4 bytes a sample: 48 MB
    here; the width stays, as the stripe's size follows it)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    sides = {"small": (256, 256), "large": (4096, 256)}
    procs = [
        (k, subprocess.Popen(
            [sys.executable, "-c", _MEASURE_U8, *map(str, side)],
            cwd=REPO, env=env, stdout=subprocess.PIPE, text=True,
        ))
        for k, side in sides.items()
        for _ in range(2)  # the smaller of two runs: allocator slack varies run to run
    ]  # fmt: skip
    got: dict[str, list[dict]] = {k: [] for k in sides}
    for k, p in procs:
        got[k].append(json.loads(p.communicate(timeout=180)[0].splitlines()[-1]))
    assert got["large"][0]["dtype"] == "uint8"
    work = {k: min(g["extra"] - g["out_bytes"] for g in gs) for k, gs in got.items()}
    float_bytes = 4 * got["large"][0]["out_bytes"]
    assert work["large"] - work["small"] < 4 * 2**20 < float_bytes / 8, (work, got)


def test_enhance_writes_the_bytes_of_the_float_path_with_alpha_and_16_bits(tmp_path):
    """`diffenhance enhance` takes its outputs from the engine already quantised (8 or 16 bits,
    stripe by stripe); every file is the bytes `write_image` writes from the float result
    (with the alpha resized beside it), for 8/16-bit RGB(A) PNG, TIFF and JPEG; --outscale
    still gets the float result to resize."""
    from diffenhance.enhance import run_job
    from diffenhance.enhance.shard import _resize
    from diffenhance.io import read_image_alpha, write_image
    from diffenhance.restore import image_key

    ckpt = random_checkpoint(tmp_path / "m.safetensors")  # sr2: only the plan reads it
    inp = tmp_path / "in"
    rng = np.random.default_rng(3)
    rgb, alpha = rng.random((37, 29, 3), dtype=np.float32), gradient(37, 29)[..., 0]
    write_image(inp / "rgba.png", rgb, alpha=alpha)
    write_image(inp / "deep.png", rgb, alpha=alpha, bit_depth=16)
    write_image(inp / "plain.tif", rgb, bit_depth=16)
    write_image(inp / "photo.jpg", rgb)
    model = Noisy(2, 4)
    for extra in ([], ["enhance.outscale=1.5"]):
        out = tmp_path / f"out{len(extra)}"
        c = load_config(None, [f"enhance.input={inp}", f"enhance.output={out}",
                               f"enhance.model={ckpt}", "infer.tile=16", "infer.tile_overlap=6",
                               "infer.precision=fp32", *extra])  # fmt: skip
        summary = run_job(c, model=model)
        assert summary["enhanced"] == 4 and summary["failed"] == 0, summary
        eng = TiledEnhancer(model, c.infer)
        for name, depth in [("rgba.png", 8), ("deep.png", 16), ("plain.tif", 16), ("photo.jpg", 8)]:
            src, a = read_image_alpha(inp / name)
            want = eng.enhance(src, image_key(src))
            if extra:
                want = _resize(want, (round(37 * 1.5), round(29 * 1.5)))
            a = None if a is None else _resize(a, want.shape[:2])
            ref = write_image(tmp_path / f"ref{len(extra)}" / name, want, alpha=a, bit_depth=depth)
            assert (out / name).read_bytes() == ref.read_bytes(), (name, extra)


# ----------------------------------------------------------------------------- recommended steps


def test_null_steps_and_samples_come_from_the_checkpoint(tmp_path):
    """infer.steps/samples null -> the checkpoint's "recommended" metadata, else the
    formulation's default; set_recommended rewrites metadata only, deterministically."""
    path = random_checkpoint(tmp_path / "m.safetensors")  # residual (params default), no key
    r = load_restorer(path)
    assert r.diffusion_cfg.formulation == "residual"
    m = RestorerTiles.from_spec(r, sampling_spec(r, cfg(steps=None, samples=None)))
    f = get_formulation("residual")
    assert (m.steps, m.samples) == (f.default_steps, f.default_samples) == (4, 1)
    weights = read_checkpoint(path)[0]
    set_recommended(path, 3, 2, "measured")
    first = path.read_bytes()
    set_recommended(path, 3, 2, "measured")
    assert path.read_bytes() == first  # same metadata, same bytes
    after = read_checkpoint(path)[0]
    assert all(torch.equal(weights[k], after[k]) for k in weights)
    r = load_restorer(path)
    m = RestorerTiles.from_spec(r, sampling_spec(r, cfg(steps=None, samples=None)))
    assert (m.steps, m.samples) == (3, 2)
    m = RestorerTiles.from_spec(
        r, sampling_spec(r, cfg(steps=5, samples=None))
    )  # params win where set
    assert (m.steps, m.samples) == (5, 2)
    with pytest.raises(ValueError, match="must be >= 1"):
        set_recommended(path, 0, 1, "bad")


@pytest.mark.parametrize(
    "preset",
    [{"steps": 0, "detail": 1.5}, {"steps": 2, "samples": 1, "detail": 1.5}, "two steps"],
)
def test_set_recommended_refuses_presets_that_load_restorer_would_refuse(tmp_path, preset):
    """A bad preset is refused before the checkpoint is rewritten: a good model is never
    replaced by one `load_restorer` refuses."""
    path = random_checkpoint(tmp_path / "m.safetensors")
    set_recommended(path, 3, 2, "measured")
    good = path.read_bytes()
    with pytest.raises(CheckpointError, match=rf"{path}: metadata recommended.presets.balanced="):
        set_recommended(path, 1, 1, "bad", presets={"balanced": preset})
    assert path.read_bytes() == good
    assert load_restorer(path).meta["recommended"] == read_checkpoint(path)[1]["recommended"]


@pytest.mark.parametrize("task", ["sr4", "denoise"])
def test_images_down_to_one_pixel_enhance(task):
    """A 1x1 input used to reach the innermost U-Net level as 1x1, where a GroupNorm with one
    channel per group has a single value and raises (in eval mode too): inputs are padded."""
    c = load_config(None, [*TINY_MODEL, "model.channel_mults=[1,2,2]"])  # multiple 4, as shipped
    torch.manual_seed(0)
    r = build_restorer(c.model, c.diffusion, task, c.degrade)
    model = RestorerTiles.from_spec(r, sampling_spec(r, cfg(tile=8, tile_overlap=2)))
    assert (r.unet.size_multiple, r.scale) == (4, 4 if task == "sr4" else 1)
    for h, w in [(1, 1), (1, 2), (2, 1), (1, 37), (29, 1), (2, 2)]:
        out = enhance_image(gradient(h, w), model, cfg(tile=8, tile_overlap=2), key="tiny")
        assert out.shape == (h * r.scale, w * r.scale, 3), (h, w)
        assert np.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
