"""Compare the restoration formulations (sr3, regression, indi, residual) for x4 SR.

Each formulation trains the same U-Net (`model.*` from params.yaml unless overridden) for the
same budget on the bundled photos (`data.source=samples`, prepared and degraded in-process as
`gpu_check.py` does), then is scored on the fixed validation pairs: PSNR-Y / SSIM-Y with a
4 px border crop, and `metrics.hf_energy_ratio` (fine-detail energy relative to the ground
truth, 1 = as sharp as the truth), per sampler step count and per number of averaged samples,
beside bicubic.

    python benchmarks/formulations.py --out /tmp/formulations train.lr=1e-3   # 15-35 min, 2 CPUs
    python benchmarks/formulations.py --train-steps 4 --val-images 2 --eval-steps 1,2 --out /tmp/f

Writes `formulations.csv`, `formulations.json` and `formulations.md` (the table for
benchmarks/RESULTS.md) under --out. Needs no prefect/dvc/boto3.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from _common import git_commit, write_val_pairs  # benchmarks/_common.py

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from diffenhance.config import load_config  # noqa: E402
from diffenhance.diffusion.formulations import get_formulation  # noqa: E402
from diffenhance.metrics import hf_energy_ratio, mean_psnr, psnr, ssim  # noqa: E402


def prepare(work: Path, overrides: list[str], val_images: int) -> list[str]:
    """Prepare the bundled photos and the sr4 validation pairs under `work`; return overrides."""
    from diffenhance.data import prepare_dataset

    ov = [
        f"data.raw_dir={work / 'raw'}",
        f"data.prepared_dir={work / 'prepared'}",
        "data.source=samples",
        f"degrade.out_dir={work / 'degraded'}",
        f"degrade.val_max_images={val_images}",
        *overrides,
    ]
    cfg = load_config(REPO / "params.yaml", ov)
    write_val_pairs(cfg, prepare_dataset(cfg.data), "sr4", val_images)
    return ov


def scores(pred: torch.Tensor, hr: torch.Tensor) -> dict[str, float]:
    """Mean PSNR-Y, SSIM-Y (4 px crop) and HF energy ratio of [N,3,H,W] [0,1] batches."""
    return {
        "psnr_y": mean_psnr(psnr(pred, hr, crop=4, y_channel=True)),
        "ssim_y": float(ssim(pred, hr, crop=4, y_channel=True).mean()),
        "hf_ratio": float(hf_energy_ratio(pred, hr, crop=4).mean()),
    }


def evaluate(r, lq, hr, steps_list, samples_list, avg_steps, seed, log) -> list[dict]:
    """Score `r` at every step count with 1 sample, and at `avg_steps` with each count of
    `samples_list`; regression once (it ignores both)."""
    rows = []
    knob = get_formulation(r.diffusion_cfg.formulation).has_knob
    grid = [(s, 1) for s in steps_list] if knob else [(1, 1)]
    if knob:
        grid += [(s, n) for s in avg_steps for n in samples_list if n > 1]
    for steps, n in grid:
        t0 = time.perf_counter()
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            out = torch.cat(
                [
                    r.restore(lq[i : i + 4], steps=steps, generator=g, samples=n)
                    for i in range(0, len(lq), 4)
                ]
            )
        row = {
            "formulation": r.diffusion_cfg.formulation,
            "steps": steps,
            "samples": n,
            **scores(out, hr),
        }
        row["eval_s"] = time.perf_counter() - t0
        rows.append(row)
        log(f"  {r.diffusion_cfg.formulation:10s} steps {steps:3d} samples {n}: PSNR-Y {row['psnr_y']:.2f} "
            f"SSIM-Y {row['ssim_y']:.4f} HF {row['hf_ratio']:.3f} ({row['eval_s']:.0f} s)")  # fmt: skip
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("formulations-out"))
    ap.add_argument("--formulations", default="regression,indi,residual,sr3")
    ap.add_argument("--reference", default="regression", help="the one-shot formulation")
    ap.add_argument("--train-steps", type=int, default=600)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--crop", type=int, default=64)
    ap.add_argument("--val-images", type=int, default=8)
    ap.add_argument("--eval-steps", default="1,2,4,8,20,50")
    ap.add_argument("--samples", default="4", help="averaged sample counts besides 1")
    ap.add_argument("--avg-steps", default="1,4", help="step counts scored with averaging")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "overrides", nargs="*", help="extra params overrides, e.g. model.base_channels=32"
    )
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(os.cpu_count() or 1)
    logf = (args.out / "formulations.log").open("w")

    def log(msg: str) -> None:
        print(msg, flush=True)
        logf.write(msg + "\n")
        logf.flush()

    from diffenhance.data.pairs import load_pairs
    from diffenhance.model import load_restorer
    from diffenhance.train import train_task

    t_all = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="formulations-"))
    budget = [
        f"train.steps={args.train_steps}",
        f"train.batch_size={args.batch}",
        f"train.crop_size={args.crop}",
        f"train.val_every={args.train_steps}",
        f"train.ckpt_every={args.train_steps}",
        f"train.log_every={max(1, args.train_steps // 10)}",
        "train.val_images=1",
        "train.val_steps=1",
        "train.warmup_steps=10",
        "train.ema_decay=0.99",  # 0.999 would average over 5x the run: EMA ~ the init weights
        "train.ema_warmup_steps=20",
        "train.device=cpu",
        *args.overrides,
    ]
    ov = prepare(work, budget, args.val_images)
    pairs = load_pairs(work / "degraded" / "sr4")
    lq = torch.stack([torch.from_numpy(p.lq).permute(2, 0, 1) for p in pairs])
    hr = torch.stack([torch.from_numpy(p.hr).permute(2, 0, 1) for p in pairs])
    bicubic = F.interpolate(lq, scale_factor=4, mode="bicubic", align_corners=False).clamp(0, 1)
    rows = [
        {"formulation": "bicubic", "steps": 0, "samples": 1, **scores(bicubic, hr), "eval_s": 0.0}
    ]
    log(f"{len(pairs)} validation pairs {tuple(hr.shape[-2:])}; bicubic PSNR-Y "
        f"{rows[0]['psnr_y']:.2f} SSIM-Y {rows[0]['ssim_y']:.4f} HF {rows[0]['hf_ratio']:.3f}")  # fmt: skip
    steps_list = [int(s) for s in args.eval_steps.split(",")]
    avg_steps = [int(s) for s in args.avg_steps.split(",")]
    samples_list = [int(s) for s in args.samples.split(",") if s]
    train_info = {}
    for kind in args.formulations.split(","):
        cfg = load_config(
            REPO / "params.yaml",
            [*ov, f"diffusion.formulation={kind}", f"train.out_dir={work / 'models' / kind}"],
        )
        t0 = time.perf_counter()
        model_dir = train_task(cfg, "sr4")
        sec = time.perf_counter() - t0
        r = load_restorer(model_dir)
        params = sum(p.numel() for p in r.unet.parameters())
        train_log = pd.read_csv(model_dir / "train_log.csv")
        train_info[kind] = {
            "train_s": sec,
            "params": params,
            "final_loss": float(train_log["loss"].iloc[-1]),
        }
        log(f"{kind}: trained {args.train_steps} steps in {sec:.0f} s, {params / 1e6:.2f}M params, "
            f"final loss {train_info[kind]['final_loss']:.4f}")  # fmt: skip
        got = evaluate(r, lq, hr, steps_list, samples_list, avg_steps, args.seed, log)
        rows += [{**row, "train_s": sec, "params_m": params / 1e6} for row in got]
    df = pd.DataFrame(rows)
    df.to_csv(args.out / "formulations.csv", index=False)
    total = time.perf_counter() - t_all
    meta = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores "
        f"(shared), torch {torch.__version__}",
        "commit": git_commit(),
        "command": " ".join(["python", "benchmarks/formulations.py", *sys.argv[1:]]),
        "budget": budget,
        "val_pairs": len(pairs),
        "total_s": total,
        "train": train_info,
    }
    (args.out / "formulations.json").write_text(json.dumps({**meta, "rows": rows}, indent=2))
    bic = rows[0]["psnr_y"]
    reg = df.loc[df["formulation"] == args.reference, "psnr_y"]
    reg_psnr = float(reg.iloc[0]) if len(reg) else float("nan")
    lines = [
        "| formulation | steps | samples | PSNR-Y | vs bicubic | vs regression | SSIM-Y | HF ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['formulation']} | {row['steps'] or '-'} | {row['samples']} | "
            f"{row['psnr_y']:.2f} | {row['psnr_y'] - bic:+.2f} | {row['psnr_y'] - reg_psnr:+.2f} | "
            f"{row['ssim_y']:.4f} | {row['hf_ratio']:.3f} |"
        )
    (args.out / "formulations.md").write_text("\n".join(lines) + "\n")
    log("\n".join(lines))
    log(f"total {total:.0f} s")
    return 0 if np.isfinite(bic) else 1


if __name__ == "__main__":
    sys.exit(main())
