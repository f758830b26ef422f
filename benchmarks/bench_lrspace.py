"""HR-space against LR-space (`model.space`) networks for x4 SR, at about equal parameters.

For each formulation (regression, residual) and space (hr, lr) on the bundled photos
(`data.source=samples`, prepared and degraded in-process by the library's stage functions):

1. training images/s: training steps of `train.SynthPairs` batches (the data synthesis
   included) through `formulation_loss`, backward and AdamW, median of a few;
2. inference output MP/s: `restore.restore` (the one restore path, `infer.*` defaults of
   params.yaml, the formulation's default steps) of a --infer-side px LQ image, best of 2;
3. quality after equal CPU wall-clock training: `train.train_model` for as many steps as (1)
   fits in --minutes, then `evaluate.evaluate_pairs` (the evaluate stage's code) on the sr4
   validation pairs: PSNR-Y (BT.601, 4 px border crop) against bicubic.

Both spaces use the params.yaml `model.*` (same body config: the LR body only has wider input
and output convs); the LR residual predictor's width is --lr-predictor (42: 0.31M parameters, as
the HR predictor's 0.30M).

    python benchmarks/bench_lrspace.py --out /tmp/lrspace --minutes 3 train.lr=1e-3 --record

Writes <out>/bench_lrspace.{json,md}; --record appends the table to benchmarks/RESULTS.md.
Needs no prefect/dvc/boto3.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _common import cpu_name, git_commit, write_results  # benchmarks/_common.py

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from diffenhance.config import Config, load_config  # noqa: E402

TASK = "sr4"


def prepare(work: Path, overrides: list[str], val_images: int) -> list[str]:
    """The prepare and degrade stages under `work`; returns the overrides that point there."""
    from diffenhance.data import prepare_dataset
    from diffenhance.data.pairs import degrade_stage

    ov = [
        f"data.raw_dir={work / 'raw'}",
        f"data.prepared_dir={work / 'prepared'}",
        "data.source=samples",
        f"degrade.out_dir={work / 'degraded'}",
        f"degrade.val_max_images={val_images}",
        "train.init_from=null",  # every arm from scratch (hr residual IS the shipped network)
        *overrides,
    ]
    cfg = load_config(REPO / "params.yaml", ov)
    prepare_dataset(cfg.data)  # the `prepare` stage
    degrade_stage(cfg, [TASK])  # the `degrade` stage
    return ov


def train_images_per_s(cfg: Config, steps: int = 4) -> float:
    """Training throughput of a fresh network: SynthPairs batches, loss, backward, AdamW."""
    from diffenhance.diffusion.formulations import formulation_loss
    from diffenhance.model import build_restorer
    from diffenhance.train import SynthPairs, train_files

    t = cfg.train
    r = build_restorer(cfg.model, cfg.diffusion, TASK, cfg.degrade)
    data = SynthPairs(train_files(cfg), TASK, t.crop_size, cfg, t.seed)
    opt = torch.optim.AdamW(r.unet.parameters(), lr=t.lr)
    g = torch.Generator().manual_seed(0)
    times = []
    for i in range(steps + 1):  # the first step warms up
        t0 = time.perf_counter()
        hr, lq = (torch.stack(x) for x in zip(*(data[i * t.batch_size + j]
                                                for j in range(t.batch_size)), strict=True))  # fmt: skip
        loss, _ = formulation_loss(cfg.diffusion, r.unet, r.schedule, hr * 2 - 1,
                                   r.condition(lq), generator=g)  # fmt: skip
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    return t.batch_size / statistics.median(times[1:])


def infer_mp_per_s(cfg: Config, side: int) -> float:
    """Output megapixels per second of `restore.restore` on a side x side LQ image."""
    from diffenhance.model import build_restorer
    from diffenhance.restore import restore, sampling_spec

    r = build_restorer(cfg.model, cfg.diffusion, TASK, cfg.degrade)
    img = np.random.default_rng(0).random((side, side, 3), dtype=np.float32)
    spec = sampling_spec(r, cfg.infer)
    best = float("inf")
    for _ in range(2):
        t0 = time.perf_counter()
        restore(r, img, spec)
        best = min(best, time.perf_counter() - t0)
    return (side * r.scale) ** 2 / 1e6 / best


def run_one(ov: list[str], kind: str, space: str, args, work: Path) -> dict:
    """Speed, then equal-wall-clock training and evaluation of one (formulation, space)."""
    from diffenhance.data.pairs import load_pairs
    from diffenhance.evaluate import evaluate_pairs, model_key
    from diffenhance.model import build_network, load_restorer
    from diffenhance.train import train_model

    name = f"{kind}-{space}"
    extra = [f"diffusion.formulation={kind}", f"model.space={space}"]
    if space == "lr":
        extra.append(f"diffusion.options.residual.predictor_channels={args.lr_predictor}")
    cfg = load_config(REPO / "params.yaml", [*ov, *extra])
    params = sum(p.numel() for p in build_network(cfg.model, cfg.diffusion, 4).parameters())
    ips = train_images_per_s(cfg)
    mps = infer_mp_per_s(cfg, args.infer_side)
    steps = max(10, round(args.minutes * 60 * ips / cfg.train.batch_size))
    print(f"{name}: {params / 1e6:.2f}M params, train {ips:.1f} img/s, infer {mps:.3f} MP/s, "
          f"training {steps} steps", flush=True)  # fmt: skip
    tcfg = load_config(
        REPO / "params.yaml",
        [*ov, *extra, f"train.steps={steps}", f"train.val_every={steps}",
         f"train.ckpt_every={steps}", f"train.log_every={max(1, steps // 10)}",
         f"train.out_dir={work / 'models' / name}"],
    )  # fmt: skip
    t0 = time.perf_counter()
    model_dir = train_model(tcfg, TASK)
    wall = time.perf_counter() - t0
    ev = evaluate_pairs(load_restorer(model_dir), load_pairs(work / "degraded" / TASK), TASK,
                        tcfg, work / "eval" / name, source={"kind": "bench_lrspace"})  # fmt: skip
    m = ev.metrics
    print(f"{name}: {wall:.0f} s, PSNR-Y {m['model_psnr_y']:.2f} "
          f"(bicubic {m['bicubic_psnr_y']:.2f})", flush=True)  # fmt: skip
    return {
        "formulation": kind, "space": space, "params": params, "train_img_s": ips,
        "infer_mp_s": mps, "steps": steps, "train_wall_s": wall,
        "eval_steps": int(m["headline_steps"]), "psnr_y": m["model_psnr_y"],
        "psnr_y_1step": m.get(f"{model_key(ev.protocol['sampler'], 1)}_psnr_y", float("nan")),
        "bicubic_psnr_y": m["bicubic_psnr_y"], "ssim_y": m["model_ssim_y"],
    }  # fmt: skip


def table(rows: list[dict], meta: dict) -> str:
    lines = [
        f"### HR-space vs LR-space network (`model.space`), x4 SR, CPU, {meta['date'][:10]}",
        "",
        f"- machine: {meta['machine']}; torch.set_num_threads({meta['threads']}); commit "
        f"{meta['commit']}",
        f"- command: `{meta['command']}`",
        f"- {meta['val_pairs']} validation pairs of the bundled photos (sr4, {meta['val_size']} "
        "px HR); PSNR-Y: BT.601 Y, 4 px border crop; train img/s: batches of "
        f"{meta['batch']} x {meta['crop']} px crops, data synthesis included; infer: "
        f"`restore` of a {meta['infer_side']} px LQ image (params.yaml infer defaults, the "
        "formulation's default steps); equal wall-clock: steps = budget x measured img/s",
        "",
        "| formulation | space | params | train img/s | infer out MP/s | steps in budget "
        "| train wall | eval steps | PSNR-Y | vs bicubic | SSIM-Y | PSNR-Y at 1 step |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['formulation']} | {r['space']} | {r['params'] / 1e6:.2f}M | "
            f"{r['train_img_s']:.1f} | {r['infer_mp_s']:.3f} | {r['steps']} | "
            f"{r['train_wall_s']:.0f} s | {r['eval_steps']} | {r['psnr_y']:.2f} | "
            f"{r['psnr_y'] - r['bicubic_psnr_y']:+.2f} | {r['ssim_y']:.4f} | "
            f"{r['psnr_y_1step']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("lrspace-out"))
    ap.add_argument("--formulations", default="regression,residual")
    ap.add_argument("--minutes", type=float, default=3.0, help="training wall clock per run")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--crop", type=int, default=64)
    ap.add_argument("--val-images", type=int, default=8)
    ap.add_argument("--infer-side", type=int, default=128)
    ap.add_argument("--lr-predictor", type=int, default=42, help="LR residual predictor width")
    ap.add_argument("--record", action="store_true", help="append to benchmarks/RESULTS.md")
    ap.add_argument("overrides", nargs="*", help="params overrides, e.g. train.lr=1e-3")
    args = ap.parse_args()
    from diffenhance.data.pairs import load_pairs

    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="lrspace-"))
    budget = [
        f"train.batch_size={args.batch}", f"train.crop_size={args.crop}", "train.val_images=1",
        "train.val_steps=1", "train.warmup_steps=10", "train.ema_decay=0.99",
        "train.ema_warmup_steps=20", "train.device=cpu", "infer.device=cpu",
        "evaluate.steps=[1]", "evaluate.seeds=[0]", *args.overrides,
    ]  # fmt: skip  # ema 0.99: 0.999 would average over more than a short run
    ov = prepare(work, budget, args.val_images)
    rows = [
        run_one(ov, kind, space, args, work)
        for kind in args.formulations.split(",")
        for space in ("hr", "lr")
    ]
    cfg = load_config(REPO / "params.yaml", ov)
    meta = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": f"{cpu_name()} (shared), no GPU, torch {torch.__version__}",
        "threads": args.threads,
        "commit": git_commit(),
        "command": " ".join(["python", "benchmarks/bench_lrspace.py", *sys.argv[1:]]),
        "val_pairs": len(load_pairs(work / "degraded" / TASK)),
        "val_size": cfg.degrade.val_size,
        "batch": args.batch,
        "crop": args.crop,
        "infer_side": args.infer_side,
        "budget": budget,
    }
    write_results(args.out, "bench_lrspace", {**meta, "rows": rows}, table(rows, meta),
                  args.record)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
