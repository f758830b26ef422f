"""The `evaluate` library and CLI: baselines, metrics files, seeding, folder evaluation.

The stages through real DVC (dvc metrics and plots) are in test_pipeline.py."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from diffenhance.cli import app
from diffenhance.config import load_config, write_resolved
from diffenhance.data.folder import file_sha256
from diffenhance.data.pairs import Pair, load_pairs, make_pair
from diffenhance.evaluate import (
    baselines_for_task,
    bicubic_upscale,
    bm3d_missing_reason,
    evaluate_model,
    evaluate_pairs,
    folder_pairs,
    lanczos_upscale,
    summarise,
)
from diffenhance.io import read_image, to_uint8, write_image
from diffenhance.metrics import hf_energy_ratio, psnr, ssim
from diffenhance.model import load_restorer
from diffenhance.restore import restore, sampling_spec
from tests.tiny import smooth_image, tiny_config, tiny_model


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    return root, tiny_model(root, "sr2", steps=2)


def test_baselines_match_references():
    rng = np.random.default_rng(1)
    flat = np.full((6, 5, 3), 0.4, np.float32)
    assert bicubic_upscale(flat, 4).shape == (24, 20, 3)
    np.testing.assert_allclose(bicubic_upscale(flat, 4), 0.4, atol=1e-6)
    np.testing.assert_allclose(lanczos_upscale(flat, 2), 0.4, atol=1e-5)
    # Lanczos against Pillow's own 8-bit RGB Lanczos (an independent code path)
    img = smooth_image(rng, 12, 10)
    ref = np.asarray(
        Image.fromarray(to_uint8(img)).resize((30, 36), Image.Resampling.LANCZOS), np.float32
    )
    ours = lanczos_upscale(to_uint8(img).astype(np.float32) / 255, 3) * 255
    assert np.abs(ours - ref).max() <= 1.5 and np.abs(ours - ref).mean() < 0.3  # 8-bit passes
    sr, skipped = baselines_for_task("sr4", load_config(None))
    assert list(sr) == ["bicubic", "lanczos"] and not skipped
    same, _ = baselines_for_task("jpeg", load_config(None))
    assert list(same) == ["input"] and np.array_equal(same["input"](img), img)
    den, skipped = baselines_for_task("denoise", load_config(None))
    if bm3d_missing_reason() is None:  # pragma: no cover - bm3d is not installed here
        assert list(den) == ["input", "cbm3d"]
    else:
        assert list(den) == ["input"] and "bm3d" in skipped["cbm3d"]


def test_summarise_caps_identical_images_and_computes_deltas():
    rows = [
        {"image": "a", "method": "m", "seed": 0, "psnr_rgb": math.inf, "ssim_rgb": 1.0,
         "psnr_y": 30.0, "ssim_y": 0.9},
        {"image": "b", "method": "m", "seed": 0, "psnr_rgb": 20.0, "ssim_rgb": 0.5,
         "psnr_y": 20.0, "ssim_y": 0.7},
        {"image": "a", "method": "m", "seed": 1, "psnr_rgb": 40.0, "ssim_rgb": 1.0,
         "psnr_y": 40.0, "ssim_y": 1.0},
        {"image": "b", "method": "m", "seed": 1, "psnr_rgb": 20.0, "ssim_rgb": 0.5,
         "psnr_y": 20.0, "ssim_y": 0.7},
        {"image": "a", "method": "bicubic", "seed": None, "psnr_rgb": 25.0, "ssim_rgb": 0.8,
         "psnr_y": 26.0, "ssim_y": 0.8},
        {"image": "b", "method": "bicubic", "seed": None, "psnr_rgb": 15.0, "ssim_rgb": 0.6,
         "psnr_y": 16.0, "ssim_y": 0.6},
    ]  # fmt: skip
    m = summarise(pd.DataFrame(rows), "m", ["bicubic"])
    assert m["n_images"] == 2
    assert m["m_psnr_rgb"] == pytest.approx((100 + 20 + 40 + 20) / 4)  # inf capped at 100 dB
    assert m["m_psnr_y"] == pytest.approx(27.5) and m["bicubic_psnr_y"] == pytest.approx(21.0)
    assert m["delta_psnr_y_vs_bicubic"] == pytest.approx(6.5)
    assert m["delta_ssim_y_vs_bicubic"] == pytest.approx(0.125)
    assert m["m_psnr_y_seed_std"] == pytest.approx(2.5)  # per-seed means 25 and 30
    assert m["model_psnr_y"] == m["m_psnr_y"]
    assert all(isinstance(v, float) and math.isfinite(v) for v in m.values())


def test_protocol_records_the_seed_the_headline_was_made_at(trained, tmp_path):
    """The headline image and figures are made at evaluate.seeds[0]; protocol.json's
    `sampling` (and the report's "restore (SamplingSpec)" row) said infer.seed."""
    root, model_dir = trained
    cfg = tiny_config(root, f"evaluate.out_dir={tmp_path}", "evaluate.steps=[2]", "infer.steps=2",
                      "infer.seed=7", "evaluate.seeds=[3]", "evaluate.max_images=1",
                      "infer.threads=2")  # fmt: skip
    before = torch.get_num_threads()  # a test worker's 1 (tests/conftest.py)
    try:
        ev = evaluate_model(cfg, "sr2")
    finally:
        torch.set_num_threads(before)
    assert ev.protocol["seeds"] == [3] and ev.protocol["sampling"]["seed"] == 3
    assert ev.protocol["threads"] == 2 != before  # infer.threads: the bits depend on it
    pair = load_pairs(root / "degraded" / "sr2")[0]
    spec = sampling_spec(load_restorer(model_dir), cfg.infer, seed=3)
    written = read_image(tmp_path / "sr2" / "images" / "model" / f"{pair.name}.png")
    want = restore(load_restorer(model_dir), pair.lq, spec)
    np.testing.assert_array_equal(to_uint8(written), to_uint8(want))


def test_evaluate_model_writes_every_file_with_consistent_numbers(trained):
    root, model_dir = trained
    cfg = tiny_config(
        root, f"evaluate.out_dir={root / 'reports'}", "evaluate.steps=[1]", "infer.steps=2",
        "evaluate.seeds=[0,1]", "evaluate.average_samples=2",
    )  # fmt: skip
    ev = evaluate_model(cfg, "sr2")
    out = root / "reports" / "sr2"
    per_image = pd.read_csv(out / "per_image.csv")
    assert len(per_image) == 2 * (2 + 2 * 2)  # images x (baselines + steps x seeds)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics == ev.metrics and metrics["n_images"] == 2 and metrics["headline_steps"] == 2
    for key in ("model_ddim2_psnr_y", "model_ddim1_ssim_rgb", "bicubic_psnr_y", "lanczos_ssim_y",
                "delta_psnr_y_vs_bicubic", "delta_ssim_rgb_vs_lanczos", "model_ddim2_psnr_y_seed_std"):  # fmt: skip
        assert isinstance(metrics[key], float), key
    assert metrics["delta_psnr_y_vs_bicubic"] == pytest.approx(
        metrics["model_ddim2_psnr_y"] - metrics["bicubic_psnr_y"], abs=2e-6
    )
    # Baselines recomputed independently from the pairs: Y channel, 2 px border crop (x2 SR)
    pairs = load_pairs(root / "degraded" / "sr2")
    bic = [float(psnr(bicubic_upscale(p.lq, 2), p.hr, crop=2, y_channel=True)) for p in pairs]
    assert metrics["bicubic_psnr_y"] == pytest.approx(np.mean(bic), abs=1e-6)
    hf = [float(hf_energy_ratio(bicubic_upscale(p.lq, 2), p.hr, crop=2)) for p in pairs]
    assert metrics["bicubic_hf_ratio"] == pytest.approx(np.mean(hf), abs=1e-6)  # sharpness
    assert "NaN" not in (out / "metrics.json").read_text()
    # A model row is the restore path's output: the mean of `average_samples` samples, its
    # tiles seeded by (seed, image content, position); another seed gives another output
    r = load_restorer(model_dir)
    head = sampling_spec(r, cfg.infer, samples=2)
    assert (head.steps, head.samples, head.seed) == (2, 2, 0)
    mean = restore(r, pairs[0].lq, replace(head, seed=1))
    assert not np.array_equal(mean, restore(r, pairs[0].lq, head))
    assert not np.array_equal(mean, restore(r, pairs[0].lq, replace(head, seed=1, samples=1)))
    row = per_image.query("image == @pairs[0].name and method == 'model_ddim2' and seed == 1")
    assert float(row["ssim_y"].iloc[0]) == pytest.approx(
        float(ssim(mean, pairs[0].hr, crop=2, y_channel=True)), abs=1e-9
    )
    curve = pd.read_csv(out / "psnr_vs_steps.csv")
    assert list(curve["steps"]) == [1, 2]
    assert curve["psnr_y"].round(6).tolist() == [
        metrics["model_ddim1_psnr_y"],
        metrics["model_ddim2_psnr_y"],
    ]
    timing = json.loads((out / "timing.json").read_text())
    assert timing["seconds_per_image"] > 0 and "bicubic_seconds_per_image" in timing
    protocol = json.loads((out / "protocol.json").read_text())
    assert [p["crop"] for p in protocol["protocols"]] == [2, 2]
    assert protocol["sampler"] == "ddim" and protocol["seeds"] == [0, 1]
    assert protocol["reference_baseline"] == "bicubic" and protocol["skipped_baselines"] == {}
    for kind in ("lq", "hr", "model", "bicubic", "lanczos"):
        assert len(list((out / "images" / kind).glob("*.png"))) == 2, kind
    # Same params, same metrics (CPU): a second run is bit-identical
    assert evaluate_model(cfg, "sr2").metrics == metrics


def test_model_for_another_task_is_refused(trained):
    root, model_dir = trained
    cfg = tiny_config(root)
    pairs = [Pair("x", np.zeros((16, 16, 3), np.float32), np.zeros((4, 4, 3), np.float32))]
    with pytest.raises(ValueError, match=r"trained for task 'sr2'.*task 'sr4'"):
        evaluate_pairs(load_restorer(model_dir), pairs, "sr4", cfg, root / "x", source={})


def test_cli_evaluates_any_folder(trained, tmp_path):
    root, model_dir = trained
    rng = np.random.default_rng(5)
    hr_dir = tmp_path / "photos"
    write_image(hr_dir / "a.png", smooth_image(rng, 40, 37))
    write_image(hr_dir / "sub" / "b.jpg", smooth_image(rng, 30, 44))
    params = write_resolved(tiny_config(root, "evaluate.steps=[2]"), tmp_path / "cfg")
    out = tmp_path / "out"
    cli = CliRunner()
    res = cli.invoke(app, ["evaluate", "--hr-dir", str(hr_dir), "--task", "sr2",
                           "--model", str(model_dir), "--out", str(out), "--params", str(params)])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "PSNR-Y" in res.output and "metrics.json" in res.output
    per_image = pd.read_csv(out / "per_image.csv")
    assert sorted(per_image["image"].unique()) == ["a", "sub__b"]
    assert json.loads((out / "metrics.json").read_text())["n_images"] == 2
    # LQ = the validation degradation of the `degrade` stage (same seed from the file's hash)
    cfg = tiny_config(root)
    src = hr_dir / "sub" / "b.jpg"
    hr, lq, _ = make_pair(read_image(src), file_sha256(src), "sr2", cfg.degrade)
    assert hr.shape == (30, 32, 3)  # centre crop to degrade.val_size = 32
    assert np.array_equal(to_uint8(read_image(out / "images/lq/sub__b.png")), to_uint8(lq))
    bad = cli.invoke(app, ["evaluate", "--hr-dir", str(hr_dir), "--task", "sr4", "--model",
                           str(model_dir), "--out", str(out), "--params", str(params)])  # fmt: skip
    assert bad.exit_code == 2 and "trained for task 'sr2'" in bad.output
    (tmp_path / "empty").mkdir()
    empty = cli.invoke(app, ["evaluate", "--hr-dir", str(tmp_path / "empty"), "--model",
                             str(model_dir), "--out", str(out), "--params", str(params)])  # fmt: skip
    assert empty.exit_code == 2 and "no images found" in empty.output


def test_a_too_small_image_is_named_width_x_height_throughout(tmp_path):
    """Sizes read width x height everywhere: a 3 px wide, 5 px tall photo was '(3x5 px) ...
    image 5x3 is smaller than the scale 4', the file's size and the reason's disagreeing."""
    cfg = load_config(None, [])
    for task, (w, h), why in (
        ("sr4", (3, 5), "(3x5 px) is too small to evaluate sr4: image 3x5 is smaller than the "
                        "scale 4"),
        ("sr2", (7, 9), "(7x9 px) is too small to evaluate sr2: image 6x8 is too small for a "
                        "2-pixel border crop"),  # modcropped to 6x8, then scored
    ):  # fmt: skip
        hr_dir = tmp_path / task
        write_image(hr_dir / "tiny.png", np.zeros((h, w, 3), np.float32))
        with pytest.raises(ValueError) as e:
            folder_pairs(hr_dir, task, cfg)
        assert str(e.value).startswith(f"{hr_dir / 'tiny.png'} {why}"), str(e.value)


def test_cli_names_a_bad_image_and_finds_the_shipped_model(trained, tmp_path, monkeypatch):
    """A corrupt or too small image exits 2 with one line naming it (no traceback); the
    train stage's `models/sr2` without a trained model is the shipped one, as for enhance."""
    root, model_dir = trained
    params = write_resolved(tiny_config(root, "evaluate.steps=[2]"), tmp_path / "cfg")
    run = ["evaluate", "--out", str(tmp_path / "out"), "--params", str(params)]
    hr_dir = tmp_path / "photos"
    write_image(hr_dir / "a.png", smooth_image(np.random.default_rng(5), 40, 37))
    # 3x3 passes the x2 degradation (2x2 HR, 1x1 LQ) but not the 2 px border crop of scoring
    for name, data, why in (("b.png", b"not a png", ": not a recognised image"),
                            ("c.png", 1, " (1x1 px) is too small to evaluate sr2: "),
                            ("d.png", 3, " (3x3 px) is too small to evaluate sr2: ")):  # fmt: skip
        bad = hr_dir / name
        if isinstance(data, int):
            write_image(bad, np.zeros((data, data, 3), np.float32))
        else:
            bad.write_bytes(data)
        res = CliRunner().invoke(app, [*run, "--hr-dir", str(hr_dir), "--model", str(model_dir)])
        assert res.exit_code == 2, res.output
        out = " ".join(res.output.split())  # console wrapping
        assert out.startswith(f"error: {bad}{why}") and "Traceback" not in out, out
        assert not (tmp_path / "out").exists()  # stopped before anything was written
        bad.unlink()
    monkeypatch.chdir(tmp_path)  # no models/sr2 here
    res = CliRunner().invoke(
        app, [*run, "--hr-dir", str(hr_dir), "--model", "models/sr2", "--task", "sr4"]
    )
    assert res.exit_code == 2 and "trained for task 'sr2'" in res.output, res.output


def test_a_failed_evaluation_leaves_the_previous_one_whole(trained, tmp_path):
    """evaluate_pairs writes into a hidden staging folder and moves it in at the end: a run
    that fails half-way (here on its second pair) leaves every file of the previous evaluation
    as it was, and no staging folder."""
    root, model_dir = trained
    cfg = tiny_config(root, f"evaluate.out_dir={tmp_path}", "evaluate.steps=[1]",
                      "evaluate.uncertainty_samples=0")  # fmt: skip
    evaluate_model(cfg, "sr2")
    out = tmp_path / "sr2"

    def snapshot() -> dict[str, bytes]:
        return {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*")
                if p.is_file()}  # fmt: skip

    before = snapshot()
    assert "metrics.json" in before and any(k.startswith("images/model/") for k in before)
    good, second = load_pairs(root / "degraded" / "sr2")[:2]
    bad = replace(second, lq=second.hr)  # an input of the wrong size: the run fails on it
    r = load_restorer(model_dir)
    with pytest.raises(ValueError, match="shapes differ"):
        evaluate_pairs(r, [good, bad], "sr2", cfg, out, source={"kind": "test"})
    assert snapshot() == before
    assert not (out / ".evaluate-partial").exists()
    ev = evaluate_pairs(r, [good], "sr2", cfg, out, source={"kind": "test"})
    assert ev.dir == out and ev.metrics["n_images"] == 1
    assert json.loads((out / "metrics.json").read_text()) == ev.metrics
    assert sorted(p.name for p in (out / "images" / "hr").iterdir()) == [f"{good.name}.png"]
