"""PSNR/SSIM of a trained restorer against classical baselines (the `evaluate` stage).

The model runs through the one restore path (`restore.restore`, tiled, as `enhance` runs it):
the headline is the resolved `SamplingSpec` (`infer.*`, null steps/samples from the checkpoint's
recommendation), so the headline image is exactly what `diffenhance enhance` writes for the same
params. Around it, the steps curve adds every count of `evaluate.steps`, once per seed of
`evaluate.seeds` (the spec's seed; `evaluate.average_samples`, when set, overrides the samples).
The task's baselines (`RestorationTask.baselines`, `diffenhance.restoration`) run on the same
LQ input, e.g.:

* SR (sr2, sr4, blind): `bicubic` (Keys a=-0.5, as MATLAB imresize) and `lanczos` (Lanczos-3,
  Pillow) upscaling of the LQ image;
* denoise / jpeg: `input`, the degraded image itself; for denoise also `cbm3d` (colour BM3D,
  Dabov et al. 2007) when the optional `bm3d` package is installed - otherwise it is skipped
  and the reason recorded in protocol.json and the report;
* inpaint: `telea` (OpenCV) and the pre-filled input.

Every result is scored under the task's protocols (`RestorationTask.protocols`: RGB and BT.601
Y, border crop = scale for SR, data range 1.0), on the float outputs (not 8-bit files), and
where the task has one, inside its scored region (`scored_region`; inpainting: the hole).

Determinism: each tile's noise is its crop of noise fields seeded with (seed, image content key)
(`infer.NOISE_SEEDING`), the same for every step count and independent of the image order,
so on CPU the same params give a bit-identical metrics.json. Timings are kept out of
metrics.json (they never repeat) and go to timing.json.

Outputs in `<out_dir>/` (`reports/<task>/` for the stage):
  per_image.csv      one row per (image, method[, steps, seed]): psnr/ssim rgb/y, hf_ratio
                     (sharpness: metrics.hf_energy_ratio, 1 = as much fine detail as the truth),
                     err_std_flat_y / err_std_y (where the error sits), edge_coherence
                     (metrics.edge_coherence, 1 = edges as orderly as the truth's), seconds
  metrics.json       flat numeric keys, e.g. model_ddim8_psnr_y, bicubic_psnr_y,
                     delta_psnr_y_vs_bicubic (DVC metrics; bit-reproducible on CPU)
  timing.json        seconds_per_image of every method (DVC metrics; not reproducible)
  psnr_vs_steps.csv  mean metrics per step count (DVC plot)
  protocol.json      what was measured: protocols, sampler, steps, seeds, images, skipped baselines
  images/            lq/, hr/, model/ (headline step count, first seed) and one folder per baseline,
                     8-bit PNGs for the report; uncertainty/<name>.png (colour map) and .npy (std)

They are made in `.evaluate-partial/` inside the folder and moved in when all are written: a
run that fails or is killed leaves the previous evaluation whole (the next run sweeps it).

Uncertainty (`evaluate.uncertainty_samples` = N >= 2; 0 = off): per pair, the std map of the
headline's spec at N samples (`restore.restore_with_uncertainty`, first seed) and its Pearson and
Spearman correlation with the headline output's per-pixel |error| (mean over RGB, the protocol's
border crop): `uncertainty_pearson` / `uncertainty_spearman` / `uncertainty_std_mean` in
metrics.json (means over images), per image in protocol.json["uncertainty"]. A model whose
samples cannot differ (regression; indi with options.indi.noise 0) is skipped with a note.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from diffenhance.config import Config
from diffenhance.data.folder import iter_image_files
from diffenhance.data.pairs import (
    Pair,
    load_pairs,
    make_pair,
    pairs_csv,
    task_degradation,
    task_pair,
)
from diffenhance.diffusion.formulations import get_formulation
from diffenhance.infer import NOISE_SEEDING, set_threads
from diffenhance.infer import autocast_dtype as infer_autocast_dtype
from diffenhance.io import atomic_path, file_sha256, read_image, write_image
from diffenhance.metrics import (
    Protocol,
    edge_coherence,
    error_std_flat,
    grain_score,
    hf_energy_ratio,
    masked_psnr,
    masked_ssim,
    mean_psnr,
)
from diffenhance.model import (
    WEIGHTS_NAME,
    Restorer,
    detail_end,
    load_restorer,
    presets,
    training_record,
)
from diffenhance.restoration import Baseline, RestorationTask, get_task, image_of
from diffenhance.restoration.baselines import (
    bicubic_upscale,
    bm3d_missing_reason,
    cbm3d_denoise,
    lanczos_upscale,
    telea_inpaint,
)
from diffenhance.restore import (
    SamplingSpec,
    implied_detail,
    restore,
    restore_with_uncertainty,
    sampling_spec,
    uncertainty_problem,
)
from diffenhance.uncertainty import error_correlation, scale_info, write_map, write_std

METRICS: tuple[str, ...] = ("psnr_rgb", "ssim_rgb", "psnr_y", "ssim_y")
# Tasks with a scored region (`RestorationTask.scored_region`; inpainting: the hole): RGB PSNR
# / SSIM inside it.
MASK_METRICS: tuple[str, ...] = ("psnr_mask", "ssim_mask")
# Sharpness beside fidelity (metrics.hf_energy_ratio, Y, 1 = as much fine detail as the truth):
# reported per method, no deltas - more is not better.
SHARPNESS = "hf_ratio"
# Where the error sits (metrics.error_std_flat, Y, 0-255): on the flattest 30% of the truth's
# pixels and on all; a preset's grain score compares both against the fidelity preset.
GRAIN: tuple[str, ...] = ("err_std_flat_y", "err_std_y")
# Whether added detail has the shape of real edges (metrics.edge_coherence, Y): the output's
# structure-tensor coherence over the truth's on the truth's 20% most structured pixels; below
# about 0.85 it is speckle or jaggies along edges, which the grain score does not see.
COHERENCE = "edge_coherence"
PRESET_PREFIX = "preset_"  # method name of a named preset: preset_fidelity, preset_detail
MODEL_DIR = "model"  # images/<MODEL_DIR>/: the headline model's outputs
UNCERTAINTY_DIR = "uncertainty"  # images/<UNCERTAINTY_DIR>/<name>.png|.npy: the std maps


# ----------------------------------------------------------------------------- baselines


def baselines_for_task(
    task: str | RestorationTask, cfg: Config
) -> tuple[dict[str, Baseline], dict[str, str]]:
    """({name: lq HxWxC -> HR-size HxWx3}, {skipped name: reason}) for `task`: its own
    `RestorationTask.baselines` (the first is the report's reference)."""
    return get_task(task).baselines(cfg)


# ----------------------------------------------------------------------------- the model


def model_key(sampler: str, steps: int, detail: float = 1.0) -> str:
    """Method name of the model at a step count, e.g. 'model_ddim8' ('model_euler1_d0' at
    detail 0, for a formulation with a detail knob); `sampler` is the formulation's
    `sampler_label`, the sampler it actually runs."""
    return f"model_{sampler}{steps}" + ("" if detail == 1.0 else f"_d{detail:g}")


# ----------------------------------------------------------------------------- scoring


def score(
    pred: np.ndarray, hr: np.ndarray, protocols: Sequence[Protocol], mask: np.ndarray | None = None
) -> dict[str, float]:
    """{psnr_rgb, ssim_rgb, psnr_y, ssim_y, hf_ratio, err_std_flat_y, err_std_y,
    edge_coherence} of one HxWx3 [0,1] prediction (PSNR may be inf for identical images;
    hf_ratio inf/nan when the truth has no fine detail; the error stds:
    `metrics.error_std_flat`, 0-255; `metrics.edge_coherence`), and with
    an inpainting `mask` (HxW, 1 = hole) psnr_mask / ssim_mask: RGB inside the hole."""
    out = {}
    for p in protocols:
        out[f"psnr_{p.name}"] = float(p.psnr(pred, hr)[0])
        out[f"ssim_{p.name}"] = float(p.ssim(pred, hr)[0])
    if mask is not None:
        out["psnr_mask"] = float(masked_psnr(pred, hr, mask)[0])
        out["ssim_mask"] = float(masked_ssim(pred, hr, mask)[0])
    out[SHARPNESS] = float(hf_energy_ratio(pred, hr, crop=protocols[0].crop)[0])
    flat, whole = error_std_flat(pred, hr, crop=protocols[0].crop)
    out[GRAIN[0]], out[GRAIN[1]] = float(flat[0]), float(whole[0])
    out[COHERENCE] = float(edge_coherence(pred, hr, crop=protocols[0].crop)[0])
    return out


def mean_metric(values: pd.Series, metric: str) -> float:
    """Mean over images: PSNR in dB capped per image (`metrics.mean_psnr`), sharpness over the
    images where it is defined (NaN when none), the rest arithmetic."""
    if metric == SHARPNESS:  # mean over the images where it is defined
        v = values.to_numpy(np.float64)
        v = v[np.isfinite(v)]
        return float(v.mean()) if v.size else float("nan")
    return mean_psnr(values) if metric.startswith("psnr") else float(np.mean(values))


def metric_columns(per_image: pd.DataFrame) -> tuple[str, ...]:
    """The fidelity metrics scored in `per_image`: METRICS, plus MASK_METRICS for inpainting."""
    return (*METRICS, *(k for k in MASK_METRICS if k in per_image.columns))


def summarise(per_image: pd.DataFrame, headline: str, baselines: Sequence[str]) -> dict[str, float]:
    """Flat numeric metrics from per_image rows (see the module docstring for the keys).

    Means over images (and seeds); PSNR capped at 100 dB per image (`metrics.mean_psnr`).
    Deltas are the headline model minus each baseline. Sharpness (hf_ratio) is left out where
    it is undefined for every image (no NaN in metrics.json)."""
    m: dict[str, float] = {"n_images": float(per_image["image"].nunique())}
    metrics = metric_columns(per_image)
    for method, rows in per_image.groupby("method", sort=False):
        for k in metrics:
            m[f"{method}_{k}"] = mean_metric(rows[k], k)
        if SHARPNESS in rows and math.isfinite(hf := mean_metric(rows[SHARPNESS], SHARPNESS)):
            m[f"{method}_{SHARPNESS}"] = hf
        if rows["seed"].nunique() > 1:  # spread of the per-seed means
            for k in metrics:
                per_seed = [mean_metric(g[k], k) for _, g in rows.groupby("seed")]
                m[f"{method}_{k}_seed_std"] = float(np.std(per_seed))
        for k in (*GRAIN, COHERENCE):
            if k in rows:
                m[f"{method}_{k}"] = float(np.mean(rows[k]))
    for k in (*metrics, SHARPNESS, *GRAIN, COHERENCE):
        if f"{headline}_{k}" in m:
            m[f"model_{k}"] = m[f"{headline}_{k}"]
    m |= grain_scores(m)
    for b in baselines:
        for k in metrics:
            m[f"delta_{k}_vs_{b}"] = m[f"{headline}_{k}"] - m[f"{b}_{k}"]
    return {k: round(v, 6) for k, v in m.items()}


def grain_scores(m: dict[str, float]) -> dict[str, float]:
    """{preset_<p>_grain_score}: for each preset p beside fidelity, (flat error std of p /
    of fidelity) / (whole-image error std of p / of fidelity), from the means in `m`. About 1
    when p's extra error sits where the image has detail (a posterior sample), above 1 when it
    is grain in flat areas (issue 21's bar: at most 1.1)."""
    f = f"{PRESET_PREFIX}fidelity"
    out: dict[str, float] = {}
    if f"{f}_{GRAIN[0]}" not in m:
        return out
    for key in list(m):
        if not (key.startswith(PRESET_PREFIX) and key.endswith(f"_{GRAIN[0]}")):
            continue
        p = key[: -len(GRAIN[0]) - 1]
        if p == f:
            continue
        ref_flat, ref_all = m[f"{f}_{GRAIN[0]}"], m[f"{f}_{GRAIN[1]}"]
        if ref_flat > 0 and ref_all > 0 and m[f"{p}_{GRAIN[1]}"] > 0:
            out[f"{p}_grain_score"] = grain_score(m[key], m[f"{p}_{GRAIN[1]}"], ref_flat, ref_all)
    return out


# ----------------------------------------------------------------------------- evaluation


EVAL_FILES = ("metrics.json", "timing.json", "protocol.json", "per_image.csv", "psnr_vs_steps.csv")
STAGING_DIR = ".evaluate-partial"  # inside the output folder: a run in progress (evaluate_pairs)


@dataclass(frozen=True)
class Evaluation:
    """Everything an evaluation wrote (see the module docstring), as `evaluate_pairs` returns it
    and `load_evaluation` reads it back."""

    dir: Path
    metrics: dict[str, float]
    timing: dict[str, float]
    protocol: dict[str, Any]
    per_image: pd.DataFrame
    curve: pd.DataFrame

    @property
    def headline(self) -> str:
        return self.protocol["headline_method"]

    @property
    def baselines(self) -> list[str]:
        return list(self.protocol["baselines"])

    def image(self, kind: str, name: str) -> np.ndarray:
        """images/<kind>/<name>.png as float32 HxWx3 in [0, 1] (kind: lq, hr, model, a baseline)."""
        return read_image(self.dir / "images" / kind / f"{name}.png")


def load_evaluation(eval_dir: str | Path) -> Evaluation:
    """Read an evaluation folder; FileNotFoundError names the missing file, ValueError a
    JSON file that does not parse."""
    d = Path(eval_dir)
    for f in EVAL_FILES:
        if not (d / f).is_file():
            raise FileNotFoundError(
                f"{d / f}: missing; run the `evaluate` stage (or `diffenhance evaluate`) first"
            )

    def read(f: str) -> Any:
        try:
            return json.loads((d / f).read_text())
        except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
            raise ValueError(f"{d / f}: not valid JSON ({e}); rerun evaluate") from None

    per_image = pd.read_csv(d / "per_image.csv", keep_default_na=False, na_values=[""])
    return Evaluation(d, read("metrics.json"), read("timing.json"), read("protocol.json"),
                      per_image, pd.read_csv(d / "psnr_vs_steps.csv"))  # fmt: skip


def write_json(path: Path, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_csv(path: Path, df: pd.DataFrame) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


def _device(cfg: Config) -> torch.device:
    from diffenhance.infer import resolve_device

    return resolve_device(cfg.infer.device)


@dataclass(frozen=True)
class _Plan:
    """What one evaluation runs: the headline spec, the step sweep, protocols and baselines."""

    task: RestorationTask
    scale: int
    head: SamplingSpec  # what enhance runs (seed: evaluate.seeds[0] for the headline image)
    sweep: list[int]
    sweep_detail: float  # the detail the steps curve runs at (the knob's detail end)
    presets: dict[str, SamplingSpec]  # the model's named presets (model.presets), first seed
    seeds: tuple[int, ...]
    protocols: Sequence[Protocol]
    baselines: dict[str, Callable]
    skipped: dict[str, str]
    uncertainty: SamplingSpec | None  # the headline at evaluate.uncertainty_samples, or None
    uncertainty_skipped: str | None  # why there is no uncertainty evaluation
    sampler: str  # what the formulation runs for head.sampler (`Formulation.sampler_label`)

    @property
    def headline(self) -> str:
        return model_key(self.sampler, self.head.steps, self.head.detail)


def sampler_label(r: Restorer, sampler: str) -> str:
    """What `r`'s formulation runs for `infer.sampler` = `sampler`, as reports name it."""
    return get_formulation(r.diffusion_cfg.formulation).sampler_label(sampler)


def _plan(r: Restorer, task: RestorationTask, cfg: Config, n_pairs: int) -> _Plan:
    """Check the model fits `task` and resolve what to run; ValueError otherwise."""
    e, s = cfg.evaluate, task.scale(cfg.degrade)
    if r.task != task.name or r.scale != s:
        raise ValueError(
            f"the model was trained for task {r.task!r} (scale {r.scale}) but task "
            f"{task.name!r} (scale {s}) is evaluated; pass the matching --task / checkpoint"
        )
    if not n_pairs:
        raise ValueError(f"no images to evaluate for task {task.name!r}")
    # seed: the headline image and figures are made at evaluate.seeds[0], not infer.seed (the
    # spec recorded as protocol.json's `sampling` said infer.seed)
    head = sampling_spec(r, cfg.infer, sampler=e.sampler, samples=e.average_samples,
                         seed=e.seeds[0])  # fmt: skip
    named = {
        name: sampling_spec(r, replace(cfg.infer, preset=name, steps=None, samples=None,
                                       detail=None), sampler=e.sampler, seed=e.seeds[0])
        for name in presets(r)
    }  # fmt: skip
    # the steps curve runs where steps matter: at the detail end of a detail knob
    sweep_detail = head.detail or detail_end(r)
    # no measured knob: the one preset is the recommendation, the headline, unless steps alone
    # moved the headline to the knob's far end (then the preset, the mean, is scored beside it)
    if len(named) < 2 and implied_detail(r, cfg.infer) is None:
        named = {}
    baselines, skipped = task.baselines(cfg)
    # the spread of samples at the knob's far end (at detail 0 every sample is the mean)
    unc = replace(head, samples=e.uncertainty_samples, seed=e.seeds[0],
                  detail=sweep_detail)  # fmt: skip
    why = uncertainty_problem(r, unc) if e.uncertainty_samples else "evaluate.uncertainty_samples=0"
    return _Plan(
        task, s, head, sorted({*e.steps, head.steps}), sweep_detail, named, tuple(e.seeds),
        task.protocols(cfg.degrade), baselines, skipped,
        None if why else unc, why, sampler_label(r, head.sampler),
    )  # fmt: skip


def _score_pair(
    r: Restorer, p: Pair, plan: _Plan, images: Path
) -> tuple[list[dict[str, Any]], np.ndarray]:
    """(per_image rows of one pair (baselines, then the model at every step count and seed),
    the headline output); writes its PNGs under `images` (the headline as enhance writes it)."""
    rows: list[dict[str, Any]] = []
    headline = None
    mask = p.mask  # inpaint: also scored in the hole
    write_image(images / "lq" / f"{p.name}.png", image_of(p.lq))
    write_image(images / "hr" / f"{p.name}.png", p.hr)
    if mask is not None:
        write_image(images / "mask" / f"{p.name}.png", mask)
    for name, fn in plan.baselines.items():
        t0 = time.perf_counter()
        pred = fn(p.lq)
        dt = time.perf_counter() - t0
        rows.append({"image": p.name, "method": name, "kind": "baseline", "sampler": "",
                     "steps": None, "seed": None, **score(pred, p.hr, plan.protocols, mask),
                     "seconds": dt})  # fmt: skip
        write_image(images / name / f"{p.name}.png", pred)
    done: dict[SamplingSpec, tuple[np.ndarray, dict[str, float], float]] = {}

    def run(spec: SamplingSpec) -> tuple[np.ndarray, dict[str, float], float]:
        """(output, scores, seconds) of `spec`; a spec already run (a preset that is the
        headline's) is not run again: the same spec gives the same bits."""
        if spec not in done:
            t0 = time.perf_counter()
            out = restore(r, p.lq, spec)
            dt = time.perf_counter() - t0
            done[spec] = out, score(out, p.hr, plan.protocols, mask), dt
        return done[spec]

    sampler = plan.sampler
    runs = [(steps, plan.sweep_detail) for steps in plan.sweep]
    if (plan.head.steps, plan.head.detail) not in runs:  # a headline off the curve (detail 0)
        runs.insert(0, (plan.head.steps, plan.head.detail))
    for steps, detail in runs:
        kind = "model" if detail == plan.sweep_detail else "headline"
        for seed in plan.seeds:
            pred, s, dt = run(replace(plan.head, steps=steps, seed=seed, detail=detail))
            rows.append({"image": p.name, "method": model_key(sampler, steps, detail),
                         "kind": kind, "sampler": sampler, "steps": steps, "seed": seed,
                         "detail": detail, **s, "seconds": dt})  # fmt: skip
            if (steps, detail, seed) == (plan.head.steps, plan.head.detail, plan.seeds[0]):
                write_image(images / MODEL_DIR / f"{p.name}.png", pred)  # what enhance writes
                headline = pred
    for name, spec in plan.presets.items():
        pred, s, dt = run(spec)
        rows.append({"image": p.name, "method": f"{PRESET_PREFIX}{name}", "kind": "preset",
                     "sampler": sampler, "steps": spec.steps, "seed": spec.seed,
                     "detail": spec.detail, **s, "seconds": dt})  # fmt: skip
        write_image(images / f"{PRESET_PREFIX}{name}" / f"{p.name}.png", pred)
    assert headline is not None
    return rows, headline


def _uncertainty_row(
    r: Restorer, p: Pair, plan: _Plan, headline: np.ndarray, images: Path
) -> dict[str, Any]:
    """One pair's std map (`plan.uncertainty`: the headline's spec at N samples) written under
    images/uncertainty/, and its correlation with the headline output's |error|."""
    assert plan.uncertainty is not None
    t0 = time.perf_counter()
    _, std = restore_with_uncertainty(r, p.lq, plan.uncertainty)
    dt = time.perf_counter() - t0
    write_map(images / UNCERTAINTY_DIR / f"{p.name}.png", std)
    write_std(images / UNCERTAINTY_DIR / f"{p.name}.npy", std)
    corr = error_correlation(std, headline, p.hr, plan.protocols[0].crop, p.mask)
    return {"image": p.name, **corr, "seconds": dt}


def _finite_mean(values: Sequence[float]) -> float | None:
    v = [x for x in values if math.isfinite(x)]
    return float(np.mean(v)) if v else None


def _uncertainty_summary(plan: _Plan, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """protocol.json["uncertainty"]: how the maps were made and each image's correlations (NaN,
    a constant map or error, as null), with their means; or why it was skipped."""
    if plan.uncertainty is None:
        return {"skipped": plan.uncertainty_skipped}
    keys = ("pearson", "spearman", "std_mean", "abs_error_mean")
    per_image = {
        row["image"]: {k: round(row[k], 6) if math.isfinite(row[k]) else None for k in keys}
        for row in rows
    }
    means = {k: _finite_mean([row[k] for row in rows]) for k in keys}
    return {
        **scale_info(plan.uncertainty.samples),
        "sampling": plan.uncertainty.describe(),
        "error": "per pixel: mean over RGB of |headline output - ground truth|",
        "correlation": "Pearson and Spearman between the std map and the error over the "
        f"pixels of each image ({plan.protocols[0].crop} px border crop; inpainting: the pixels "
        "of the hole), then the mean over images",
        "mean": {k: None if v is None else round(v, 6) for k, v in means.items()},
        "per_image": per_image,
    }


def _timing(per_image: pd.DataFrame, headline: str) -> dict[str, float]:
    """timing.json: seconds per image of the headline and of every method."""
    return {
        "seconds_per_image": round(float(per_image.query("method == @headline")["seconds"].mean()), 4),
        **{f"{m}_seconds_per_image": round(float(g["seconds"].mean()), 4)
           for m, g in per_image.groupby("method", sort=False)},
    }  # fmt: skip


def _curve(per_image: pd.DataFrame) -> pd.DataFrame:
    """psnr_vs_steps.csv: mean metrics of the model per step count."""
    model_rows = per_image[per_image["kind"] == "model"]
    return pd.DataFrame(
        [{"steps": int(st), **{k: mean_metric(g[k], k)
                               for k in (*metric_columns(per_image), SHARPNESS)},
          **{k: float(g[k].mean()) for k in (*GRAIN, COHERENCE)}}
         for st, g in model_rows.groupby("steps")]
    )  # fmt: skip


def _protocol(
    r: Restorer, plan: _Plan, pairs: Sequence[Pair], cfg: Config, source: dict[str, Any]
) -> dict[str, Any]:
    """protocol.json: what was measured and how (the headline's SamplingSpec included)."""
    autocast = infer_autocast_dtype(cfg.infer.precision, r.device)  # as enhancement runs
    return {
        "task": plan.task.name,
        "scale": plan.scale,
        "protocols": [
            {"name": p.name, "y_channel": p.y_channel, "crop": p.crop, "description": p.describe()}
            for p in plan.protocols
        ],
        "sampler": plan.sampler,
        "eta": plan.head.eta,
        "steps": plan.sweep,
        "steps_detail": plan.sweep_detail,
        "headline_steps": plan.head.steps,
        "presets": {name: s.describe() for name, s in plan.presets.items()},
        "grain": "err_std_flat_y / err_std_y: std of the Y error (0-255, border crop) on the "
        "30% of pixels where the truth's local gradient is lowest / on all pixels; "
        "preset_<p>_grain_score = (flat std ratio) / (whole-image std ratio), p over fidelity",
        "edge_coherence": "mean structure-tensor coherence of the output's Y (Sobel gradients, "
        "Gaussian sigma 1.5 px, border crop) over the truth's, on the 20% of pixels with the "
        "most structure in the truth: about 1 for real edges and texture, below 0.85 speckle "
        "or jaggies along edges",
        "headline_method": plan.headline,
        "seeds": list(plan.seeds),
        "average_samples": plan.head.samples,
        "sampling": plan.head.describe(),  # the headline's SamplingSpec (seed: evaluate.seeds[0])
        "restore_path": "restore.restore: tiled, as diffenhance enhance",
        "noise_seeding": NOISE_SEEDING,
        "baselines": list(plan.baselines),
        "reference_baseline": next(iter(plan.baselines)),
        "skipped_baselines": plan.skipped,
        "n_images": len(pairs),
        "images": [p.name for p in pairs],
        "model": {
            "task": r.task,
            "step": r.meta.get("step"),
            "path": r.meta.get("path"),
            "formulation": r.diffusion_cfg.formulation,
            # what it was fine-tuned from, and so on back (None: trained from scratch)
            "init_from": training_record(r.meta.get("path"), r.meta).get("init_from"),
        },
        "device": str(r.device),
        "autocast": "bf16" if autocast is not None else "fp32",
        # CPU threads of the restores: an output's bits depend on it (infer.set_threads)
        "threads": torch.get_num_threads(),
        "source": source,
        "psnr_cap_db": 100.0,
        "notes": [f"{k} skipped: {v}" for k, v in plan.skipped.items()],
    }


def evaluate_pairs(
    r: Restorer,
    pairs: Sequence[Pair],
    task: str | RestorationTask,
    cfg: Config,
    out_dir: str | Path,
    *,
    source: dict[str, Any],
    progress: Callable[[str], None] | None = None,
) -> Evaluation:
    """Score the model and the baselines on (LQ, HR) pairs and write every output file.

    pairs: HR float32 HxWx3 in [0,1], LQ its degradation (HR size / task scale). `source` is
    recorded in protocol.json (where the pairs came from). Raises ValueError when the model's
    task or scale does not match `task` or when there are no pairs.
    """
    set_threads(cfg.infer.threads)  # the metrics' bits depend on it (infer.set_threads)
    plan = _plan(r, get_task(task), cfg, len(pairs))
    if r.device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
    out_dir = Path(out_dir)
    # everything is made in a hidden staging folder and moved in at the end: a run that fails
    # or is killed leaves the previous evaluation whole, never half of a new one
    staging = out_dir / STAGING_DIR
    shutil.rmtree(staging, ignore_errors=True)  # what a killed run left
    try:
        evaluation = _evaluate_into(r, pairs, plan, cfg, source, staging, progress)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(out_dir / "images", ignore_errors=True)  # stale images of an earlier run
    for f in ("images", *EVAL_FILES):
        os.replace(staging / f, out_dir / f)
    staging.rmdir()
    return replace(evaluation, dir=out_dir)


def _evaluate_into(
    r: Restorer, pairs: Sequence[Pair], plan: _Plan, cfg: Config, source: dict[str, Any],
    staging: Path, progress: Callable[[str], None] | None,
) -> Evaluation:  # fmt: skip
    """`evaluate_pairs`' work, every file written into `staging`."""
    images = staging / "images"
    rows: list[dict[str, Any]] = []
    unc_rows: list[dict[str, Any]] = []
    for i, p in enumerate(pairs):
        if progress:
            progress(f"{plan.task.name}: image {i + 1}/{len(pairs)} {p.name}")
        pair_rows, headline = _score_pair(r, p, plan, images)
        rows += pair_rows
        if plan.uncertainty is not None:
            unc_rows.append(_uncertainty_row(r, p, plan, headline, images))
    per_image = pd.DataFrame(rows).astype({"steps": "Int64", "seed": "Int64"})
    metrics = summarise(per_image, plan.headline, list(plan.baselines))
    metrics["headline_steps"] = float(plan.head.steps)
    timing, curve = _timing(per_image, plan.headline), _curve(per_image)
    protocol = _protocol(r, plan, pairs, cfg, source)
    protocol["uncertainty"] = unc = _uncertainty_summary(plan, unc_rows)
    if unc_rows:
        metrics |= {f"uncertainty_{k}": v for k, v in unc["mean"].items() if v is not None}
        timing["uncertainty_seconds_per_image"] = round(
            np.mean([u["seconds"] for u in unc_rows]), 4
        )
    elif plan.uncertainty_skipped and cfg.evaluate.uncertainty_samples:
        protocol["notes"].append(f"uncertainty skipped: {plan.uncertainty_skipped}")
    write_csv(staging / "per_image.csv", per_image)
    write_csv(staging / "psnr_vs_steps.csv", curve)
    write_json(staging / "metrics.json", metrics)
    write_json(staging / "timing.json", timing)
    write_json(staging / "protocol.json", protocol)
    return Evaluation(staging, metrics, timing, protocol, per_image, curve)


def spread(items: Sequence[Any], n: int) -> list[Any]:
    """At most `n` of `items`, evenly spaced and in order, first and last included (so a few
    evaluation images cover every source photo of a sorted list, not just the first one)."""
    if len(items) <= n:
        return list(items)
    idx = np.unique(np.linspace(0, len(items) - 1, n).round().astype(int))
    return [items[i] for i in idx]


def load_model(path: str | Path, cfg: Config) -> Restorer:
    """A checkpoint on `infer.device`, its path recorded in `meta["path"]` (for protocol.json)."""
    r = load_restorer(path, device=_device(cfg))
    r.meta = {**r.meta, "path": str(path)}
    return r


def check_inputs(cfg: Config, task: str) -> tuple[Path, Path, Config]:
    """(model weights, pairs folder, `cfg` with the task's recorded degradation:
    `task_degradation`) of the `evaluate` stage for `task`; FileNotFoundError naming the stage
    to run when an input is missing (also checked before Prefect starts)."""
    model = Path(cfg.train.out_dir) / task / WEIGHTS_NAME
    if not model.is_file():
        raise FileNotFoundError(f"{model}: no trained model; run the `train` stage first")
    pairs_dir = Path(cfg.degrade.out_dir) / task
    pairs_csv(pairs_dir)
    return model, pairs_dir, task_degradation(cfg, task)


def evaluate_model(cfg: Config, task: str, **kw: Any) -> Evaluation:
    """The `evaluate` stage for one task: the model in `<train.out_dir>/<task>/` on the fixed
    validation pairs in `<degrade.out_dir>/<task>/` (at most `evaluate.max_images`, evenly
    spaced by name: `spread`), written to `<evaluate.out_dir>/<task>/`."""
    model, pairs_dir, cfg = check_inputs(cfg, task)  # its scale as degrade recorded it
    pairs = spread(load_pairs(pairs_dir), cfg.evaluate.max_images)
    source = {"kind": "pairs", "path": str(pairs_dir / "pairs.csv")}
    out = Path(cfg.evaluate.out_dir) / task
    return evaluate_pairs(load_model(model, cfg), pairs, task, cfg, out, source=source, **kw)


def folder_pairs(hr_dir: str | Path, task: str | RestorationTask, cfg: Config) -> list[Pair]:
    """(HR, LQ) pairs from any folder of HR images, exactly as the `degrade` stage makes them
    (`pairs.make_pair`: centre crop to `degrade.val_size`, the task's fixed validation seed
    from the file's content hash). At most `evaluate.max_images` (evenly spaced in sorted path
    order, `spread`).

    Names are the paths relative to `hr_dir` without suffix, '/' replaced by '__'."""
    root = Path(hr_dir)
    if not root.is_dir():
        raise NotADirectoryError(f"{root}: --hr-dir must be a folder of images")
    files = spread(iter_image_files(root), cfg.evaluate.max_images)
    if not files:
        raise FileNotFoundError(f"{root}: no images found (PNG, JPEG, WebP, TIFF, BMP, GIF)")
    t = get_task(task)
    protocols = t.protocols(cfg.degrade)
    pairs = []
    for f in files:
        img = read_image(f)
        try:
            hr, lq, _ = make_pair(img, file_sha256(f), t, cfg.degrade)
            score(hr, hr, protocols)  # scorable: big enough for each protocol's border crop
        except ValueError as e:  # too small for the task's scale or crop
            size = f"{img.shape[1]}x{img.shape[0]} px"
            raise ValueError(f"{f} ({size}) is too small to evaluate {t.name}: {e}") from None
        name = f.relative_to(root).with_suffix("").as_posix().replace("/", "__")
        pairs.append(task_pair(name, hr, lq, t))
    return pairs


def evaluate_folder(
    cfg: Config, hr_dir: str | Path, task: str, model: str | Path, out_dir: str | Path, **kw: Any
) -> Evaluation:
    """Evaluate a checkpoint on a user's folder of HR images (see `folder_pairs`); writes the
    same files as the stage into `out_dir`."""
    pairs = folder_pairs(hr_dir, task, cfg)
    source = {"kind": "folder", "path": str(hr_dir), "val_size": cfg.degrade.val_size,
              "seed": cfg.degrade.seed}  # fmt: skip
    return evaluate_pairs(load_model(model, cfg), pairs, task, cfg, out_dir, source=source, **kw)


__all__ = [
    "COHERENCE",
    "GRAIN",
    "METRICS",
    "PRESET_PREFIX",
    "SHARPNESS",
    "Evaluation",
    "baselines_for_task",
    "bicubic_upscale",
    "bm3d_missing_reason",
    "cbm3d_denoise",
    "evaluate_folder",
    "evaluate_pairs",
    "evaluate_model",
    "folder_pairs",
    "grain_scores",
    "lanczos_upscale",
    "load_evaluation",
    "load_model",
    "mean_metric",
    "model_key",
    "sampler_label",
    "score",
    "spread",
    "summarise",
    "telea_inpaint",
    "write_csv",
    "write_json",
]
