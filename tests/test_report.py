"""The `report` stage: HTML contents, figures, headless Chromium rendering, Prefect artifacts."""

from __future__ import annotations

import base64
import html
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
from diffenhance.model import read_checkpoint
from diffenhance.report import build_report, per_image_gain, pick_crops, provenance
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
    # the summary states protocol, sampler, steps, seeds and threads (test_evaluate: their value)
    threads = json.loads((eval_dir / "protocol.json").read_text())["threads"]
    for needle in ("Y (BT.601, MATLAB rgb2ycbcr), 2 px border crop", "ddim (eta 0.0)",
                   "2 (headline); evaluated: 1, 2", "<td class=\"l\">seeds</td><td class=\"l\">0</td>",
                   "sampler ddim, steps 2, samples 1, eta 0.0, seed 0, precision auto, tile 64",
                   f"cpu, fp32, {threads} CPU threads"):  # fmt: skip
        assert needle in text, needle
    # model against every baseline, with the deltas of metrics.json
    for b in ("bicubic", "lanczos"):
        d = ev.metrics[f"delta_psnr_y_vs_{b}"]
        assert f"{d:+.2f}</span>" in text
        assert f"PSNR Y (dB) {d:+.2f}" in report.markdown
    rows = {r["method"]: r for r in report.table}
    assert rows["model_ddim2 (headline)"]["psnr_y"] == ev.metrics["model_ddim2_psnr_y"]
    assert rows["bicubic"]["ssim_rgb"] == ev.metrics["bicubic_ssim_rgb"]


def test_training_caption_says_what_the_validation_curve_measures(evaluated, report):
    """Issue 23.5: the validation chart read 35 dB beside tables of 31.5, unexplained. The
    curve is train.validate's: the RGB protocol on the first `val_images` pairs at `val_steps`
    steps; the tables score evaluate's images. The caption says both, with the numbers, and
    the chart puts the tables' number beside the curve (metrics.json keeps its keys)."""
    _, cfg, eval_dir = evaluated
    ev = load_evaluation(eval_dir)
    caps = re.findall(r"<figcaption>([^<]*)</figcaption>", report.html.read_text())
    (cap,) = [html.unescape(c) for c in caps if c.startswith("Loss and validation")]
    pairs = pd.read_csv(Path(cfg.degrade.out_dir) / "sr2" / "pairs.csv")
    names = ", ".join(pairs["name"].head(cfg.train.val_images))
    log = pd.read_csv(evaluated[0] / "models" / "sr2" / "train_log.csv").dropna(subset=["val_psnr"])
    for needle in (
        f"Validation (train.validate, EMA weights): {ev.protocol['protocols'][0]['description']}",
        f"the first {cfg.train.val_images} validation pairs ({names}) at {cfg.train.val_steps} "
        "sampler step(s), 1 sample, seed 0",
        f"{ev.protocol['n_images']} pairs spread over the set ({', '.join(ev.protocol['images'])}) "
        "under both protocols: the same images.",  # here; sr4's main job: "other images ..."
        f"At step 3 the curve reads {log['val_psnr'].iloc[-1]:.2f} dB",
        f"({ev.headline}, PSNR RGB (dB)): {ev.metrics[ev.headline + '_psnr_rgb']:.2f}.",
    ):  # fmt: skip
        assert needle in cap, (needle, cap)


def test_a_fine_tuned_model_names_the_runs_behind_its_weights(evaluated, tmp_path):
    """Issue 23.5: a model fine-tuned 300 steps from the shipped sr4 said "training step 300",
    nothing of the 9000 + 6000 steps before. The start checkpoint's record (its step, its
    card's recipe, what it started from in turn) becomes the new checkpoint's init_from
    metadata, protocol.json carries it, and the summary and the training caption say it."""
    from diffenhance.train import train_model

    root, cfg, _ = evaluated
    start = tmp_path / "start"  # the tiny 3-step model, with a card as the shipped ones have
    shutil.copytree(root / "models" / "sr2", start)
    card = {"recipe": "recipes/stage2.yaml", "commit": "abc1234",
            "init_from": {"path": "stage1 at commit abc0000", "step": 9, "formulation": "residual"}}  # fmt: skip
    (start / "training.json").write_text(json.dumps(card))
    out = tmp_path / "models"
    train_model(tiny_config(root, f"train.out_dir={out}", "train.steps=2", "train.val_every=2",
                            f"train.init_from={start}"), "sr2")  # fmt: skip
    _, meta = read_checkpoint(out / "sr2")
    f = meta["formulation"]
    rec = json.loads(meta["init_from"])
    assert rec == {"path": str(start / "model.safetensors"), "step": 3, "formulation": f,
                   "recipe": "recipes/stage2.yaml", "commit": "abc1234",
                   "init_from": card["init_from"]}  # fmt: skip
    ev = evaluate_model(tiny_config(root, f"train.out_dir={out}", "evaluate.steps=[1]",
                                    f"evaluate.out_dir={tmp_path / 'reports'}"), "sr2")  # fmt: skip
    assert ev.protocol["model"]["init_from"] == rec
    rep = build_report(
        ev.dir, tmp_path / "out", cfg.report, train_log=out / "sr2" / "train_log.csv"
    )
    want = (f"fine-tuned 2 steps from {start / 'model.safetensors'} ({f}, 3 steps), itself from "
            "stage1 at commit abc0000 (residual, 9 steps): 9 + 3 + 2 = 14 steps in all")  # fmt: skip
    assert f"| model | {out / 'sr2' / 'model.safetensors'} ({want}) |" in rep.markdown
    assert html.unescape(rep.html.read_text()).count(want) == 2  # summary, training caption
    # from scratch, or an evaluation from before init_from was recorded: as before
    assert provenance({"step": "300"}) == "training step 300"


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


def test_zoom_box_leaves_the_corner_to_detail_and_stays_inside_the_scored_region():
    """Issue 23.5: a zoom box sat at (0, 0). A flat image (every square ties) used to give the
    first square, the corner; it gives the centre. A square of detail flush with the corner is
    zoomed `margin` px inside (the metrics' border crop, which no score counts)."""
    flat = np.full((64, 48, 3), 0.5, np.float32)
    assert zoom_box(flat, 16) == (24, 16, 16)
    img = flat.copy()
    img[:16, :16] = np.random.default_rng(0).random((16, 16, 3))  # detail in the corner only
    assert zoom_box(img, 16) == (0, 0, 16)  # no margin asked: exactly the detail
    assert zoom_box(img, 16, margin=4) == (4, 4, 16)  # inside the border crop, on the detail
    assert zoom_box(flat[:12, :12], 16, margin=4) == (3, 3, 6)  # the margin only as it fits


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
        # issue 23.5: the lower half holds a gain (+0.28): "lowest gain", never "worst"
        ({"a": 0.73, "b": 0.62, "c": 0.28, "d": -0.40},
         [("best", "a"), ("best", "b"), ("worst", "d"), ("worst", "c")]),
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
        r"<figcaption>((?:best|worst|lowest gain): [^<]*)</figcaption>", report.html.read_text()
    )
    below = f" (even the best image is below {ref})"  # a "best" that is still a loss says so
    label = {"best": "best", "worst": "worst", "up": "lowest gain"}
    assert captions == [
        f"{label['up' if which == 'worst' and gains[name] >= 0 else which]}: {name}, PSNR-Y "
        f"gain over {ref} {gains[name]:+.2f} dB" + (below if which == "best" and gains[name] < 0 else "")
        for which, name in expected
    ]  # fmt: skip
    # each crop figure shows its image: the same figure drawn from that image's files
    for rank, (which, name) in enumerate(expected):
        shown = tmp_path / "out" / "plots" / f"crop_{which}_{rank}.png"
        again = crop_figure(
            images=[ev.image(k, name) for k in ("lq", ref, "model", "hr")],
            labels=("LQ input", ref, ev.headline, "ground truth"),
            scores=(None, 30.0, 30.0 + gains[name], None), zoom_size=8,
            path=tmp_path / f"again_{rank}.png", margin=2,  # sr2's border crop
        )  # fmt: skip
        assert shown.read_bytes() == again.read_bytes(), (which, name)


def test_report_cli_on_an_incomplete_folder_says_what_is_wrong(evaluated, tmp_path):
    """`report --eval-dir` on a folder with a missing image, a corrupt JSON file or a bad
    --train-log: exit 2 and one line naming the file, never a traceback."""
    from typer.testing import CliRunner

    from diffenhance.cli import app

    _, _, eval_dir = evaluated
    params = tmp_path / "params.yaml"
    params.write_text("{}\n")

    def run(folder: Path, *extra: str):
        res = CliRunner().invoke(
            app, ["report", "--eval-dir", str(folder), "--params", str(params), *extra]
        )
        assert res.exit_code == 2 and "Traceback" not in res.output, res.output
        return " ".join(res.output.split())  # console wrapping

    d = tmp_path / "ev"
    shutil.copytree(eval_dir, d)
    text = tmp_path / "notes.csv"
    text.write_text("hello\nworld\n")
    out = run(d, "--train-log", str(tmp_path / "none.csv"))
    assert f"--train-log {tmp_path / 'none.csv'}: no such file" in out
    out = run(d, "--train-log", str(text))
    assert f"{text}: not a train_log.csv (no loss, step column" in out
    missing = next((d / "images" / "model").glob("*.png"))
    missing.unlink()
    assert f"{missing}: file not found (report --eval-dir {d})" in run(d)
    (d / "protocol.json").write_text('{"task": ')
    assert f"{d / 'protocol.json'}: not valid JSON" in run(d)


def test_knob_bars_note_says_which_bar_each_preset_meets():
    """Each preset beside fidelity: its grain score and edge coherence with the bar and whether
    it is met; a preset without a coherence figure (an older metrics.json) gets the grain only."""
    from diffenhance.report import knob_bars_note

    m = {"preset_fidelity_psnr_y": 30.0, "preset_balanced_grain_score": 1.11,
         "preset_balanced_edge_coherence": 0.876, "preset_detail_grain_score": 0.98,
         "preset_detail_edge_coherence": 0.84, "preset_old_grain_score": 1.1}  # fmt: skip
    got = knob_bars_note(m)
    want = [
        "balanced: grain score 1.11 (bar <= 1.1: missed;",
        "edge coherence 0.88 (bar >= 0.85: met;",
        "detail: grain score 0.98 (bar <= 1.1: met;",
        "edge coherence 0.84 (bar >= 0.85: missed;",
        "old: grain score 1.10 (bar <= 1.1: met;",
    ]
    at = [got.index(w) for w in want]  # each present, in this order
    assert at == sorted(at) and "coherence" not in got[at[-1] :]
    assert knob_bars_note({"preset_fidelity_psnr_y": 30.0}) == ""
