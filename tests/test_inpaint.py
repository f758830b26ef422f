"""The inpaint task: seeded masks, the masked input + mask condition, masked metrics, the Telea
baseline, evaluation, and `diffenhance enhance --mask` (file, folder, errors)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from diffenhance.cli import app
from diffenhance.config import DegradeConfig, load_config
from diffenhance.data.pairs import load_pairs
from diffenhance.degrade import HOLE_FILL, fill_holes, random_mask
from diffenhance.evaluate import evaluate_model, telea_inpaint
from diffenhance.io import ImageReadError, read_image, read_mask, write_image
from diffenhance.metrics import masked_psnr, masked_ssim, ssim
from diffenhance.model import build_network, load_restorer, set_recommended
from diffenhance.report import build_report
from diffenhance.restoration import get_task
from diffenhance.restore import restore, sampling_spec
from tests.tiny import TINY_MODEL, smooth_image, tiny_config, tiny_model

INPAINT = get_task("inpaint")


def masked_input(img: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The inpainting network input: the image with its holes pre-filled, then the mask."""
    return INPAINT.join(img, mask=mask)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("inpaint")
    return root, tiny_model(root, "inpaint", steps=2)


# ----------------------------------------------------------------------------- masks, input


def test_random_mask_is_seeded_and_covers_the_configured_share():
    shares = []
    for seed in range(60):
        m = random_mask(64, 48, np.random.default_rng(seed), (0.05, 0.5))
        assert m.shape == (64, 48) and m.dtype == np.float32 and set(np.unique(m)) <= {0.0, 1.0}
        shares.append(float(m.mean()))
    assert min(shares) >= 0.05 and max(shares) <= 0.5
    assert np.std(shares) > 0.05  # the share itself varies (U(0.05, 0.5) targets)
    a = random_mask(64, 48, np.random.default_rng(7))
    assert np.array_equal(a, random_mask(64, 48, np.random.default_rng(7)))
    assert not np.array_equal(a, random_mask(64, 48, np.random.default_rng(8)))
    assert random_mask(2, 2, np.random.default_rng(0)).any()  # never empty


def test_masked_input_fills_holes_and_appends_the_mask():
    img = np.random.default_rng(0).random((6, 5, 3)).astype(np.float32)
    mask = np.zeros((6, 5), np.float32)
    mask[1:3, 2:4] = 0.9  # binarised at 0.5
    x = masked_input(img, mask)
    assert x.shape == (6, 5, 4) and x.dtype == np.float32
    hole = mask >= 0.5
    assert np.array_equal(x[hole, :3], fill_holes(img, hole)[hole])
    assert np.array_equal(x[~hole, :3], img[~hole])
    assert np.array_equal(INPAINT.side(x, "mask"), hole.astype(np.float32))
    image, side = INPAINT.split(x)
    assert np.array_equal(image, x[..., :3]) and list(side) == ["mask"]
    assert np.array_equal(masked_input(x, mask), x)  # idempotent on its own output
    with pytest.raises(ValueError, match="mask is 5x5 but the image is 5x6"):
        masked_input(img, mask[:5])


def test_fill_holes_is_a_smooth_guess_from_the_known_pixels_only():
    flat = np.full((20, 24, 3), [0.2, 0.6, 0.4], np.float32)
    hole = np.zeros((20, 24), bool)
    hole[3:15, 5:20] = True
    assert np.allclose(fill_holes(flat, hole), flat, atol=1e-6)  # a flat image stays flat
    ramp = np.repeat(np.linspace(0, 1, 24, dtype=np.float32)[None, :, None], 20, 0)
    ramp = np.repeat(ramp, 3, 2)
    got = fill_holes(ramp, hole)
    assert np.array_equal(got[~hole], ramp[~hole])
    assert got[hole].min() >= 0 and got[hole].max() <= 1
    assert got[10, 6, 0] < got[10, 18, 0]  # the fill follows the ramp across the hole
    noisy = ramp.copy()
    noisy[hole] = np.random.default_rng(0).random((hole.sum(), 3))  # hole content is ignored
    assert np.array_equal(fill_holes(noisy, hole), got)
    assert np.all(fill_holes(ramp, np.ones((20, 24), bool)) == HOLE_FILL)  # nothing known


def test_degrade_for_inpaint_is_a_seeded_masked_input():
    cfg = DegradeConfig(mask_coverage=(0.1, 0.3))
    assert INPAINT.scale() == 1 and INPAINT.channels == 4 and get_task("sr4").channels == 3
    assert INPAINT.side_inputs == ("mask",) and get_task("sr4").side_inputs == ()
    hr = smooth_image(np.random.default_rng(1), 32, 32)
    lq = get_task("inpaint").degrade(hr, np.random.default_rng(5), cfg)
    assert lq.shape == (32, 32, 4) and 0.1 <= INPAINT.side(lq, "mask").mean() <= 0.3
    again = get_task("inpaint").degrade(hr, np.random.default_rng(5), cfg)
    assert np.array_equal(lq, again)
    expected = masked_input(hr, random_mask(32, 32, np.random.default_rng(5), (0.1, 0.3)))
    assert np.array_equal(lq, expected)
    with pytest.raises(Exception, match="mask_coverage"):
        load_config(None, ["degrade.mask_coverage=[0.0,0.5]"])


def test_read_mask_white_fills_alpha_counts_as_keep_and_errors_name_the_file(tmp_path):
    m = np.zeros((8, 10), np.uint8)
    m[2:5, 3:7] = 255
    Image.fromarray(m).save(tmp_path / "gray.png")
    got = read_mask(tmp_path / "gray.png", (8, 10))
    assert np.array_equal(got, (m > 0).astype(np.float32))
    rgba = np.zeros((8, 10, 4), np.uint8)
    rgba[..., :3] = 255  # white everywhere, but only the painted region is opaque
    rgba[2:5, 3:7, 3] = 255
    Image.fromarray(rgba).save(tmp_path / "alpha.png")
    assert np.array_equal(read_mask(tmp_path / "alpha.png"), got)
    with pytest.raises(ImageReadError, match=r"small.png: mask is 10x4 but its image is 10x8"):
        Image.fromarray(m[:4]).save(tmp_path / "small.png")
        read_mask(tmp_path / "small.png", (8, 10))
    Image.fromarray(m * 0).save(tmp_path / "black.png")
    with pytest.raises(ImageReadError, match=r"black.png: the mask is empty"):
        read_mask(tmp_path / "black.png")
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(ImageReadError, match=r"text.png: not a recognised image"):
        read_mask(tmp_path / "text.png")


# ----------------------------------------------------------------------------- metrics


def test_masked_metrics_against_an_independent_formula():
    rng = np.random.default_rng(3)
    hr = rng.random((24, 20, 3)).astype(np.float32)
    mask = np.zeros((24, 20), np.float32)
    mask[4:14, 5:15] = 1
    pred = hr.copy()
    pred[mask == 1] += 0.1  # error 0.1 inside the hole only
    pred[mask == 0] = 1 - hr[mask == 0]  # big error outside: must not count
    pred = pred.astype(np.float32)
    inside = (pred.astype(np.float64) - hr)[mask == 1]
    want = 10 * np.log10(1 / np.mean(inside**2))
    assert float(masked_psnr(pred, hr, mask)[0]) == pytest.approx(want, abs=1e-9)
    assert want == pytest.approx(20.0, abs=1e-4)  # MSE 0.01
    assert float(masked_ssim(hr, hr, mask)[0]) == pytest.approx(1.0)
    full = np.ones((24, 20), np.float32)
    assert float(masked_ssim(pred, hr, full)[0]) == pytest.approx(float(ssim(pred, hr)[0]))
    with pytest.raises(ValueError, match="selects no pixel"):
        masked_psnr(pred, hr, np.zeros_like(mask))


def test_telea_fills_only_the_hole_and_restores_flat_colour():
    flat = np.full((16, 16, 3), [0.2, 0.6, 0.4], np.float32)
    mask = np.zeros((16, 16), np.float32)
    mask[5:10, 4:12] = 1
    out = telea_inpaint(flat, mask)
    assert out.shape == (16, 16, 3)
    assert np.array_equal(out[mask == 0], flat[mask == 0])
    assert np.abs(out[mask == 1] - flat[mask == 1]).max() <= 2 / 255 + 1e-6  # 8-bit maths


# ----------------------------------------------------------------------------- the model


@pytest.mark.parametrize("formulation", ["sr3", "regression", "indi", "residual"])
@pytest.mark.parametrize("space", ["hr", "lr"])
def test_every_formulation_builds_an_inpainting_network(formulation, space):
    cfg = load_config(None, [*TINY_MODEL, f"model.space={space}",
                             f"diffusion.formulation={formulation}"])  # fmt: skip
    rgb = build_network(cfg.model, cfg.diffusion, 1)
    net = build_network(cfg.model, cfg.diffusion, 1, cond_channels=4)
    extra = sum(p.numel() for p in net.parameters()) - sum(p.numel() for p in rgb.parameters())
    assert extra > 0  # the mask channel widens the first convolution(s)
    from diffenhance.diffusion import formulation_sample
    from diffenhance.diffusion.schedule import Schedule

    cond = torch_cond(2, 16)
    x = formulation_sample(cfg.diffusion, net.eval(), Schedule.from_config(cfg.diffusion), cond,
                           steps=2, generator=None)  # fmt: skip
    assert tuple(x.shape) == (2, 3, 16, 16)


def torch_cond(n: int, size: int):
    import torch

    g = torch.Generator().manual_seed(0)
    img = torch.rand(n, 3, size, size, generator=g) * 2 - 1
    mask = (torch.rand(n, 1, size, size, generator=g) > 0.7).float() * 2 - 1
    return torch.cat([img, mask], dim=1)


def test_restore_keeps_known_pixels_and_tiles_without_changing_them(trained):
    root, model_dir = trained
    r = load_restorer(model_dir)
    assert r.task == "inpaint" and r.scale == 1
    p = load_pairs(root / "degraded" / "inpaint")[0]
    assert p.lq.shape == (*p.hr.shape[:2], 4)
    cfg = tiny_config(root)
    out = restore(r, p.lq, sampling_spec(r, cfg.infer))
    keep = p.lq[..., 3] < 0.5
    assert np.array_equal(out[keep], p.lq[keep, :3])
    tiled = restore(r, p.lq, sampling_spec(r, cfg.infer, tile=16, tile_overlap=4))
    assert np.array_equal(tiled[keep], p.lq[keep, :3])
    with pytest.raises(ValueError, match=r"expected an HxWx4 float32 input"):
        restore(r, p.lq[..., :3].copy(), sampling_spec(r, cfg.infer))


def test_recommended_min_tile_raises_the_tile(trained, tmp_path):
    root, model_dir = trained
    ckpt = tmp_path / "model.safetensors"
    ckpt.write_bytes((model_dir / "model.safetensors").read_bytes())
    infer = tiny_config(root, "infer.tile=32").infer
    assert sampling_spec(load_restorer(ckpt), infer).tile == 32
    set_recommended(ckpt, 1, 1, "test", min_tile=128)
    r = load_restorer(ckpt)
    assert sampling_spec(r, infer).tile == 128  # at least the recommendation
    assert sampling_spec(r, tiny_config(root, "infer.tile=256").infer).tile == 256
    assert sampling_spec(r, infer, tile=16).tile == 16  # an explicit sweep value wins


# ----------------------------------------------------------------------------- pipeline


def test_degrade_writes_triples_and_evaluate_scores_the_hole_against_telea(trained):
    root, _ = trained
    task_dir = root / "degraded" / "inpaint"
    pairs_csv = pd.read_csv(task_dir / "pairs.csv")
    assert {"hr", "lq", "mask", "mask_coverage"} <= set(pairs_csv.columns)
    for row in pairs_csv.itertuples():
        lq, mask = read_image(task_dir / row.lq), read_mask(task_dir / row.mask)
        hr = read_image(task_dir / row.hr)
        want = masked_input(hr, mask)[..., :3]  # the fill, stored as 8-bit
        assert np.abs(lq - want).max() <= 0.5 / 255 + 1e-6
        assert mask.mean() == pytest.approx(row.mask_coverage, abs=1e-6)
    cfg = tiny_config(root, f"evaluate.out_dir={root / 'reports'}", "evaluate.steps=[1]")
    ev = evaluate_model(cfg, "inpaint")
    m = ev.metrics
    assert ev.protocol["reference_baseline"] == "telea" and ev.baselines == ["telea", "input"]
    for key in ("model_psnr_mask", "model_ssim_mask", "telea_psnr_mask", "input_psnr_mask",
                "delta_psnr_mask_vs_telea", "delta_psnr_rgb_vs_telea"):  # fmt: skip
        assert isinstance(m[key], float), key
    # the Telea row recomputed independently from the pairs
    pairs = load_pairs(task_dir)
    want = [float(masked_psnr(telea_inpaint(p.lq[..., :3], p.mask), p.hr, p.mask)) for p in pairs]
    assert m["telea_psnr_mask"] == pytest.approx(np.mean(want), abs=1e-6)
    out = root / "reports" / "inpaint" / "images"
    assert len(list((out / "mask").glob("*.png"))) == len(pairs)
    rep = build_report(root / "reports" / "inpaint", root / "report", load_config(None).report)
    assert "PSNR in the hole" in rep.markdown and "telea" in rep.markdown


def _enhance(*args: str):
    return CliRunner().invoke(app, ["enhance", *args])


def test_enhance_with_a_mask_file_and_its_errors(trained, tmp_path):
    _, model_dir = trained
    rng = np.random.default_rng(2)
    img = smooth_image(rng, 24, 32)
    write_image(tmp_path / "img.png", img)
    mask = np.zeros((24, 32), np.float32)
    mask[6:14, 8:20] = 1
    write_image(tmp_path / "mask.png", mask)
    res = _enhance(str(tmp_path / "img.png"), str(tmp_path / "out.png"), "-m", str(model_dir),
                   "--mask", str(tmp_path / "mask.png"))  # fmt: skip
    assert res.exit_code == 0, res.output
    out = read_image(tmp_path / "out.png")
    assert np.array_equal(out[mask == 0], read_image(tmp_path / "img.png")[mask == 0])
    # a photo stored turned (EXIF orientation 6): its mask is drawn on it as it is shown
    exif = Image.Exif()
    exif[0x0112] = 6
    shown = np.round(read_image(tmp_path / "img.png") * 255).astype(np.uint8)
    Image.fromarray(np.rot90(shown, 1)).save(tmp_path / "turned.png", exif=exif)
    res = _enhance(str(tmp_path / "turned.png"), str(tmp_path / "turned-out.png"), "-m",
                   str(model_dir), "--mask", str(tmp_path / "mask.png"))  # fmt: skip
    assert res.exit_code == 0, res.output
    assert np.array_equal(read_image(tmp_path / "turned-out.png"), out)
    write_image(tmp_path / "small.png", mask[:20])
    write_image(tmp_path / "empty.png", mask * 0)
    (tmp_path / "text.png").write_text("hello")
    for name, why in (("small.png", "mask is 32x20 but its image is 32x24"),
                      ("empty.png", "the mask is empty"), ("text.png", "not a recognised image"),
                      ("none.png", "no such file")):  # fmt: skip
        res = _enhance(str(tmp_path / "img.png"), str(tmp_path / "o.png"), "-m", str(model_dir),
                       "--mask", str(tmp_path / name))  # fmt: skip
        assert res.exit_code == 2 and why in res.output and name in res.output, res.output
        assert not (tmp_path / "o.png").exists()
    res = _enhance(str(tmp_path / "img.png"), str(tmp_path / "o.png"), "-m", str(model_dir))
    assert res.exit_code == 2 and "is an inpainting model: give the region" in res.output
    res = _enhance(str(tmp_path / "img.png"), str(tmp_path / "o.png"), "-m", "sr4",
                   "--mask", str(tmp_path / "mask.png"))  # fmt: skip
    assert res.exit_code == 2 and res.output.count("\n") == 1, res.output
    assert res.output == (
        "error: --mask needs an inpainting model (-m inpaint); sr4 is a super-resolution x4 "
        "model, which takes no mask\n"
    ), res.output


def test_enhance_a_folder_with_a_mask_folder(trained, tmp_path):
    _, model_dir = trained
    rng = np.random.default_rng(4)
    inp, masks, out = tmp_path / "in", tmp_path / "masks", tmp_path / "out"
    mask = np.zeros((24, 24), np.float32)
    mask[4:12, 4:12] = 1
    write_image(inp / "a.jpg", smooth_image(rng, 24, 24))
    write_image(masks / "a.png", mask)  # a JPEG photo takes a PNG mask
    write_image(inp / "sub" / "b.png", smooth_image(rng, 24, 24))
    write_image(masks / "sub" / "b.png", mask)
    write_image(inp / "c.png", smooth_image(rng, 24, 24))  # no mask: fails alone
    write_image(inp / "d.png", smooth_image(rng, 24, 24))
    (masks / "d.png").write_bytes(b"")  # a broken mask: the failure names the mask, not d.png
    args = [str(inp), str(out), "-m", str(model_dir), "--mask", str(masks)]
    res = _enhance(*args)
    assert res.exit_code == 1, res.output
    summary = json.loads((out / "_diffenhance" / "summary.json").read_text())
    assert summary["enhanced"] == 2
    assert [f["key"] for f in summary["failures"]] == ["c.png", "d.png"]
    assert "no mask" in summary["failures"][0]["reason"]
    assert summary["failures"][1]["reason"] == f"mask {masks / 'd.png'}: empty file (0 bytes)"
    manifest = json.loads(next((out / "_diffenhance" / "manifests").glob("*.json")).read_text())
    rec = {r["input_key"]: r for r in manifest["images"]}
    assert (
        rec["a.jpg"]["mask_key"] == str(masks / "a.png") and len(rec["a.jpg"]["mask_sha256"]) == 64
    )
    first_b = (out / "sub" / "b.png").read_bytes()
    res = _enhance(*args)  # nothing changed: both skipped
    assert "0 enhanced, 2 already done" in res.output, res.output
    mask2 = np.zeros((24, 24), np.float32)
    mask2[10:20, 2:22] = 1
    write_image(masks / "sub" / "b.png", mask2)  # an edited mask redoes its image
    res = _enhance(*args)
    assert "1 enhanced, 1 already done" in res.output, res.output
    assert (out / "sub" / "b.png").read_bytes() != first_b
    res = _enhance(str(inp), str(tmp_path / "o2"), "-m", str(model_dir),
                   "--mask", str(masks / "a.png"))  # fmt: skip
    assert res.exit_code == 2 and "a folder of inputs takes a folder of masks" in res.output


def test_uncertainty_correlation_of_inpainting_counts_the_hole_only():
    from diffenhance.uncertainty import error_correlation

    hr = np.zeros((8, 8, 3), np.float32)
    mask = np.zeros((8, 8), np.float32)
    mask[2:6, 2:6] = 1
    std = np.zeros((8, 8), np.float32)
    pred = hr.copy()
    ramp = np.linspace(0.1, 0.4, 16, dtype=np.float32).reshape(4, 4)
    std[2:6, 2:6] = ramp
    pred[2:6, 2:6] = (0.5 - ramp)[..., None]  # more spread, less error: -1 inside the hole
    inside = error_correlation(std, pred, hr, mask=mask)
    assert inside["pearson"] == pytest.approx(-1.0) and inside["spearman"] == pytest.approx(-1.0)
    whole = error_correlation(std, pred, hr)  # the exact, certain known pixels dominate
    assert whole["pearson"] > 0.5
