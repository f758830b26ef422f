"""`evaluate` and `report` as DVC stages in a temp git repo: outputs, `dvc metrics show/diff`,
`dvc plots show`, and a forced rerun that reproduces metrics.json bit for bit (CPU)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from diffenhance.train import train_model
from tests.browser import CHROMIUM, chromium, console_lines
from tests.pipeline_utils import copy_repo, git, run, set_params
from tests.tiny import make_dataset, tiny_config


def test_dvc_stages_metrics_plots_and_reproducibility(tmp_path, prefect_api):
    """evaluate + report through real `dvc repro` in a temp git repo; forced rerun is identical."""
    repo = copy_repo(tmp_path / "repo")
    set_params(repo, {
        "degrade": {"val_size": 32, "tasks": ["sr2"]},
        "train": {"tasks": ["sr2"]},
        "evaluate": {"steps": [1, 2], "max_images": 2},
        "report": {"crops": 1},
    })  # fmt: skip
    make_dataset(repo / "data", tasks=("sr2",))  # data/prepared + data/degraded
    train_model(tiny_config(repo / "data", f"train.out_dir={repo / 'models'}"), "sr2")
    run(repo, "dvc", "repro", "--single-item", "evaluate@sr2", "report@sr2")
    out = repo / "reports" / "sr2"
    for f in ("per_image.csv", "metrics.json", "timing.json", "psnr_vs_steps.csv",
              "protocol.json", "report.html", "plots/psnr_vs_steps.png", "plots/training.png"):  # fmt: skip
        assert (out / f).is_file(), f
    shown = run(repo, "dvc", "metrics", "show").stdout
    for key in ("model_psnr_y", "model_ssim_y", "model_ddim2_psnr_rgb", "bicubic_psnr_y",
                "delta_psnr_y_vs_bicubic", "seconds_per_image"):  # fmt: skip
        assert key in shown, shown
    first = (out / "metrics.json").read_bytes()
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "evaluated")
    assert "reports/sr2/metrics.json" in git(repo, "ls-files", "reports")
    run(repo, "dvc", "repro", "--single-item", "--force", "evaluate@sr2")
    assert (out / "metrics.json").read_bytes() == first  # bit-identical on CPU
    diff = json.loads(run(repo, "dvc", "metrics", "diff", "--all", "--json").stdout)
    changes = diff["reports/sr2/metrics.json"]
    assert changes["model_psnr_y"]["diff"] == 0 and changes["bicubic_ssim_y"]["diff"] == 0
    plots = json.loads(run(repo, "dvc", "plots", "show", "--json").stdout)
    assert "reports/sr2/psnr_vs_steps.csv" in json.dumps(plots)
    assert "reports/sr2/plots/scatter.png" in json.dumps(plots)
    _plots_page_draws_offline(repo, tmp_path)


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
