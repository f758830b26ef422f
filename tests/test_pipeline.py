"""The README's main job and `dvc repro` semantics, on a tiny config, with real DVC and Prefect:
its evaluate and report outputs through `dvc metrics show/diff` and `dvc plots show`, and a forced
rerun that reproduces the weights and metrics.json bit for bit (CPU)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pandas as pd
import pytest

from diffenhance.restoration import task_names
from tests.browser import CHROMIUM, chromium, console_lines
from tests.pipeline_utils import copy_repo, git, run, set_params

TINY = {
    "data": {"crop_size": 96, "crop_step": 96, "min_size": 32},
    "degrade": {"val_size": 32, "val_max_images": 2},
    "model": {"base_channels": 16, "channel_mults": [1, 2], "attn_resolutions": [2]},
    # a tiny network from scratch: pmrf trains its mean too (the shipped sr4 freezes it)
    "diffusion": {"timesteps": 100, "options": {"pmrf": {"train_mean": True}}},
    "train": {
        "steps": 4,
        "batch_size": 2,
        "crop_size": 32,
        "warmup_steps": 1,
        "log_every": 2,
        "val_every": 4,
        "val_steps": 2,
        "ckpt_every": 4,
        "val_images": 1,
    },
    "compare": {
        "formulations": ["regression", "pmrf"],  # the reference and params.yaml's formulation
        "train_steps": 2,
        "steps": [1, 2],
        "samples": 2,
        "max_images": 1,
    },
}


@pytest.fixture(scope="module")
def repo(tmp_path_factory, prefect_api):
    r = copy_repo(tmp_path_factory.mktemp("pipeline"))
    set_params(r, TINY)
    # The main job itself, against the session's Prefect server; then the opt-in comparison.
    proc = run(r, "python", "-m", "flows.pipeline")
    assert "Running stage 'compare'" not in proc.stdout  # opt-in: not part of the main job
    assert "Running stage 'report@sr4'" in proc.stdout
    compared = run(r, "python", "-m", "flows.pipeline", "compare")
    assert "Running stage 'train@sr4'" not in compared.stdout  # up to date: not rerun
    return r, proc


def test_main_job_produces_prepared_and_degraded(repo):
    r, proc = repo
    manifest = pd.read_csv(r / "data/prepared/manifest.csv")
    assert set(manifest["split"]) == {"train", "val"}
    val_sources = {
        os.path.basename(p).split(".")[0] for p in manifest.query("split == 'val'")["source_path"]
    }
    assert val_sources == {"chelsea", "rocket"}
    for task in task_names():
        pairs = pd.read_csv(r / "data/degraded" / task / "pairs.csv")
        assert len(pairs) == 2
        for row in pairs.itertuples():
            assert (r / "data/degraded" / task / row.hr).is_file()
            assert (r / "data/degraded" / task / row.lq).is_file()
    sr4 = pd.read_csv(r / "data/degraded/sr4/pairs.csv")
    assert (sr4.hr_height == 4 * sr4.lq_height).all()
    assert (r / "data/prepared/params.resolved.yaml").is_file()
    assert (r / "data/degraded/params.resolved.yaml").is_file()
    assert "pipeline: output data/degraded" in proc.stdout
    log = pd.read_csv(r / "models/sr4/train_log.csv")
    assert log["step"].iloc[-1] == 4 and log["val_psnr"].notna().any()
    assert (r / "models/sr4/model.safetensors").is_file()
    out = r / "reports" / "sr4"
    for f in ("per_image.csv", "metrics.json", "timing.json", "psnr_vs_steps.csv",
              "protocol.json", "report.html", "plots/psnr_vs_steps.png", "plots/training.png"):  # fmt: skip
        assert (out / f).is_file(), f
    # the formulation comparison: both models at the same budget, scored, reported
    for kind in ("regression", "pmrf"):
        log = pd.read_csv(r / f"models/compare/{kind}/sr4/train_log.csv")
        assert log["step"].iloc[-1] == 2
    metrics = json.loads((r / "reports/compare/metrics.json").read_text())
    assert {"bicubic_psnr_y", "regression_fidelity_psnr_y", "pmrf_sharp_hf_ratio",
            "check_fidelity_minus_regression_psnr_y"} <= set(metrics)  # fmt: skip
    html = (r / "reports/compare/report.html").read_text()
    assert html.count("data:image/png;base64,") == 2  # curves + pmrf's crops


def test_dvc_metrics_and_plots_show_the_reports(repo, tmp_path):
    r, _ = repo
    shown = run(r, "dvc", "metrics", "show").stdout
    for key in ("model_psnr_y", "model_ssim_y", "model_euler2_psnr_rgb", "bicubic_psnr_y",
                "delta_psnr_y_vs_bicubic", "seconds_per_image", "regression_fidelity_psnr_y"):  # fmt: skip
        assert key in shown, shown
    plots = json.dumps(json.loads(run(r, "dvc", "plots", "show", "--json").stdout))
    for f in ("reports/sr4/psnr_vs_steps.csv", "reports/sr4/plots/scatter.png",
              "models/sr4/train_log.csv"):  # fmt: skip
        assert f in plots, f
    _plots_page_draws_offline(r, tmp_path)


def _plots_page_draws_offline(repo, tmp_path):
    """`dvc plots show` writes a page whose charts draw without a network: .dvc/config's
    html_template (docs/dvc-plots.html) inlines vega; DVC's own page loads it from a CDN."""
    if not CHROMIUM.exists():
        pytest.skip("needs /usr/bin/chromium: run scripts/ensure_chromium.sh")
    page = Path(run(repo, "dvc", "plots", "show", "-o", str(tmp_path / "plots")).stdout.split()[-1]
                .removeprefix("file://"))  # fmt: skip
    html = page.read_text()
    assert "<script src=" not in html and "cdn.jsdelivr" not in html
    n_charts = html.count("vegaEmbed('#")
    assert n_charts >= 2  # psnr_vs_steps.csv and train_log.csv
    dom = chromium(page, tmp_path, "--virtual-time-budget=10000", "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert len(re.findall(r'<canvas[^>]*class="marks"', dom.stdout)) == n_charts
    assert not [line for line in console_lines(dom.stderr) if "rror" in line]


def test_repro_twice_changes_nothing(repo):
    r, _ = repo
    proc = run(r, "dvc", "repro")
    assert "Running stage" not in proc.stdout
    status = run(r, "dvc", "status").stdout
    assert "up to date" in status


def test_degrade_param_reruns_degrade_and_downstream_only(repo):
    r, _ = repo
    lq_before = (r / "data/degraded/denoise/lq").glob("*.png")
    lq_before = {p.name: p.read_bytes() for p in lq_before}
    prepared_before = (r / "data/prepared/manifest.csv").stat().st_mtime_ns
    set_params(r, {"degrade": {"val_noise_sigma": 15.0}})
    proc = run(r, "dvc", "repro", "report")  # the main job's stages (compare is opt-in)
    assert "Running stage 'degrade'" in proc.stdout
    # a denoise-only key: sr4's pairs are the same bytes and train@sr4 does not read the key
    assert "Running stage 'train@sr4'" not in proc.stdout
    assert "Running stage 'evaluate@sr4'" not in proc.stdout
    assert "Running stage 'prepare'" not in proc.stdout
    assert (r / "data/prepared/manifest.csv").stat().st_mtime_ns == prepared_before
    lq_after = {p.name: p.read_bytes() for p in (r / "data/degraded/denoise/lq").glob("*.png")}
    assert lq_after.keys() == lq_before.keys()  # same pairs, seeded by content
    assert all(lq_after[k] != lq_before[k] for k in lq_after)  # new sigma, new noise
    assert "up to date" in run(r, "dvc", "status").stdout  # the compare stages too


def test_forced_rerun_of_whole_pipeline_gives_identical_metrics(repo):
    """The promise of `dvc repro` on CPU: same params, same numbers, bit for bit. Forced here:
    the stages whose numbers are the job's result (prepare's and degrade's bytes: test_data.py
    and test_degrade.py across processes; the comparison's: test_compare.py)."""
    r, _ = repo
    before = (r / "reports/sr4/metrics.json").read_bytes()
    weights = (r / "models/sr4/model.safetensors").read_bytes()
    git(r, "add", "-A")
    git(r, "commit", "-qm", "the main job's results")
    # in git, not the cache: the commit holds the job's metrics (the copy's were the repo's)
    assert "reports/sr4/metrics.json" in git(r, "diff", "--name-only", "HEAD~1", "HEAD")
    proc = run(r, "dvc", "repro", "--force", "--single-item", "train@sr4", "evaluate@sr4")
    for stage in ("train@sr4", "evaluate@sr4"):
        assert f"Running stage '{stage}'" in proc.stdout
    assert (r / "models/sr4/model.safetensors").read_bytes() == weights
    assert (r / "reports/sr4/metrics.json").read_bytes() == before
    diff = json.loads(run(r, "dvc", "metrics", "diff", "--all", "--json").stdout)
    changes = diff["reports/sr4/metrics.json"]
    assert changes["model_psnr_y"]["diff"] == 0 and changes["bicubic_ssim_y"]["diff"] == 0
