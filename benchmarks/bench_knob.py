"""The fidelity/detail knob of one model on held-out real photos, and its measured presets.

For a checkpoint, every (steps, detail) of the grid runs through the one restore path on the
six held-out photos (`extra_photos.materialize_held_out`, centre crop `--val-size`, degraded as
the `degrade` stage does: `evaluate.folder_pairs`) and is scored with `evaluate.score` (the
task's protocol: Y with border crop = scale for SR). Per setting, the means over images of:

* PSNR-Y and SSIM-Y (fidelity), and the HF ratio (sharpness, `metrics.hf_energy_ratio`:
  1 = as much fine detail as the truth; above about 1.3 is grain, not detail);
* where the error sits: the Y error std on the flattest 30% of the truth's pixels and on all
  (`metrics.error_std_flat`, 0-255), and the grain score over the fidelity end (detail 0):
  (flat ratio) / (whole-image ratio); about 1 for a posterior sample, above 1.1 is grain;
* the edge coherence (`metrics.edge_coherence`): the output's structure-tensor coherence over
  the truth's on the truth's 20% most structured pixels; about 1 for edges as orderly as
  real ones, below 0.85 speckle or jaggies along edges (which the grain score, looking at
  flat pixels, does not see, and the HF ratio counts as detail);
* inpainting: all of the above inside the hole only (`hole_score`: outside it the output is
  the input, exact by construction): PSNR/SSIM over the hole's pixels, the HF ratio, the
  error stds (the flat pixels: the flattest 30% of the hole) and the edge coherence over the
  hole's pixels;
* at the chosen detail preset, the uncertainty map (per-pixel std of `--unc-samples` samples)
  and its Pearson correlation with the output's |error|, beside an edge map's (the gradient
  magnitude of the output: a map that only finds edges).

The presets (issue 21's bars): fidelity = detail 0 (the posterior mean). Among the settings
whose grain score is at most 1.1, whose edge coherence is at least 0.85, whose PSNR-Y is at
most 2.0 dB below fidelity and whose HF ratio is at most 1.2, the one with the most detail (fewest steps on ties) is the detail preset
when its HF ratio reaches 0.8 (then balanced = the same steps at half its detail); when none
reaches 0.8 it is shipped as balanced only, and the model has no detail preset: no setting of
it gives ground-truth-like detail without grain. `--set-presets` records them, with the
figures, in the checkpoint's "recommended" metadata (`model.set_recommended`: weights
unchanged; a recorded `min_tile` is kept). A model without a detail knob (indi, residual)
gets one row, its output at the first `--steps` (to compare a knob model's fidelity end with).

    python benchmarks/bench_knob.py --model models/pretrained/sr4 --out /tmp/knob
    python benchmarks/bench_knob.py --model RUN/out/sr4 --set-presets --record

Writes <out>/bench_knob.{json,md} and <out>/images/<setting>/<photo>.png. Needs no
prefect/dvc/boto3.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import card_name, cpu_name, git_commit, write_results  # benchmarks/_common.py
from bench_uncertainty import edge_map  # the reference map bench_uncertainty.py reports
from extra_photos import materialize_held_out  # benchmarks/extra_photos.py

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

import numpy as np  # noqa: E402

from diffenhance.config import load_config  # noqa: E402
from diffenhance.diffusion.formulations import get_formulation  # noqa: E402
from diffenhance.evaluate import COHERENCE, folder_pairs, score  # noqa: E402
from diffenhance.io import write_image  # noqa: E402
from diffenhance.metrics import (  # noqa: E402
    MAX_GRAIN_SCORE,
    MIN_EDGE_COHERENCE,
    edge_coherence,
    error_std_flat,
    grain_score,
    hf_energy_ratio,
    masked_psnr,
    masked_ssim,
    mean_psnr,
)
from diffenhance.model import load_restorer, recommended_min_tile, set_recommended  # noqa: E402
from diffenhance.restoration import get_task  # noqa: E402
from diffenhance.restore import restore, restore_with_uncertainty, sampling_spec  # noqa: E402
from diffenhance.uncertainty import error_correlation  # noqa: E402

MAX_DROP_DB = 2.0  # the detail preset may cost at most this much PSNR-Y against fidelity
MAX_GRAIN = MAX_GRAIN_SCORE  # ... and its grain score may be at most this (1.1)
MAX_HF = 1.2  # ... and its HF ratio at most this (more is grain, not detail)
MIN_HF = 0.8  # the detail preset reaches at least this much of the truth's fine detail
# ... and a preset's edge coherence is at least this (0.85; below: speckle or jaggies along edges)
MIN_COHERENCE = MIN_EDGE_COHERENCE
# What the figures of an inpainting model cover (recorded in the results and the card).
HOLE_SCOPE = (
    "inside the hole: PSNR/SSIM (RGB, Y), HF ratio and error stds over the hole's "
    "pixels only (the HF band filtered on the whole image, summed in the hole)"
)


def setting_name(steps: int, detail: float) -> str:
    return "fidelity" if detail == 0 else f"steps{steps}_detail{detail:g}"


def hole_score(pred: np.ndarray, hr: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """`evaluate.score`'s keys for an inpainting prediction, inside the hole (`mask` HxW, 1 =
    hole) only: PSNR/SSIM RGB and Y over the hole's pixels (`metrics.masked_psnr` /
    `masked_ssim`; psnr_rgb is evaluate's psnr_mask), the HF ratio, the Y error stds
    (flat: the flattest 30% of the hole) and the edge coherence (the hole's most structured
    20%) over the hole's pixels (`hf_energy_ratio` / `error_std_flat` / `edge_coherence` with
    the mask). The output outside the hole is taken as the truth there
    (what the restore path returns: the input's known pixels), so nothing of it counts, also
    not in the SSIM windows and the HF filter that reach across the hole's edge."""
    pred = np.where(mask[..., None] >= 0.5, pred, hr)
    out = {}
    for name, y in (("rgb", False), ("y", True)):
        out[f"psnr_{name}"] = float(masked_psnr(pred, hr, mask, y_channel=y)[0])
        out[f"ssim_{name}"] = float(masked_ssim(pred, hr, mask, y_channel=y)[0])
    out["hf_ratio"] = float(hf_energy_ratio(pred, hr, mask=mask)[0])
    flat, whole = error_std_flat(pred, hr, mask=mask)
    out["err_std_flat_y"], out["err_std_y"] = float(flat[0]), float(whole[0])
    out[COHERENCE] = float(edge_coherence(pred, hr, mask=mask)[0])
    return out


def measure(r: Any, pairs: list, cfg: Any, steps: int, detail: float, images: Path | None) -> dict:
    """Mean figures of one (steps, detail) over the pairs (see the module docstring); for a
    model without a detail knob, its output at `steps` (detail is not asked)."""
    protocols = get_task(r.task).protocols(cfg.degrade)
    knob = get_formulation(r.diffusion_cfg.formulation).detail_knob
    spec = sampling_spec(r, cfg.infer, steps=steps, detail=detail if knob else None, samples=1,
                         seed=0)  # fmt: skip
    rows, t0 = [], time.perf_counter()
    for p in pairs:
        pred = restore(r, p.lq, spec)
        if p.mask is None:
            rows.append(score(pred, p.hr, protocols))
        else:
            rows.append(hole_score(pred, p.hr, p.mask))
        if images is not None:
            write_image(images / setting_name(steps, detail) / f"{p.name}.png", pred)
    seconds = (time.perf_counter() - t0) / len(pairs)
    out: dict[str, Any] = {"steps": steps, "detail": detail, "seconds_per_image": seconds}
    for k in rows[0]:
        vals = [row[k] for row in rows]
        out[k] = mean_psnr(vals) if k.startswith("psnr") else float(np.nanmean(vals))
    return out


def grain(row: dict, ref: dict) -> float:
    """`metrics.grain_score` of the setting `row` over `ref` (their mean error stds)."""
    return grain_score(row["err_std_flat_y"], row["err_std_y"], ref["err_std_flat_y"],
                       ref["err_std_y"])  # fmt: skip


def choose_presets(rows: list[dict], proto: str) -> dict[str, dict[str, Any]]:
    """fidelity, and where the bars allow one, detail and balanced (module docstring)."""
    ref = next(r for r in rows if r["detail"] == 0)
    presets = {"fidelity": {"steps": ref["steps"], "samples": 1, "detail": 0.0}}
    ok = [
        r for r in rows
        if r["detail"] > 0 and r["grain_score"] <= MAX_GRAIN and r["hf_ratio"] <= MAX_HF
        and r[COHERENCE] >= MIN_COHERENCE
        and ref[f"psnr_{proto}"] - r[f"psnr_{proto}"] <= MAX_DROP_DB
    ]  # fmt: skip
    if ok:
        best = max(ok, key=lambda r: (r["hf_ratio"], -r["steps"]))
        chosen = {"steps": best["steps"], "samples": 1, "detail": best["detail"]}
        if best["hf_ratio"] >= MIN_HF:
            presets["balanced"] = {**chosen, "detail": best["detail"] / 2}
            presets["detail"] = chosen
        else:
            presets["balanced"] = chosen
    return presets


def uncertainty(r: Any, pairs: list, cfg: Any, preset: dict, samples: int, crop: int) -> dict:
    """Mean Pearson of the std map and of an edge map with |error| at `preset`."""
    spec = sampling_spec(r, cfg.infer, steps=preset["steps"], detail=preset["detail"],
                         samples=samples, seed=0)  # fmt: skip
    std_p, edge_p = [], []
    for p in pairs:
        out, std = restore_with_uncertainty(r, p.lq, spec)
        std_p.append(error_correlation(std, out, p.hr, crop, p.mask)["pearson"])
        edge_p.append(error_correlation(edge_map(out), out, p.hr, crop, p.mask)["pearson"])
    return {"samples": samples, "std_pearson": float(np.nanmean(std_p)),
            "edge_pearson": float(np.nanmean(edge_p))}  # fmt: skip


def markdown(res: dict[str, Any]) -> str:
    p = res["protocol"]
    lines = [
        f"### The fidelity/detail knob of {res['model']} on held-out photos, {res['date'][:10]}",
        "",
        f"- machine: {res['machine']}; commit {res['commit']}",
        f"- command: `{res['command']}`",
        f"- data: the six held-out photos ({', '.join(res['images'])}), centre crop "
        f"{res['val_size']} px; {p} protocol (border crop = scale); one sample, seed 0",
        *([f"- scored {res['scope']}", ""] if res.get("scope") else [""]),
        f"| steps | detail | PSNR-{p} | SSIM-{p} | HF ratio | flat err std | all err std "
        "| grain score | edge coherence | s / image |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        lines.append(
            f"| {r['steps'] if r['detail'] else '-'} | {r['detail']:g} | {r[f'psnr_{p}']:.2f} "
            f"| {r[f'ssim_{p}']:.4f} | {r['hf_ratio']:.3f} | {r['err_std_flat_y']:.2f} "
            f"| {r['err_std_y']:.2f} | {r['grain_score']:.3f} | {r[COHERENCE]:.3f} "
            f"| {r['seconds_per_image']:.2f} |"
        )
    lines += ["", "Presets chosen (bars: PSNR drop <= 2.0 dB, grain score <= 1.1, HF <= 1.2, "
              "edge coherence >= 0.85; detail: HF >= 0.8): "
              + "; ".join(f"{k}: steps {v['steps']}, detail {v['detail']:g}"
                          for k, v in res["presets"].items())]  # fmt: skip
    if res.get("uncertainty"):
        u = res["uncertainty"]
        lines.append(
            f"Uncertainty at the knob's far preset ({u['samples']} samples): Pearson with |error| "
            f"{u['std_pearson']:.3f} (edge map: {u['edge_pearson']:.3f})."
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, required=True, help="model dir or .safetensors")
    ap.add_argument("--steps", default="1,2,4,8", help="Euler/sampler steps to try")
    ap.add_argument("--detail", default="0,0.25,0.5,0.75,1", help="detail values to try")
    ap.add_argument("--val-size", type=int, default=256)
    ap.add_argument("--unc-samples", type=int, default=4, help="0: no uncertainty figures")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--set-presets", action="store_true", help="record them in the checkpoint")
    ap.add_argument("--record", action="store_true", help="append to benchmarks/RESULTS.md")
    args = ap.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="bench-knob-"))
    out.mkdir(parents=True, exist_ok=True)
    r = load_restorer(args.model)
    cfg = load_config(REPO / "params.yaml",
                      [f"degrade.val_size={args.val_size}", "evaluate.max_images=100"])  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="held-out-") as tmp:
        pairs = folder_pairs(materialize_held_out(Path(tmp) / "hr"), r.task, cfg)
    protos = get_task(r.task).protocols(cfg.degrade)  # the headline: Y where there is one (SR)
    proto = next((q for q in protos if q.y_channel), protos[0])
    p = "y" if proto.y_channel else "rgb"
    details = sorted({float(d) for d in args.detail.split(",")} | {0.0})
    steps = [int(s) for s in args.steps.split(",")]
    knob = get_formulation(r.diffusion_cfg.formulation).detail_knob
    if args.set_presets and not knob:
        ap.error(f"--set-presets: a {r.diffusion_cfg.formulation} model has no detail knob")
    grid = [(steps[0], 0.0)] + [(s, d) for s in steps for d in details if d > 0 and knob]
    rows = []
    for s, d in grid:
        rows.append(measure(r, pairs, cfg, s, d, out / "images"))
        print(f"steps {s} detail {d:g}: PSNR-{p} {rows[-1][f'psnr_{p}']:.2f} "
              f"HF {rows[-1]['hf_ratio']:.3f}", flush=True)  # fmt: skip
    for row in rows:
        row["grain_score"] = grain(row, rows[0])
    presets = choose_presets(rows, p)
    res: dict[str, Any] = {
        "model": str(args.model), "task": r.task, "formulation": r.diffusion_cfg.formulation,
        "protocol": p, "val_size": args.val_size, "images": [q.name for q in pairs],
        "rows": rows, "presets": presets,
        "machine": f"{cpu_name()}, card {card_name(none='none')}",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "commit": git_commit(),
        "command": "python benchmarks/bench_knob.py " + " ".join(argv or sys.argv[1:]),
    }  # fmt: skip
    if any(q.mask is not None for q in pairs):
        res["scope"] = HOLE_SCOPE
    far = presets.get("detail") or presets.get("balanced")  # the knob's far end as shipped
    if args.unc_samples >= 2 and far is not None:
        res["uncertainty"] = uncertainty(r, pairs, cfg, far, args.unc_samples, proto.crop)
    write_results(out, "bench_knob", res, markdown(res), args.record)
    if args.set_presets:
        figures = {name: row for name, v in presets.items() for row in rows
                   if (row["steps"], row["detail"]) == (v["steps"], v["detail"])
                   or (v["detail"] == 0 and row["detail"] == 0)}  # fmt: skip
        why = (
            "; ".join(
                f"{k}: PSNR-{p} {f[f'psnr_{p}']:.2f}, HF {f['hf_ratio']:.2f}, grain "
                f"{f['grain_score']:.2f}"
                for k, f in figures.items()
            )
            + f" (RESULTS.md, bench_knob.py, six held-out photos at {args.val_size} px)"
        )
        fid = presets["fidelity"]
        set_recommended(args.model, fid["steps"], 1, why,
                        min_tile=recommended_min_tile(r) or None, presets=presets)  # fmt: skip
        print(f"presets recorded in {args.model}: {presets}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
