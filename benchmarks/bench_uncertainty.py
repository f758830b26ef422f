"""Does the uncertainty map mean something? std of N samples vs |error| on real photos.

For each shipped model (models/pretrained/<task>) whose samples can differ (the restore path's
`uncertainty_problem`: the residual sr4 model can; the indi denoise model, indi noise 0,
cannot and is listed as skipped) the validation photos of `data.source=samples` (chelsea,
rocket) are degraded exactly as the `degrade` stage does and scored with
`evaluate.evaluate_folder` with `evaluate.uncertainty_samples=N` (the `evaluate` stage's
code): per image, the std map of N samples of the headline's spec, and its Pearson and
Spearman correlation with the headline output's per-pixel |error| (mean over RGB, border
crop = scale). Once per sampler step count of `--steps` (the headline's `infer.steps`).

For context, the same correlations of an edge map that needs no model: the gradient magnitude
of the reference baseline (bicubic for SR, the noisy input for denoising), against the 8-bit
headline's |error| (so is the std map's column "std (8-bit)"): errors concentrate at edges, so
a map that only finds edges already correlates; the std map should at least match it.

    python benchmarks/bench_uncertainty.py --out /tmp/unc                 # a few minutes, 2 CPUs
    python benchmarks/bench_uncertainty.py --out /tmp/u --val-size 128 --steps 1 --samples 4

Writes <out>/<task>-<steps>/ (evaluate's files) and <out>/bench_uncertainty.{json,md};
--record appends the table to benchmarks/RESULTS.md. Needs no prefect/dvc/boto3.
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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from diffenhance.config import load_config  # noqa: E402
from diffenhance.data.samples import materialize_samples  # noqa: E402
from diffenhance.evaluate import Evaluation, evaluate_folder  # noqa: E402
from diffenhance.model import validate_checkpoint  # noqa: E402
from diffenhance.restore import sampling_spec, uncertainty_problem  # noqa: E402
from diffenhance.uncertainty import error_correlation  # noqa: E402

PRETRAINED = REPO / "models" / "pretrained"


def edge_map(img: np.ndarray) -> np.ndarray:
    """Gradient magnitude (central differences) of the mean over RGB, HxW."""
    gy, gx = np.gradient(img.mean(axis=2, dtype=np.float64))
    return np.hypot(gy, gx)


def context(ev: Evaluation) -> dict[str, float]:
    """Mean over images of the std map's and the edge map's correlations with the 8-bit
    headline's |error| (the images the report shows)."""
    ref, crop = ev.protocol["reference_baseline"], ev.protocol["protocols"][0]["crop"]
    out: dict[str, list[float]] = {}
    for name in ev.protocol["images"]:
        hr, head = ev.image("hr", name), ev.image("model", name)
        std = np.load(ev.dir / "images" / "uncertainty" / f"{name}.npy")
        for label, m in (("std8", std), ("edge", edge_map(ev.image(ref, name)))):
            c = error_correlation(m, head, hr, crop)
            for k in ("pearson", "spearman"):
                out.setdefault(f"{label}_{k}", []).append(c[k])
    return {k: float(np.nanmean(v)) for k, v in out.items()}


def measure(
    task: str, hr_dir: Path, out: Path, overrides: list[str], steps: int, samples: int
) -> dict[str, Any]:
    """One shipped model at one step count: evaluate_folder with uncertainty_samples."""
    model = PRETRAINED / task
    n = len(list(hr_dir.iterdir()))
    cfg = load_config(REPO / "params.yaml", [
        *overrides, f"infer.steps={steps}", f"evaluate.steps=[{steps}]",
        f"evaluate.uncertainty_samples={samples}", f"evaluate.max_images={n}",
    ])  # fmt: skip
    ckpt = validate_checkpoint(model)  # what the header says; the weights load once, below
    why = uncertainty_problem(ckpt, sampling_spec(ckpt, cfg.infer, samples=samples))
    row: dict[str, Any] = {"task": task, "formulation": ckpt.diffusion_cfg.formulation,
                           "steps": steps, "samples": samples}  # fmt: skip
    if why is not None:
        return {**row, "skipped": why}
    t0 = time.perf_counter()
    ev = evaluate_folder(cfg, hr_dir, task, model, out / f"{task}-{steps}", progress=print)
    unc = ev.protocol["uncertainty"]
    return {
        **row,
        "images": ev.protocol["images"],
        "mean": unc["mean"],
        "per_image": unc["per_image"],
        "context": context(ev),
        "headline_psnr_y": ev.metrics["model_psnr_y"],
        "uncertainty_seconds_per_image": ev.timing["uncertainty_seconds_per_image"],
        "seconds": time.perf_counter() - t0,
    }


def markdown(res: dict[str, Any]) -> str:
    """The RESULTS.md section: one row per task and step count."""
    f3 = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    lines = [
        f"### Uncertainty maps: std of N samples vs |error|, {res['date'][:10]}",
        "",
        f"- machine: {res['machine']}; commit {res['commit']}",
        f"- command: `{res['command']}`",
        f"- data: data.source=samples validation photos (chelsea, rocket), centre crop "
        f"{res['val_size']} px, degraded with the fixed validation seeds of the `degrade` stage",
        "- std: per pixel, sqrt of the mean over RGB of the unbiased variance of N samples of the "
        "headline's spec; |error|: mean over RGB of |headline (1 sample) - truth|, border crop = "
        "scale; correlations over the pixels of each image, then the mean over images. Context: "
        "the same with the 8-bit images of the report, for the std map and for an edge map "
        "(gradient magnitude of bicubic / the noisy input), which needs no model",
        "",
        "| task | model | steps | N | Pearson | Spearman | per image (Pearson) | mean std "
        "| mean abs error | 8-bit: std / edge Pearson | 8-bit: std / edge Spearman | s / image (map) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for t in res["rows"]:
        if "skipped" in t:
            lines.append(f"| {t['task']} | {t['formulation']} | {t['steps']} | {t['samples']} "
                         f"| skipped: {t['skipped']} |||||||")  # fmt: skip
            continue
        m, c = t["mean"], t["context"]
        per = ", ".join(f"{k} {f3(v['pearson'])}" for k, v in t["per_image"].items())
        lines.append(
            f"| {t['task']} | {t['formulation']} | {t['steps']} | {t['samples']} "
            f"| {f3(m['pearson'])} | {f3(m['spearman'])} | {per} | {m['std_mean']:.4f} "
            f"| {m['abs_error_mean']:.4f} | {c['std8_pearson']:.3f} / {c['edge_pearson']:.3f} "
            f"| {c['std8_spearman']:.3f} / {c['edge_spearman']:.3f} "
            f"| {t['uncertainty_seconds_per_image']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default="sr4,denoise", help="comma-separated shipped models")
    ap.add_argument("--val-size", type=int, default=256, help="HR centre crop side (px)")
    ap.add_argument("--steps", default="1,4", help="sampler step counts (infer.steps)")
    ap.add_argument("--samples", type=int, default=8, help="N samples per std map")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "bench-unc-out")))
    ap.add_argument("--record", action="store_true", help="append the table to RESULTS.md")
    ap.add_argument("overrides", nargs="*", help="params.yaml overrides, e.g. infer.tile=32")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    overrides = [f"degrade.val_size={args.val_size}", *args.overrides]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-unc-") as photos:
        materialize_samples(Path(photos))
        for task in [t for t in args.tasks.split(",") if t]:
            for steps in [int(s) for s in args.steps.split(",") if s]:
                row = measure(task, Path(photos) / "val", args.out, overrides, steps, args.samples)
                rows.append(row)
                if "skipped" in row:
                    break  # the same reason at every step count
    res = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "commit": git_commit(),
        "machine": f"card {card_name()}; {cpu_name()}, torch {torch.__version__}",
        "command": shlex.join(
            ["python", "benchmarks/bench_uncertainty.py", *(argv or sys.argv[1:])]
        ),  # fmt: skip
        "val_size": args.val_size,
        "rows": rows,
    }
    write_results(args.out, "bench_uncertainty", res, markdown(res), args.record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
