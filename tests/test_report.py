"""The `report` stage: HTML contents, figures, headless Chromium rendering, Prefect artifacts."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from diffenhance.config import ReportConfig, write_resolved
from diffenhance.evaluate import evaluate_model, load_evaluation
from diffenhance.io import write_image
from diffenhance.report import build_report, per_image_gain, pick_crops
from diffenhance.report_plots import crop_figure, zoom_box
from tests.browser import CHROMIUM, chromium, console_lines, needs_chromium
from tests.tiny import smooth_image, tiny_config, tiny_model


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """A tiny sr2 model, evaluated on its 2 validation pairs; (root, cfg, eval dir)."""
    root = tmp_path_factory.mktemp("report")
    tiny_model(root, "sr2", steps=3)
    cfg = tiny_config(
        root, f"evaluate.out_dir={root / 'reports'}", f"report.out_dir={root / 'reports'}",
        "evaluate.steps=[1]", "infer.steps=2", "report.crops=1", "report.zoom_size=8",
    )  # fmt: skip
    evaluate_model(cfg, "sr2")
    return root, cfg, root / "reports" / "sr2"


@pytest.fixture(scope="module")
def report(evaluated):
    root, cfg, eval_dir = evaluated
    return build_report(
        eval_dir, eval_dir, cfg.report, train_log=root / "models" / "sr2" / "train_log.csv"
    )


def test_report_is_self_contained_and_states_the_protocol(evaluated, report):
    _, _, eval_dir = evaluated
    text = report.html.read_text()
    ev = load_evaluation(eval_dir)
    # every image is an embedded PNG that decodes; nothing is fetched from anywhere
    srcs = re.findall(r'<img src="([^"]+)"', text)
    assert len(srcs) == len(report.plots) == 5  # training, steps, scatter, best, worst
    for src in srcs:
        assert src.startswith("data:image/png;base64,")
        img = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
        assert img.size[0] > 100 and img.size[1] > 100
    markup = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", text)
    assert not re.search(r"(https?:|//[a-z]|<link|@import|url\(|src=\"(?!\"))", markup, re.I)
    names = sorted(p.name for p in (eval_dir / "plots").glob("*.png"))
    assert names == ["crop_best_0.png", "crop_worst_1.png", "psnr_vs_steps.png", "scatter.png",
                     "training.png"]  # fmt: skip
    # the summary states protocol, sampler, steps and seeds
    for needle in ("Y (BT.601, MATLAB rgb2ycbcr), 2 px border crop", "ddim (eta 0.0)",
                   "2 (headline); evaluated: 1, 2", "<td class=\"l\">seeds</td><td class=\"l\">0</td>",
                   "sampler ddim, steps 2, samples 1, eta 0.0, seed 0, precision auto, tile 64"):  # fmt: skip
        assert needle in text, needle
    # model against every baseline, with the deltas of metrics.json
    for b in ("bicubic", "lanczos"):
        d = ev.metrics[f"delta_psnr_y_vs_{b}"]
        assert f"{d:+.2f}</span>" in text
        assert f"PSNR Y (dB) {d:+.2f}" in report.markdown
    rows = {r["method"]: r for r in report.table}
    assert rows["model_ddim2 (headline)"]["psnr_y"] == ev.metrics["model_ddim2_psnr_y"]
    assert rows["bicubic"]["ssim_rgb"] == ev.metrics["bicubic_ssim_rgb"]


def test_best_and_worst_crops_and_zoom_region(evaluated):
    _, _, eval_dir = evaluated
    gain = per_image_gain(load_evaluation(eval_dir))
    assert gain["gain"].is_monotonic_decreasing
    np.testing.assert_allclose(gain["gain"], gain["model"] - gain["baseline"])
    a, b = gain.index
    assert pick_crops(gain, 1) == [("best", a), ("worst", b)]
    assert pick_crops(gain, 2) == [("best", a), ("worst", b)]  # no image twice
    many = gain.reindex(list("abcde")).assign(gain=[5.0, 4, 3, 2, 1])
    assert pick_crops(many, 2) == [("best", "a"), ("best", "b"), ("worst", "e"), ("worst", "d")]
    assert pick_crops(many, 3) == [("best", "a"), ("best", "b"), ("best", "c"),
                                   ("worst", "e"), ("worst", "d")]  # fmt: skip
    img = np.full((64, 48, 3), 0.5, np.float32)
    img[40:56, 8:24] = np.random.default_rng(0).random((16, 16, 3))  # the only detail
    top, left, side = zoom_box(img, 16)
    assert side == 16 and 36 <= top <= 40 and 4 <= left <= 8
    assert zoom_box(img[:10, :10], 32)[2] == 5  # at most half the image


@needs_chromium
def test_report_renders_in_headless_chromium(report, tmp_path):
    shot = tmp_path / "report.png"
    proc = chromium(report.html, tmp_path, f"--screenshot={shot}", "--window-size=1280,2000")
    assert proc.returncode == 0 and shot.is_file(), proc.stderr[-2000:]
    page = np.asarray(Image.open(shot).convert("RGB"), np.float32)
    assert page.shape == (2000, 1280, 3)
    ink = (page.min(axis=2) < 200).mean()  # share of pixels that are not (near) white
    assert 0.03 < ink < 0.9 and page.std() > 20, (ink, page.std())  # not blank
    assert not console_lines(proc.stderr), console_lines(proc.stderr)
    dom = chromium(report.html, tmp_path, "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    n_img = len(re.findall(r"<img ", dom.stdout))
    assert n_img == 5 and dom.stdout.count('data-decoded="1"') == n_img
    assert 'data-images-ok="1"' in dom.stdout
    assert not console_lines(dom.stderr), console_lines(dom.stderr)  # no errors, no logs
    # the same checks catch a broken image and a script error
    bad = tmp_path / "bad.html"
    bad.write_text(
        report.html.read_text()
        .replace("base64,iVBOR", "base64,AAAA", 1)
        .replace("<h1>", "<script>undefined_function();</script><h1>", 1)
    )
    dom = chromium(bad, tmp_path, "--dump-dom")
    assert 'data-decoded="0"' in dom.stdout and 'data-images-ok="0"' in dom.stdout
    logged = "\n".join(console_lines(dom.stderr))
    assert "image failed to decode" in logged and "Uncaught ReferenceError" in logged


def test_report_flow_publishes_artifacts(evaluated, tmp_path, prefect_api):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.report import report as report_flow

    root, cfg, _ = evaluated
    out = tmp_path / "out"
    params = write_resolved(cfg, tmp_path)
    written = report_flow(params=str(params), overrides=[f"report.out_dir={out}"])
    assert written == [str(out / "sr2" / "report.html")] and Path(written[0]).is_file()
    assert (out / "sr2" / "plots" / "training.png").is_file()
    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=["report-sr2", "metrics-sr2"])
            )
        )
    # the newest of each key: other tests on the shared server publish these keys too
    by_key = {a.key: a for a in sorted(arts, key=lambda a: a.created)}
    assert by_key["report-sr2"].type == "markdown"
    assert "PSNR Y (dB)" in by_key["report-sr2"].data and "protocol y" in by_key["report-sr2"].data
    assert by_key["metrics-sr2"].type == "table"
    table = by_key["metrics-sr2"].data
    rows = json.loads(table) if isinstance(table, str) else table
    assert {r["method"] for r in rows} >= {"model_ddim2 (headline)", "bicubic", "lanczos"}


def test_missing_evaluation_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"metrics\.json: missing; run the `evaluate`"):
        build_report(tmp_path, tmp_path, ReportConfig())


def test_chromium_script_is_idempotent():
    """scripts/ensure_chromium.sh does nothing when the browser is already there."""
    if not CHROMIUM.exists():
        pytest.skip("chromium not installed")
    script = Path(__file__).resolve().parents[1] / "scripts" / "ensure_chromium.sh"
    proc = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0 and proc.stderr == "" and shutil.which("chromium")


def _evaluation_with_gains(eval_dir: Path, dest: Path, gains: dict[str, float]) -> Path:
    """A copy of a real evaluation folder whose images are replaced by `gains`' names: each with
    its own HR/LQ/model/baseline PNGs and a headline PSNR-Y of (30 + gain) dB against 30 dB for
    the reference baseline."""
    shutil.copytree(eval_dir, dest)
    ev = load_evaluation(dest)
    ref = ev.protocol["reference_baseline"]
    shutil.rmtree(dest / "images")
    rng = np.random.default_rng(1)
    rows = []
    template = {m: ev.per_image[ev.per_image["method"] == m].iloc[0] for m in (ref, ev.headline)}
    for name, g in gains.items():
        hr = smooth_image(rng, 32, 32)
        for kind, img in (("hr", hr), ("lq", hr[::2, ::2]), (ref, smooth_image(rng, 32, 32)),
                          ("model", smooth_image(rng, 32, 32))):  # fmt: skip
            write_image(dest / "images" / kind / f"{name}.png", img)
        rows.append({**template[ref], "image": name, "psnr_y": 30.0})
        rows.append({**template[ev.headline], "image": name, "psnr_y": 30.0 + g})
    pd.DataFrame(rows).to_csv(dest / "per_image.csv", index=False)
    return dest


@pytest.mark.parametrize(
    ("gains", "expected"),
    [
        # the worst image is chelsea_s000 (-2.59 dB): it must be shown as worst, never as best
        ({"chelsea_s000": -2.59, "chelsea_s040": 1.5, "rocket_s000": -0.8, "rocket_s034": 0.4},
         [("best", "chelsea_s040"), ("best", "rocket_s034"), ("worst", "chelsea_s000"),
          ("worst", "rocket_s000")]),
        ({"chelsea_s000": -2.59, "rocket_s034": -1.2},  # the model loses on both
         [("best", "rocket_s034"), ("worst", "chelsea_s000")]),
        ({"a": 0.5, "b": -2.59, "c": 2.0},
         [("best", "c"), ("best", "a"), ("worst", "b")]),
    ],
)  # fmt: skip
def test_best_and_worst_labels_name_the_images_with_the_highest_and_lowest_gain(
    evaluated, tmp_path, gains, expected
):
    _, cfg, eval_dir = evaluated
    ev_dir = _evaluation_with_gains(eval_dir, tmp_path / "eval", gains)
    report = build_report(ev_dir, tmp_path / "out", ReportConfig(crops=2, zoom_size=8))
    ev = load_evaluation(ev_dir)
    ref = ev.protocol["reference_baseline"]
    captions = re.findall(
        r"<figcaption>((?:best|worst): [^<]*)</figcaption>", report.html.read_text()
    )
    below = f" (even the best image is below {ref})"  # a "best" that is still a loss says so
    assert captions == [
        f"{which}: {name}, PSNR-Y gain over {ref} {gains[name]:+.2f} dB"
        + (below if which == "best" and gains[name] < 0 else "")
        for which, name in expected
    ]
    # each crop figure shows its image: the same figure drawn from that image's files
    for rank, (which, name) in enumerate(expected):
        shown = tmp_path / "out" / "plots" / f"crop_{which}_{rank}.png"
        again = crop_figure(
            images=[ev.image(k, name) for k in ("lq", ref, "model", "hr")],
            labels=("LQ input", ref, ev.headline, "ground truth"),
            scores=(None, 30.0, 30.0 + gains[name], None), zoom_size=8,
            path=tmp_path / f"again_{rank}.png",
        )  # fmt: skip
        assert shown.read_bytes() == again.read_bytes(), (which, name)
