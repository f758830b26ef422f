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
* PSNR against the number of sampler steps (`--steps`); the headline is `infer.steps` of
  params.yaml, each output the mean of `infer.samples` samples: what `diffenhance enhance`
  does by default.

    python benchmarks/bench_quality.py --out /tmp/quality            # minutes on 2 CPUs
    python benchmarks/bench_quality.py --out /tmp/q --val-size 64 --steps 1 --tasks sr4
    python benchmarks/bench_quality.py --tasks inpaint,jpeg,jpeg@10 --record

Writes <out>/<task>/ (metrics.json, per_image.csv, psnr_vs_steps.csv, protocol.json, images/)
and <out>/bench_quality.{json,md}; --record appends the tables to benchmarks/RESULTS.md.
Needs no prefect/dvc/boto3.
"""

from __future__ import annotations

import argparse
import datetime as dt
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

from diffenhance.config import load_config  # noqa: E402
from diffenhance.data.samples import materialize_samples  # noqa: E402
from diffenhance.evaluate import evaluate_folder  # noqa: E402
from diffenhance.io import read_image  # noqa: E402
from diffenhance.model import read_checkpoint  # noqa: E402

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


def machine() -> str:
    return f"card {card_name()}; {cpu_name()}, torch {torch.__version__}"


def commit() -> str:
    return git_commit()


def evaluate_model(
    task: str, model_dir: Path, hr_dir: Path, out: Path, overrides: list[str], steps: list[int]
) -> dict[str, Any]:
    """Score one shipped model with `evaluate_folder`; returns the numbers of the tables.
    `task` may be a VARIANTS name (e.g. denoise@50: the denoiser at sigma 50)."""
    name = task
    task, extra = VARIANTS.get(name, (name, []))
    overrides = [*overrides, *extra]
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
    baselines = {
        b: {"psnr": m[f"{b}_psnr_{proto}"], "ssim": m[f"{b}_ssim_{proto}"]}
        for b in ev.protocol["baselines"]
    }
    model = {"psnr": m[f"model_psnr_{proto}"], "ssim": m[f"model_ssim_{proto}"]}
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
        "skipped": ev.protocol["skipped_baselines"],
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
            lines.append(
                f"| {t['task']} | | | | {b}: skipped ({why}) | | {t['target_text']} "
                "| not measured |"
            )
    lines += ["", "Speed of the headline (the restore path as `enhance` runs it, with this "
              "machine's threads) in output megapixels per second:", "",
              "| task | s / image | output MP/s |", "|---|---|---|"]  # fmt: skip
    for t in res["tasks"]:
        mp = t["out_pixels"] / 1e6 / t["seconds_per_image"]
        lines.append(f"| {t['task']} | {t['seconds_per_image']:.3f} | {mp:.3f} |")
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
    ap.add_argument("--record", action="store_true", help="append the tables to RESULTS.md")
    ap.add_argument("overrides", nargs="*", help="params.yaml overrides, e.g. infer.samples=4")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    steps = [int(s) for s in args.steps.split(",") if s]
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
            tasks.append(evaluate_model(task, model_dir, hr_dir, args.out, overrides, steps))
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
