"""Formulations side by side: the `compare` stage (issue: beat the textbook SR3 recipe honestly).

Every formulation of `compare.formulations` is trained by the `train_compare` stage with the
same network (`model.*`), data and budget (`compare.train_steps` x `train.batch_size` crops of
`train.crop_size`), into `<compare.models_dir>/<formulation>/<task>/`. This module scores them
on the task's fixed validation pairs, beside the task's reference baseline (bicubic for SR):

* each formulation at every step count of `compare.steps`, one sample (seed k=0) per image;
  regression once (it has no steps: its row repeats at every step count in the curves);
* the two ends of the fidelity/sharpness knob: the **fidelity end** is the mean of
  `compare.samples` samples at the fewest steps (for a formulation with a detail knob, pmrf:
  its posterior mean, detail 0), the **sharp end** one sample at the most steps (detail 1);
* PSNR/SSIM under the task's RGB and Y protocols (`RestorationTask.protocols`) and the
  sharpness measure `metrics.hf_energy_ratio` (fine-detail energy relative to the truth, so a
  blurry output cannot win on PSNR alone).

Outputs in `compare.out_dir` (reports/compare/):
  metrics.json    flat numbers (DVC metrics; bit-reproducible on CPU): <f>_fidelity_psnr_y,
                  <f>_sharp_hf_ratio, <f>_best_psnr_y, <f>_best_steps, <baseline>_psnr_y, ... and
                  the issue's three checks for the default formulation (`diffusion.formulation`)
  curves.csv      mean metrics per (formulation, steps, samples)
  per_image.csv   one row per (image, formulation, steps, samples)
  protocol.json   what was compared and how (budget, parameters, sampler, seeds, protocols)
  report.html     self-contained page: targets, tables, curves, crops at both knob ends
  plots/          the figures as PNG (curves.png, crops_<image>_<formulation>.png)
"""

from __future__ import annotations

import html
import json
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from diffenhance.config import CompareConfig, Config, ReportConfig, to_dict
from diffenhance.data.pairs import Pair, load_pairs, task_degradation
from diffenhance.diffusion.formulations import get_formulation
from diffenhance.evaluate import (
    METRICS,
    SHARPNESS,
    load_model,
    mean_metric,
    sampler_label,
    score,
    spread,
    write_csv,
    write_json,
)
from diffenhance.infer import NOISE_SEEDING, set_threads
from diffenhance.io import atomic_path, read_image, write_image
from diffenhance.model import WEIGHTS_NAME, Restorer
from diffenhance.report import HF_LABEL, fmt_metric, html_page, html_table, signed_metric
from diffenhance.report_plots import crop_figure, plot_formulation_curves
from diffenhance.restoration import get_task
from diffenhance.restore import restore, sampling_spec

COLUMNS = (*METRICS, SHARPNESS)
# The bar for the default formulation (benchmarks/RESULTS.md records the figures):
FIDELITY_MARGIN_DB = -0.3  # fidelity end >= regression PSNR-Y - 0.3 dB
BASELINE_MARGIN_DB = 1.0  # fidelity end >= bicubic PSNR-Y + 1 dB


def model_path(cfg: Config, formulation: str) -> Path:
    """Where `train_compare@<formulation>` writes its model."""
    return Path(cfg.compare.models_dir) / formulation / cfg.compare.task / WEIGHTS_NAME


def train_overrides(cfg: Config, formulation: str) -> list[str]:
    """Overrides that turn the `train` stage into the comparison run of `formulation` (the same
    list dvc.yaml's `train_compare` passes on its command line)."""
    c = cfg.compare
    return [
        f"train.tasks=[{c.task}]",
        f"diffusion.formulation={formulation}",
        f"train.out_dir={Path(c.models_dir) / formulation}",
        f"train.steps={c.train_steps}",
        f"train.ema_decay={c.ema_decay}",
        "train.init_from=null",  # equal budgets: every formulation from scratch,
        "diffusion.options.pmrf.train_mean=true",  # every stage of it (pmrf's mean too)
    ]


def _budget_check(models: dict[str, Restorer], cfg: Config) -> dict[str, dict[str, Any]]:
    """{formulation: {params, train_step}}; ValueError when a model was not trained for
    `compare.train_steps` steps, for the task, or as the formulation it is filed under."""
    info = {}
    for f, r in models.items():
        step = int(json.loads(r.meta.get("step", "0")))
        path = r.meta.get("path")
        if r.diffusion_cfg.formulation != f:
            raise ValueError(f"{path}: a {r.diffusion_cfg.formulation!r} model filed as {f!r}")
        if r.task != cfg.compare.task:
            raise ValueError(
                f"{path}: trained for task {r.task!r}, compared on {cfg.compare.task!r}"
            )
        if step != cfg.compare.train_steps:
            raise ValueError(
                f"{path}: trained for {step} steps but compare.train_steps is "
                f"{cfg.compare.train_steps}; rerun `dvc repro compare/dvc.yaml` (equal budgets only)"
            )
        info[f] = {"params": sum(p.numel() for p in r.unet.parameters()), "train_step": step}
    return info


def has_knob(formulation: str) -> bool:
    """Whether steps/samples change the formulation's output (else one row, both knob ends)."""
    return get_formulation(formulation).has_knob


def _means(rows: pd.DataFrame) -> dict[str, float]:
    return {k: mean_metric(rows[k], k) for k in COLUMNS}


def summarise(
    per_image: pd.DataFrame, baseline: str, default: str, reference: str = "regression"
) -> dict[str, float]:
    """metrics.json (see the module docstring) from per_image rows; the checks compare the
    `default` formulation with the `reference` one (compare.reference) and the baseline."""
    c = per_image
    m: dict[str, float] = {"n_images": float(c["image"].nunique())}
    base = _means(c[c["formulation"] == baseline])
    m |= {f"{baseline}_{k}": v for k, v in base.items()}
    for f in c.loc[c["kind"] == "model", "formulation"].unique():
        rows = c[c["formulation"] == f]
        for end in ("fidelity", "sharp"):
            m |= {
                f"{f}_{end}_{k}": v for k, v in _means(rows[rows["end"].str.contains(end)]).items()
            }
        single = rows[rows["samples"] == 1]
        curve = {int(s): mean_metric(g["psnr_y"], "psnr_y") for s, g in single.groupby("steps")}
        best = max(curve, key=lambda s: (curve[s], -s))
        m[f"{f}_best_steps"] = float(best)
        m[f"{f}_best_psnr_y"] = curve[best]
    if default in set(c["formulation"]) and reference in set(c["formulation"]):
        d, reg = f"{default}_fidelity", f"{reference}_fidelity"
        m[f"check_fidelity_minus_{reference}_psnr_y"] = m[f"{d}_psnr_y"] - m[f"{reg}_psnr_y"]
        m[f"check_fidelity_minus_{baseline}_psnr_y"] = m[f"{d}_psnr_y"] - m[f"{baseline}_psnr_y"]
        m[f"check_sharp_over_{reference}_hf_ratio"] = (
            m[f"{default}_sharp_hf_ratio"] / m[f"{reg}_hf_ratio"]
        )
    return {k: round(v, 6) for k, v in m.items() if np.isfinite(v)}


def checks(
    metrics: dict[str, float], baseline: str, default: str, reference: str = "regression"
) -> list[dict[str, Any]]:
    """The issue's three bars for the default formulation: (what, value, bar, met)."""
    out = []
    spec = [
        (f"check_fidelity_minus_{reference}_psnr_y", FIDELITY_MARGIN_DB,
         f"{default} fidelity end PSNR-Y minus {reference} (dB)"),
        (f"check_fidelity_minus_{baseline}_psnr_y", BASELINE_MARGIN_DB,
         f"{default} fidelity end PSNR-Y minus {baseline} (dB)"),
        (f"check_sharp_over_{reference}_hf_ratio", 1.0,
         f"{default} sharp end HF ratio / {reference} HF ratio"),
    ]  # fmt: skip
    for key, bar, what in spec:
        if key in metrics:
            v = metrics[key]
            met = v >= bar if "hf_ratio" not in key else v > bar
            out.append({"check": what, "value": v, "bar": bar, "met": bool(met)})
    return out


@dataclass(frozen=True)
class Comparison:
    """What the `compare` stage wrote (see the module docstring)."""

    out_dir: Path
    metrics: dict[str, float]
    curves: pd.DataFrame
    protocol: dict[str, Any]
    per_image: pd.DataFrame


def knob_grid(formulation: str, c: CompareConfig) -> list[tuple[int, int, str]]:
    """(steps, samples, knob ends hit) scored for one formulation: every step count with one
    sample, plus the fidelity end (mean of `c.samples` at the fewest steps); a formulation
    without a knob runs once and stands for both ends."""
    if not has_knob(formulation):
        return [(1, 1, "fidelity,sharp")]
    lo, hi = min(c.steps), max(c.steps)
    grid = [(s, 1) for s in c.steps] + ([(lo, c.samples)] if c.samples > 1 else [])
    return [
        (steps, n, ",".join(e for e, hit in (("fidelity", steps == lo and n == c.samples),
                                             ("sharp", steps == hi and n == 1)) if hit))
        for steps, n in grid
    ]  # fmt: skip


def _score_pair(
    p: Pair, models: dict[str, Restorer], cfg: Config, ref: tuple[str, Callable], images: Path,
    progress: Callable[[str], None] | None,
) -> list[dict[str, Any]]:  # fmt: skip
    """per_image rows of one pair: the baseline, then every formulation on its knob grid,
    each through the restore path; writes the PNGs the report shows."""
    protocols = get_task(cfg.compare.task).protocols(cfg.degrade)
    rows: list[dict[str, Any]] = []

    def add(f: str, kind: str, steps: int, n: int, end: str, pred, dt) -> None:
        rows.append({"image": p.name, "formulation": f, "kind": kind, "steps": steps,
                     "samples": n, "end": end, **score(pred, p.hr, protocols), "seconds": dt})  # fmt: skip
        flat = kind == "baseline" or not has_knob(f)  # no knob: one output
        for folder in [f] if flat else [f"{f}_{e}" for e in end.split(",") if e]:
            write_image(images / folder / f"{p.name}.png", pred)

    write_image(images / "lq" / f"{p.name}.png", p.lq)
    write_image(images / "hr" / f"{p.name}.png", p.hr)
    t0 = time.perf_counter()
    add(ref[0], "baseline", 0, 1, "fidelity,sharp", ref[1](p.lq), time.perf_counter() - t0)
    for f, r in models.items():
        if progress:
            progress(f"compare: {p.name}: {f}")
        knob = get_formulation(f).detail_knob
        for steps, n, end in knob_grid(f, cfg.compare):
            t0 = time.perf_counter()
            # a detail knob: its fidelity end is the posterior mean (detail 0), the rest samples
            detail = (0.0 if "fidelity" in end.split(",") else 1.0) if knob else None
            spec = sampling_spec(r, cfg.infer, steps=steps, samples=n, seed=cfg.compare.seed,
                                 detail=detail)  # fmt: skip
            pred = restore(r, p.lq, spec)
            add(f, "model", steps, n, end, pred, time.perf_counter() - t0)
    return rows


def _compare_protocol(
    models: dict[str, Restorer], pairs: Sequence[Pair], cfg: Config, ref: str,
    skipped: dict[str, str], metrics: dict[str, float],
) -> dict[str, Any]:  # fmt: skip
    """protocol.json of a comparison: what was compared and how."""
    c, task = cfg.compare, cfg.compare.task
    budget = _budget_check(models, cfg)
    protocols = get_task(task).protocols(cfg.degrade)
    sampler, eta = cfg.infer.sampler, cfg.infer.eta
    lo, hi = min(c.steps), max(c.steps)
    protocol = {
        "task": task,
        "images": [p.name for p in pairs],
        "n_images": len(pairs),
        "protocols": [{"name": q.name, "description": q.describe()} for q in protocols],
        "sampler": {f: sampler_label(r, sampler) for f, r in models.items()},  # what each runs
        "eta": eta,
        "steps": list(c.steps),
        "fidelity_end": f"mean of {c.samples} samples at {lo} step(s)",
        "sharp_end": f"1 sample at {hi} steps",
        "seed": c.seed,
        "noise_seeding": NOISE_SEEDING,
        "restore_path": "restore.restore: tiled, as diffenhance enhance (infer.* besides "
        "steps, samples and seed)",
        "baseline": ref,
        "skipped_baselines": skipped,
        "default_formulation": cfg.diffusion.formulation,
        "reference_formulation": c.reference,
        "formulations": list(models),
        "without_knob": [f for f in models if not has_knob(f)],
        "budget": {
            "train_steps": c.train_steps,
            "batch_size": cfg.train.batch_size,
            "crop_size": cfg.train.crop_size,
            "lr": cfg.train.lr,
            "ema_decay": c.ema_decay,
            "model": to_dict(cfg.model),
        },
        "models": {f: {**budget[f], "path": r.meta.get("path")} for f, r in models.items()},
        "device": str(next(iter(models.values())).device),
        # CPU threads of the restores: an output's bits depend on it (infer.set_threads)
        "threads": torch.get_num_threads(),
        "checks": checks(metrics, ref, cfg.diffusion.formulation, c.reference),
    }
    return protocol


def compare_models(
    models: dict[str, Restorer],
    pairs: Sequence[Pair],
    cfg: Config,
    out_dir: str | Path,
    *,
    progress: Callable[[str], None] | None = None,
) -> Comparison:
    """Score `models` ({formulation: Restorer}) and the reference baseline on `pairs`, write
    every output file except the report (see the module docstring)."""
    c = cfg.compare
    if not pairs:
        raise ValueError(f"no validation pairs to compare on for task {c.task!r}")
    _budget_check(models, cfg)  # before any work
    set_threads(cfg.infer.threads)  # the metrics' bits depend on it, as evaluate's do
    baselines, skipped = get_task(c.task).baselines(cfg)
    ref = next(iter(baselines))
    out = Path(out_dir)
    images = out / "images"
    shutil.rmtree(images, ignore_errors=True)
    if any(r.device.type == "cpu" for r in models.values()):
        torch.use_deterministic_algorithms(True, warn_only=True)
    rows: list[dict[str, Any]] = []
    for p in pairs:
        rows += _score_pair(p, models, cfg, (ref, baselines[ref]), images, progress)
    per_image = pd.DataFrame(rows)
    metrics = summarise(per_image, ref, cfg.diffusion.formulation, c.reference)
    curves = _curves(per_image, c.steps)
    protocol = _compare_protocol(models, pairs, cfg, ref, skipped, metrics)
    write_csv(out / "per_image.csv", per_image)
    write_csv(out / "curves.csv", curves)
    write_json(out / "metrics.json", metrics)
    write_json(out / "protocol.json", protocol)
    return Comparison(out, metrics, curves, protocol, per_image)


def _curves(per_image: pd.DataFrame, steps: Sequence[int]) -> pd.DataFrame:
    """Mean metrics per (formulation, steps, samples); formulations without a knob and the
    baseline, which have no steps, repeat at every step count (one line on a steps axis)."""
    out = []
    for (f, kind, st, n), g in per_image.groupby(
        ["formulation", "kind", "steps", "samples"], sort=False
    ):
        flat = kind == "baseline" or not has_knob(f)
        for s in steps if flat else [st]:
            out.append({"formulation": f, "steps": int(s), "samples": int(n), **_means(g)})
    return pd.DataFrame(out)


def load_models(cfg: Config) -> dict[str, Restorer]:
    """{formulation: Restorer} of every trained comparison model; FileNotFoundError names the
    missing one and the stage that makes it."""
    models = {}
    for f in cfg.compare.formulations:
        path = model_path(cfg, f)
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: missing; run `dvc repro compare/dvc.yaml:train_compare@{f}` first"
            )
        models[f] = load_model(path, cfg)
    return models


def compare_formulations(cfg: Config, **kw: Any) -> Comparison:
    """The `compare` stage: every formulation's model on the task's validation pairs (at most
    `compare.max_images`, evenly spaced by name), into `compare.out_dir`."""
    cfg = task_degradation(cfg, cfg.compare.task)  # its scale as degrade recorded it
    pairs = spread(load_pairs(Path(cfg.degrade.out_dir) / cfg.compare.task), cfg.compare.max_images)
    return compare_models(load_models(cfg), pairs, cfg, cfg.compare.out_dir, **kw)


def load_comparison(out_dir: str | Path) -> Comparison:
    """Read what `compare_models` wrote; FileNotFoundError names the missing file."""
    d = Path(out_dir)
    for f in ("metrics.json", "curves.csv", "protocol.json", "per_image.csv"):
        if not (d / f).is_file():
            raise FileNotFoundError(f"{d / f}: missing; run the `compare` stage first")
    return Comparison(
        d,
        json.loads((d / "metrics.json").read_text()),
        pd.read_csv(d / "curves.csv"),
        json.loads((d / "protocol.json").read_text()),
        pd.read_csv(d / "per_image.csv", keep_default_na=False, na_values=[""]),
    )


def comparison_image(comp: Comparison, kind: str, name: str) -> np.ndarray:
    """images/<kind>/<name>.png (kind: lq, hr, the baseline, regression, or
    <formulation>_<fidelity|sharp>)."""
    return read_image(comp.out_dir / "images" / kind / f"{name}.png")


# ----------------------------------------------------------------------------- the report


def _end_psnr(comp: Comparison, name: str, f: str, end: str) -> float:
    c = comp.per_image
    rows = c[(c["image"] == name) & (c["formulation"] == f) & c["end"].str.contains(end)]
    return float(rows["psnr_y"].iloc[0])


def _samplers(s: str | dict[str, str]) -> str:
    """protocol.json's sampler: {formulation: what it runs} (one name in older files)."""
    return s if isinstance(s, str) else ", ".join(f"{f}: {name}" for f, name in s.items())


def _summary(comp: Comparison) -> list[tuple[str, str]]:
    p, b = comp.protocol, comp.protocol["budget"]
    items = [
        ("task", p["task"]),
        ("images", f"{p['n_images']}: {', '.join(p['images'])}"),
        *((f"protocol {q['name']}", q["description"]) for q in p["protocols"]),
        (
            "sampler",
            f"{_samplers(p['sampler'])} (eta {p['eta']}), steps {', '.join(map(str, p['steps']))}",
        ),
        ("fidelity end", p["fidelity_end"]),
        ("sharp end", p["sharp_end"]),
        ("noise seeding", f"seed {p['seed']}; {p['noise_seeding']}"),
        (
            "training budget (each)",
            f"{b['train_steps']} steps x batch {b['batch_size']} x "
            f"{b['crop_size']} px crops, lr {b['lr']}, EMA {b['ema_decay']}",
        ),  # fmt: skip
        (
            "network",
            ", ".join(f"{f} {m['params'] / 1e6:.2f}M params" for f, m in p["models"].items()),
        ),
        ("default formulation", f"{p['default_formulation']} (diffusion.formulation)"),
        ("baseline", p["baseline"]),
        ("device", p["device"] + (f", {p['threads']} CPU threads" if "threads" in p else "")),
    ]
    items += [(f"{k} skipped", v) for k, v in p.get("skipped_baselines", {}).items()]
    return items


def _roles(p: dict[str, Any]) -> tuple[str, str, set[str]]:
    """(reference formulation, default formulation, formulations without a knob) of a protocol
    (older protocol.json files: regression is the reference and the one without a knob)."""
    reference = p.get("reference_formulation", "regression")
    return reference, p["default_formulation"], set(p.get("without_knob", [reference]))


def _checks_html(p: dict[str, Any]) -> list[str]:
    """The bar for the default formulation: each check measured, met or missed."""
    if not p["checks"]:
        return []
    esc = html.escape
    return [f"<h2>The bar for the default ({esc(p['default_formulation'])})</h2>", html_table(
        ["check", "measured", "bar", "result"],
        [[esc(c["check"]), f"{c['value']:+.3f}" if "dB" in c["check"] else f"{c['value']:.3f}",
          f"{c['bar']:+.2f}" if "dB" in c["check"] else f"> {c['bar']:.2f}",
          '<span class="pos">met</span>' if c["met"] else '<span class="neg">missed</span>']
         for c in p["checks"]],
    )]  # fmt: skip


def _ends_html(comp: Comparison) -> list[str]:
    """Both knob ends of every formulation against the baseline and the reference."""
    p, m, esc = comp.protocol, comp.metrics, html.escape
    ref = p["baseline"]
    reference, default, no_knob = _roles(p)
    rows, cls = [], []
    reg = m.get(f"{reference}_fidelity_psnr_y")
    for f in [ref, *p["formulations"]]:
        ends = [("fidelity", "fidelity_"), ("sharp", "sharp_")]
        if f == ref or f in no_knob:  # one output, no knob
            ends = [("-", "" if f == ref else "fidelity_")]
        for end, key in ends:
            psnr = m[f"{f}_{key}psnr_y"]
            rows.append([esc(f), end, fmt_metric("psnr_y", psnr),
                         signed_metric("psnr_y", psnr - m[f"{ref}_psnr_y"]),
                         signed_metric("psnr_y", psnr - reg) if reg is not None else "-",
                         fmt_metric("ssim_y", m[f"{f}_{key}ssim_y"]),
                         fmt_metric("hf_ratio", m.get(f"{f}_{key}hf_ratio"))])  # fmt: skip
            cls.append("head" if f == default else "")
    best = [[esc(f), str(int(m[f"{f}_best_steps"])), fmt_metric("psnr_y", m[f"{f}_best_psnr_y"])]
            for f in p["formulations"]]  # fmt: skip
    return [
        "<h2>Both ends of the knob (mean over images)</h2>",
        html_table(
            [
                "formulation",
                "end",
                "PSNR Y (dB)",
                f"vs {ref}",
                f"vs {reference}",
                "SSIM Y",
                HF_LABEL,
            ],
            rows,
            left=2,
            cls=cls,
        ),  # fmt: skip
        "<h2>Best step count (single sample, by PSNR-Y)</h2>",
        html_table(["formulation", "steps", "PSNR Y (dB)"], best),
        '<p class="note">Every formulation trains the same U-Net (residual adds its small '
        "predictor) for the same steps, batch and crops. Sharpness is the fine-detail energy of "
        "the Y channel relative to the ground truth (metrics.hf_energy_ratio): a blurry output "
        "scores below 1 however high its PSNR. PSNR is averaged in dB, capped at 100 dB.</p>",
    ]


def _crop_figures(comp: Comparison, cfg: ReportConfig, plots: Path) -> list[tuple[Path, str]]:
    """Per image and formulation with a knob: LQ | baseline | reference | both ends | truth."""
    p = comp.protocol
    ref = p["baseline"]
    reference, _, no_knob = _roles(p)
    crops = []
    for name in spread(p["images"], cfg.crops) if cfg.crops else []:
        for f in [f for f in p["formulations"] if f not in no_knob]:
            # (image folder, label, per_image formulation and end for the PSNR-Y under it)
            cols = [(ref, ref, ref, "fidelity")]
            if reference in p["formulations"]:
                cols.append((reference, reference, reference, "fidelity"))
            cols += [(f"{f}_{e}", f"{f}: {e} end", f, e) for e in ("fidelity", "sharp")]
            kinds = ["lq", *(c[0] for c in cols), "hr"]
            labels = ["LQ input", *(c[1] for c in cols), "ground truth"]
            scores = [None, *(_end_psnr(comp, name, c[2], c[3]) for c in cols), None]
            path = crop_figure(
                images=[comparison_image(comp, k, name) for k in kinds], labels=labels,
                scores=scores, zoom_size=cfg.zoom_size, path=plots / f"crops_{name}_{f}.png",
            )  # fmt: skip
            crops.append((path, f"{name}: {f} at both ends of the knob ({p['fidelity_end']}; "
                                f"{p['sharp_end']})"))  # fmt: skip
    return crops


def build_compare_report(comp_dir: str | Path, cfg: ReportConfig) -> Path:
    """report.html and plots/ for the comparison in `comp_dir` (written beside it): the issue's
    checks, both knob ends of every formulation, the curves, and crops of `cfg.crops` images
    (LQ | baseline | reference | fidelity end | sharp end | truth) per formulation."""
    comp = load_comparison(comp_dir)
    p, esc = comp.protocol, html.escape
    plots = comp.out_dir / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    for old in plots.glob("*.png"):
        old.unlink()
    parts = [f"<h1>Formulations compared: {esc(p['task'])}</h1>", "<h2>Summary</h2>",
             html_table(["", ""], [[esc(k), esc(v)] for k, v in _summary(comp)], left=2)]  # fmt: skip
    parts += _checks_html(p) + _ends_html(comp)
    flat = [p["baseline"], *sorted(_roles(p)[2])]
    figures = {"Quality and sharpness vs sampler steps": [(
        plot_formulation_curves(comp.curves, flat, plots / "curves.png"),
        f"single samples per formulation; dashed: {', '.join(flat)} (no steps); "
        f"hollow diamond: {p['fidelity_end']}",
    )]}  # fmt: skip
    figures["Crops at both ends of the knob (zoomed region outlined)"] = _crop_figures(
        comp, cfg, plots
    )
    out = comp.out_dir / "report.html"
    with atomic_path(out) as tmp:
        tmp.write_text(html_page(f"diffenhance: formulations on {p['task']}", parts, figures),
                       encoding="utf-8")  # fmt: skip
    return out


__all__ = [
    "Comparison",
    "build_compare_report",
    "checks",
    "compare_models",
    "compare_formulations",
    "comparison_image",
    "load_comparison",
    "load_models",
    "model_path",
    "summarise",
    "train_overrides",
]
