"""The formulation comparison (`compare` stage): scoring, knob ends, checks, report, budgets."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from diffenhance.compare import (
    build_compare_report,
    checks,
    compare_formulations,
    summarise,
    train_overrides,
)
from diffenhance.config import load_config
from diffenhance.data.pairs import load_pairs
from diffenhance.evaluate import bicubic_upscale
from diffenhance.train import train_model
from tests.conftest import REPO
from tests.test_metrics import ref_psnr, ref_y
from tests.tiny import make_dataset, tiny_config

KINDS = ("regression", "indi", "residual", "sr3")


def _cfg(root: Path, *extra: str):
    return tiny_config(
        root,
        "compare.task=sr2",
        f"compare.formulations=[{','.join(KINDS)}]",
        "compare.train_steps=2",
        "compare.steps=[1,2]",
        "compare.samples=2",
        "compare.max_images=2",
        f"compare.models_dir={root / 'compare_models'}",
        f"compare.out_dir={root / 'compare'}",
        "diffusion.options.residual.predictor_channels=8",
        "train.val_every=2",
        "report.crops=1",
        *extra,
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Four tiny models, one per formulation, trained for the same 2 steps (as train_compare)."""
    root = tmp_path_factory.mktemp("compare")
    make_dataset(root, tasks=("sr2",))
    cfg = _cfg(root)
    for kind in KINDS:
        train_model(_cfg(root, *train_overrides(cfg, kind)), "sr2")
    return root


@pytest.fixture(scope="module")
def compared(trained):
    cfg = _cfg(trained)
    return cfg, compare_formulations(cfg)


def test_rows_knob_ends_and_baseline(compared):
    cfg, comp = compared
    c = comp.per_image
    # baseline and regression once per image; indi/residual/sr3: steps 1, 2 and the average
    assert len(c) == 2 * (1 + 1 + 3 * 3)
    assert set(c["formulation"]) == {"bicubic", *KINDS}
    m = comp.metrics
    assert m["n_images"] == 2
    assert m["regression_fidelity_psnr_y"] == m["regression_sharp_psnr_y"]
    for kind in ("indi", "residual", "sr3"):
        fid = c[(c["formulation"] == kind) & c["end"].str.contains("fidelity")]
        sharp = c[(c["formulation"] == kind) & c["end"].str.contains("sharp")]
        assert set(fid["steps"]) == {1} and set(fid["samples"]) == {2}
        assert set(sharp["steps"]) == {2} and set(sharp["samples"]) == {1}
        assert m[f"{kind}_fidelity_psnr_y"] == pytest.approx(fid["psnr_y"].mean(), abs=1e-5)
    # indi starts at the input without noise (options.indi.noise 0): its 1-step output is deterministic,
    # so the mean of 2 samples equals one sample
    indi1 = c[(c["formulation"] == "indi") & (c["steps"] == 1)].set_index(["image", "samples"])
    for name in set(c["image"]):
        assert indi1.loc[(name, 1), "psnr_y"] == indi1.loc[(name, 2), "psnr_y"]


def test_baseline_matches_an_independent_psnr(compared):
    """bicubic_psnr_y = mean over images of numpy PSNR on BT.601 Y with a 2 px border crop."""
    cfg, comp = compared
    pairs = load_pairs(Path(cfg.degrade.out_dir) / "sr2")
    want = []
    for p in pairs:
        a, b = ref_y(bicubic_upscale(p.lq, 2))[2:-2, 2:-2], ref_y(p.hr)[2:-2, 2:-2]
        want.append(ref_psnr(a, b))
    assert comp.metrics["bicubic_psnr_y"] == pytest.approx(np.mean(want), abs=1e-5)


def test_curves_checks_and_protocol(compared):
    cfg, comp = compared
    cur = comp.curves
    reg = cur[cur["formulation"] == "regression"]
    assert list(reg["steps"]) == [1, 2] and reg["psnr_y"].nunique() == 1  # flat line
    assert set(cur.loc[cur["formulation"] == "sr3", "steps"]) == {1, 2}
    m = comp.metrics
    assert m["check_fidelity_minus_regression_psnr_y"] == pytest.approx(
        m["residual_fidelity_psnr_y"] - m["regression_fidelity_psnr_y"], abs=1e-5
    )
    got = comp.protocol["checks"]
    assert [g["met"] for g in got] == [
        m["check_fidelity_minus_regression_psnr_y"] >= -0.3,
        m["check_fidelity_minus_bicubic_psnr_y"] >= 1.0,
        m["check_sharp_over_regression_hf_ratio"] > 1.0,
    ]
    p = comp.protocol
    assert p["default_formulation"] == "residual" and p["budget"]["train_steps"] == 2
    # what each runs (it said ddim for all): infer.sampler applies to sr3 and residual only
    assert p["sampler"] == {"regression": "direct", "indi": "indi", "residual": "ddim",
                            "sr3": "ddim"}  # fmt: skip
    assert {f: v["train_step"] for f, v in p["models"].items()} == dict.fromkeys(KINDS, 2)
    assert p["models"]["residual"]["params"] > p["models"]["regression"]["params"]  # + predictor
    assert p["threads"] == torch.get_num_threads()  # what the bits were made with
    # files the stage declares
    for f in ("metrics.json", "curves.csv", "per_image.csv", "protocol.json"):
        assert (comp.out_dir / f).is_file()
    for d in ("lq", "hr", "bicubic", "regression", "sr3_fidelity", "sr3_sharp"):
        assert len(list((comp.out_dir / "images" / d).glob("*.png"))) == 2


def test_cpu_comparison_is_bit_reproducible(compared, tmp_path):
    cfg, comp = compared
    again = compare_formulations(
        _cfg(Path(cfg.degrade.out_dir).parent, f"compare.out_dir={tmp_path}")
    )
    assert (tmp_path / "metrics.json").read_bytes() == (comp.out_dir / "metrics.json").read_bytes()
    assert again.metrics == comp.metrics


def test_comparison_runs_and_records_infer_threads(trained, tmp_path):
    """infer.threads pins the restores' CPU threads (an output's bits depend on it), as in
    evaluate; protocol.json and the report's summary say how many made the figures."""
    before = torch.get_num_threads()
    n = 1 if before != 1 else 2  # another count than the process has
    cfg = _cfg(trained, f"compare.out_dir={tmp_path}", "compare.max_images=1", f"infer.threads={n}")
    try:
        comp = compare_formulations(cfg)
    finally:
        torch.set_num_threads(before)
    assert comp.protocol["threads"] == n != before
    html = build_compare_report(comp.out_dir, cfg.report).read_text()
    assert f"cpu, {n} CPU threads" in html


def test_report_has_checks_tables_curves_and_crops(compared):
    cfg, comp = compared
    html = build_compare_report(comp.out_dir, cfg.report).read_text()
    imgs = re.findall(r'<img src="([^"]+)"', html)
    # the curves, and one crop figure per diffusion formulation for report.crops=1 image
    assert len(imgs) == 1 + 3 and all(s.startswith("data:image/png;base64,") for s in imgs)
    assert "http://" not in html and "https://" not in html
    assert html.count(">met<") + html.count(">missed<") == 3
    for kind in KINDS:
        assert f">{kind}<" in html
    plots = sorted(p.name for p in (comp.out_dir / "plots").glob("*.png"))
    assert "curves.png" in plots and sum(p.startswith("crops_") for p in plots) == 3


def test_unequal_budget_and_missing_model_are_refused(trained):
    with pytest.raises(ValueError, match=r"trained for 2 steps but compare.train_steps is 3"):
        compare_formulations(_cfg(trained, "compare.train_steps=3"))
    with pytest.raises(FileNotFoundError, match=r"train_compare@regression"):
        compare_formulations(_cfg(trained, f"compare.models_dir={trained / 'nowhere'}"))


def test_summarise_golden_values():
    """Knob ends, best step count (ties go to fewer steps) and checks on hand-made rows."""
    rows = [
        ("bicubic", "baseline", 0, 1, "fidelity,sharp", 30.0, 0.40),
        ("regression", "model", 1, 1, "fidelity,sharp", 31.0, 0.30),
        ("residual", "model", 1, 1, "", 31.5, 0.50),
        ("residual", "model", 4, 1, "", 31.5, 0.70),
        ("residual", "model", 8, 1, "sharp", 30.5, 0.90),
        ("residual", "model", 1, 4, "fidelity", 31.2, 0.35),
    ]
    df = pd.DataFrame(
        [{"image": "a", "formulation": f, "kind": k, "steps": s, "samples": n, "end": e,
          "psnr_y": p, "ssim_y": 0.9, "psnr_rgb": p - 1, "ssim_rgb": 0.8, "hf_ratio": h}
         for f, k, s, n, e, p, h in rows]
    )  # fmt: skip
    m = summarise(df, "bicubic", "residual")
    assert m["residual_fidelity_psnr_y"] == 31.2 and m["residual_sharp_hf_ratio"] == 0.9
    assert m["residual_best_steps"] == 1 and m["residual_best_psnr_y"] == 31.5
    assert m["check_fidelity_minus_regression_psnr_y"] == pytest.approx(0.2)
    assert m["check_fidelity_minus_bicubic_psnr_y"] == pytest.approx(1.2)
    assert m["check_sharp_over_regression_hf_ratio"] == pytest.approx(3.0)
    assert [c["met"] for c in checks(m, "bicubic", "residual")] == [True, True, True]
    m["check_fidelity_minus_bicubic_psnr_y"] = 0.99
    assert [c["met"] for c in checks(m, "bicubic", "residual")] == [True, False, True]


def test_dvc_stage_trains_with_exactly_the_compare_overrides():
    """dvc.yaml's train_compare command passes the same overrides as `train_overrides`."""
    stage = yaml.safe_load((REPO / "compare/dvc.yaml").read_text())["stages"]["train_compare"]
    cfg = load_config(REPO / "params.yaml")
    c = cfg.compare
    for kind in c.formulations:
        cmd = stage["do"]["cmd"].replace("${item}", kind)
        for k, v in (("task", c.task), ("models_dir", c.models_dir),
                     ("train_steps", c.train_steps), ("ema_decay", c.ema_decay)):  # fmt: skip
            cmd = cmd.replace(f"${{compare.{k}}}", str(v))
        args = [a.strip('"') for a in cmd.split()[3:]]
        assert args == train_overrides(cfg, kind)
