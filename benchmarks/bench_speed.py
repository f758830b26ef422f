"""Speed of our U-Net against the diffusers anchor, in one run on one device.

The anchor is `diffusers.UNet2DModel` in an SR3 configuration: 6 -> 3 channels (noisy image
+ upsampled condition), the same block widths as ours (`model.base_channels *
channel_mults`), `layers_per_block=2`, self-attention at the two lowest levels (and in its
middle block), FiLM (`resnet_time_scale_shift="scale_shift"`), head width
`model.head_channels`. Our U-Net is measured in the same topology (`model.num_res_blocks=2`,
`model.attn_resolutions` = the two lowest levels), so parameters and FLOPs per image match
(the table records both, counted with `torch.utils.flop_counter.FlopCounterMode` on the meta
device, where attention is counted too). Both networks run the same code around them: the
same SR3 v-prediction L1 training step (AdamW, channels_last, bf16 autocast on CUDA / fp32 on
CPU) and the same DDIM loop (`diffusion.ddim_sample`), so only the network differs.

Measured in fresh processes: the timings of both networks in one process, interleaved step by
step (load from other jobs on a shared machine hits both alike), peak memory of each network
alone in its own process:
* training images/s at `--size` px crops, batch `--batch`, eager and (`--compile`) compiled
  (batch / the median step time: robust to other jobs on a shared machine);
* sampling: seconds per DDIM step (median network call over `--repeats` runs + the loop's
  share) and per image,
  megapixels/s at `--sample-size` px output;
* peak memory: CUDA max_memory_allocated, or on CPU the rise of the peak RSS;
* the matmul ceiling of the same device in the same run (bf16 on CUDA, fp32 on CPU), so
  MFU = training FLOPs/s (fwd + bwd FLOPs per image x images/s) / that ceiling;
* our product path: `restore.restore` with the shipped model (models/pretrained/sr4, or
  the params.yaml model untrained when absent) at the params.yaml infer defaults, on an LQ
  image of `--sample-size / 4` px (x4 output = `--sample-size` px).

    python benchmarks/bench_speed.py --out $OUT                      # GPU: 512 px output
    python benchmarks/bench_speed.py --device cpu --size 64 --batch 4 --sample-size 128 \
        --train-steps 5 --sample-steps 4 --record                    # CPU: smaller sizes

Writes bench_speed.json and bench_speed.md under --out; --record appends the table to
benchmarks/RESULTS.md. Needs the `bench` extra (diffusers) but no prefect/dvc/boto3.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import datetime as dt
import multiprocessing as mp
import os
import resource
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from _common import card_name, cpu_name, git_commit, train_step, write_results  # noqa: E501

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from diffenhance.config import Config, load_config  # noqa: E402
from diffenhance.diffusion import Schedule, ddim_sample  # noqa: E402
from diffenhance.nn import build_unet  # noqa: E402

PRETRAINED_SR4 = REPO / "models" / "pretrained" / "sr4"


# ----------------------------------------------------------------------------- the networks


def sr3_overrides(cfg: Config) -> list[str]:
    """Overrides giving our U-Net the anchor's topology: 2 res blocks per level, attention at
    the two lowest levels (downsampling factors 2**(L-1) and 2**(L-2))."""
    n = len(cfg.model.channel_mults)
    lowest = sorted({2 ** max(0, n - 2), 2 ** (n - 1)})
    return ["model.num_res_blocks=2", f"model.attn_resolutions=[{','.join(map(str, lowest))}]"]


class DiffusersSR3(nn.Module):
    """`diffusers.UNet2DModel` behind our signature: forward(x_t [N,3,H,W], t [N], cond
    [N,3,H,W]) -> [N,3,H,W] (concatenates x_t and cond to 6 channels, as SR3 does)."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        from diffusers import UNet2DModel

        m = cfg.model
        widths = tuple(m.base_channels * k for k in m.channel_mults)
        n = len(widths)
        attn = {n - 1, max(0, n - 2)}  # the two lowest levels
        groups = next(g for g in range(32, 0, -1) if all(w % g == 0 for w in widths))
        self.unet = UNet2DModel(
            in_channels=6,
            out_channels=3,
            block_out_channels=widths,
            layers_per_block=2,
            down_block_types=tuple(
                "AttnDownBlock2D" if i in attn else "DownBlock2D" for i in range(n)
            ),
            up_block_types=tuple(
                "AttnUpBlock2D" if i in attn else "UpBlock2D" for i in reversed(range(n))
            ),
            attention_head_dim=m.head_channels,
            norm_num_groups=groups,
            resnet_time_scale_shift="scale_shift",
            dropout=m.dropout,
        )
        self.size_multiple = 2 ** (n - 1)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self.unet(torch.cat([x_t, cond.to(x_t.dtype)], dim=1), t).sample


def build_net(kind: str, cfg: Config) -> nn.Module:
    """'ours' (diffenhance UNet) or 'diffusers' (the anchor), freshly initialised."""
    if kind == "ours":
        return build_unet(cfg.model)
    if kind == "diffusers":
        return DiffusersSR3(cfg)
    raise ValueError(f"unknown network {kind!r}: ours | diffusers")


def n_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def count_flops(kind: str, cfg: Config, size: int) -> dict[str, float]:
    """Forward and training (forward + backward) FLOPs per image at size x size, counted on
    the meta device (no compute; attention counted as the two matmuls of every head)."""
    with torch.device("meta"):
        net = build_net(kind, cfg)
        x = torch.zeros(1, 3, size, size)
        t = torch.full((1,), 500.0)
        with FlopCounterMode(display=False) as fc:
            net(x, t, x)
        fwd = fc.get_total_flops()
        with FlopCounterMode(display=False) as fc:
            net(x, t, x).float().abs().mean().backward()
        train = fc.get_total_flops()
    return {"fwd_flops": float(fwd), "train_flops": float(train)}


# ----------------------------------------------------------------------------- measurements


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_mib(dev: torch.device, rss0: int) -> float:
    if dev.type == "cuda":
        return torch.cuda.max_memory_allocated(dev) / 2**20
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss0) / 2**20


def matmul_ceiling(dev: torch.device, seconds: float = 2.0) -> dict[str, Any]:
    """Best dense matmul FLOP/s of the device: bf16 8192^2 on CUDA, fp32 2048^2 on CPU."""
    n, dtype = (8192, torch.bfloat16) if dev.type == "cuda" else (2048, torch.float32)
    a = torch.randn(n, n, device=dev, dtype=dtype)
    b = torch.randn(n, n, device=dev, dtype=dtype)
    a @ b
    _sync(dev)
    best, t_end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        t0 = time.perf_counter()
        for _ in range(5 if dev.type == "cuda" else 1):
            a @ b
        _sync(dev)
        reps = 5 if dev.type == "cuda" else 1
        best = max(best, reps * 2 * n**3 / (time.perf_counter() - t0))
    return {"flops_per_s": best, "dtype": str(dtype).removeprefix("torch."), "n": n}


def _worker_setup(spec: dict[str, Any]) -> tuple[torch.device, Config, int]:
    rss0 = _rss_bytes()
    torch.set_num_threads(spec["threads"])
    dev = torch.device(spec["device"])
    cfg = load_config(REPO / "params.yaml", spec["overrides"])
    torch.manual_seed(0)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
        torch.cuda.reset_peak_memory_stats(dev)
    return dev, cfg, rss0


def bench_train(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Training step time of each network of spec["nets"], in one process with the timed
    steps interleaved (ours, diffusers, ours, ...), so load from other jobs on a shared machine
    hits both alike; images/s = batch / median step time. With a single network the peak
    memory is that network's own (run it in a fresh process)."""
    dev, cfg, rss0 = _worker_setup(spec)
    nets = {k: build_net(k, cfg).to(dev).to(memory_format=torch.channels_last)
            for k in spec["nets"]}  # fmt: skip
    steps = {k: train_step(n, torch.compile(n) if spec["compile"] else n, cfg.diffusion, dev,
                           spec["size"], spec["batch"]) for k, n in nets.items()}  # fmt: skip
    warm: dict[str, float] = {}
    for k, step in steps.items():
        t0 = time.perf_counter()
        for _ in range(spec["warmup"]):  # compile, cuDNN autotune, allocator
            step()
        _sync(dev)
        warm[k] = time.perf_counter() - t0
    times: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(spec["steps"]):
        for k, step in steps.items():
            t0 = time.perf_counter()
            step()
            _sync(dev)
            times[k].append(time.perf_counter() - t0)
    out = {}
    for k in steps:
        med = statistics.median(times[k])
        out[k] = {"images_per_s": spec["batch"] / med, "step_s": med, "step_s_all": times[k],
                  "warmup_s": warm[k], "params": n_params(nets[k])}  # fmt: skip
        if len(steps) == 1:
            out[k]["peak_mem_mib"] = _peak_mib(dev, rss0)
    return out


def bench_sample(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """DDIM sampling time of each network of spec["nets"] at one output size, batch 1, the
    runs interleaved across networks (see `bench_train`). Seconds per step = the median
    network call + the loop's own share."""
    dev, cfg, rss0 = _worker_setup(spec)
    s, steps = spec["size"], spec["steps"]
    sched = Schedule.from_config(cfg.diffusion).to(dev)
    g = torch.Generator(device=dev).manual_seed(0)
    x_T = torch.randn(1, 3, s, s, device=dev, generator=g).contiguous(
        memory_format=torch.channels_last
    )
    cond = torch.rand(1, 3, s, s, device=dev, generator=g).contiguous(
        memory_format=torch.channels_last
    )
    calls: dict[str, list[float]] = {}
    models = {}
    for k in spec["nets"]:
        net = build_net(k, cfg).to(dev).to(memory_format=torch.channels_last).eval()
        for p in net.parameters():  # non-zero output layers: realistic values in the loop
            if p.ndim > 1 and not p.abs().sum():
                torch.nn.init.normal_(p, std=0.02)
        compiled = torch.compile(net) if spec["compile"] else net
        calls[k] = []

        def model(x, t, c, _f=compiled, _calls=calls[k]):  # noqa: ANN001, ANN202
            _sync(dev)
            t0 = time.perf_counter()
            y = _f(x, t, c)
            _sync(dev)
            _calls.append(time.perf_counter() - t0)
            return y

        models[k] = model

    def run(k: str, n: int) -> torch.Tensor:
        with (
            torch.no_grad(),
            torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"),
        ):
            return ddim_sample(models[k], sched, x_T, cond * 2 - 1, steps=n, prediction="v")

    warm, total = {}, dict.fromkeys(models, 0.0)
    for k in models:
        t0 = time.perf_counter()
        run(k, min(2, steps))  # warm-up (compile, autotune)
        _sync(dev)
        warm[k] = time.perf_counter() - t0
        calls[k].clear()
    for _ in range(spec["repeats"]):
        for k in models:
            t0 = time.perf_counter()
            y = run(k, steps)
            _sync(dev)
            total[k] += time.perf_counter() - t0
            assert torch.isfinite(y).all()
    out = {}
    for k in models:
        c = calls[k]
        assert len(c) == steps * spec["repeats"]
        per_step = statistics.median(c) + (total[k] - sum(c)) / len(c)
        out[k] = {"seconds_per_image": per_step * steps, "seconds_per_step": per_step,
                  "seconds_total_measured": total[k], "call_s_all": list(c),
                  "megapixels_per_s": s * s / 1e6 / (per_step * steps), "warmup_s": warm[k]}  # fmt: skip
        if len(models) == 1:
            out[k]["peak_mem_mib"] = _peak_mib(dev, rss0)
    return out


def bench_enhance(spec: dict[str, Any]) -> dict[str, Any]:
    """Our product path: `restore.restore` at the params.yaml infer defaults (fresh process)."""
    import numpy as np

    from diffenhance.model import WEIGHTS_NAME, build_restorer, load_restorer
    from diffenhance.restore import restore, sampling_spec

    dev, cfg, rss0 = _worker_setup(spec)
    if (PRETRAINED_SR4 / WEIGHTS_NAME).is_file():
        r, source = load_restorer(PRETRAINED_SR4, dev), "models/pretrained/sr4"
    else:
        r = build_restorer(cfg.model, cfg.diffusion, "sr4", cfg.degrade).to(dev)
        source = "params.yaml model (untrained)"
    sampling = sampling_spec(r, cfg.infer)
    rng = np.random.default_rng(0)
    side = spec["size"] // r.scale
    lq = rng.random((side, side, 3), dtype=np.float32)
    restore(r, lq[: side // 2, : side // 2], sampling)  # warm-up
    _sync(dev)
    t0 = time.perf_counter()
    out = restore(r, lq, sampling)
    _sync(dev)
    sec = time.perf_counter() - t0
    return {
        "model": source,
        "formulation": r.diffusion_cfg.formulation,
        "params": n_params(r.unet),
        "infer": sampling.describe(),  # the resolved SamplingSpec
        "input_px": side,
        "output_px": out.shape[0],
        "seconds_per_image": sec,
        "megapixels_per_s": out.shape[0] * out.shape[1] / 1e6 / sec,
        "peak_mem_mib": _peak_mib(dev, rss0),
    }


def in_fresh_process(fn: Any, spec: dict[str, Any]) -> dict[str, Any]:
    """Run fn(spec) in a new (spawned) process; its peak memory is its own."""
    with cf.ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as ex:
        return ex.submit(fn, spec).result()


# ----------------------------------------------------------------------------- report


def machine(dev: torch.device) -> dict[str, str]:
    return {"cpu": cpu_name(), "card": card_name(dev), "torch": torch.__version__}


def commit() -> str:
    return git_commit()


def _mib(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f}"


def markdown(res: dict[str, Any]) -> str:
    """The RESULTS.md section of one run: setup lines, then the speed table."""
    a, m = res["args"], res["machine"]
    ceil = res["ceiling"]
    lines = [
        f"### Speed: our U-Net vs diffusers UNet2DModel (SR3 anchor), {res['date'][:10]}",
        "",
        f"- card: {m['card']}; machine: {m['cpu']}, torch {m['torch']}, "
        f"{a['threads']} threads; commit {res['commit']}",
        f"- command: `{res['command']}`",
        f"- matmul ceiling (same run): {ceil['flops_per_s'] / 1e9:.1f} GFLOP/s "
        f"({ceil['dtype']} {ceil['n']}^2); MFU = training FLOPs/s / ceiling",
        f"- topology (both): {res['topology']}; training {a['size']} px crops x{a['batch']}; "
        f"sampling {a['sample_size']} px output, {a['sample_steps']} DDIM steps x "
        f"{a['repeats']} runs, batch 1",
    ]
    load = res.get("loadavg")
    if load:
        lines.append(
            f"- 1-min load average at start / end: {load['start']:.2f} / {load['end']:.2f} "
            f"on {os.cpu_count()} cores (other jobs slow every number; timings interleave the "
            "two networks so both see the same load)"
        )
    if res["device"] == "cpu":
        lines.append(
            f"- CPU run: sizes reduced from 512 px to {a['sample_size']} px output; fp32 (no "
            "autocast, so the ceiling is fp32 matmul)"
        )
    lines += [
        "",
        "| network | mode | params | train GFLOP/img | img/s train | MFU | train peak MiB "
        "| sample GFLOP/step | s/step | s/img | MP/s | sample peak MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in res["rows"]:
        t, s = row["train"], row["sample"]
        lines.append(
            f"| {row['net']} | {row['mode']} | {row['params'] / 1e6:.3f}M "
            f"| {row['train_flops'] / 1e9:.2f} | {t['images_per_s']:.2f} | {row['mfu']:.1%} "
            f"| {_mib(t['peak_mem_mib'])} | {row['sample_fwd_flops'] / 1e9:.2f} "
            f"| {s['seconds_per_step']:.4f} | {s['seconds_per_image']:.3f} "
            f"| {s['megapixels_per_s']:.4f} | {_mib(s['peak_mem_mib'])} |"
        )
    lines.append("")
    for mode, r in res["ratios"].items():
        lines.append(
            f"- {mode}: ours / diffusers training throughput {r['train']:.2f}x (target >= 1.5x "
            f"compiled), sampling per-step time {r['step']:.2f}x of diffusers (target <= 1.0x)"
        )
    e = res.get("enhance")
    if e:
        lines += [
            f"- product path (`restore.restore`, {e['model']}, formulation "
            f"{e['formulation']}, infer {e['infer']}): {e['input_px']} -> {e['output_px']} px "
            f"in {e['seconds_per_image']:.3f} s/img, {e['megapixels_per_s']:.4f} MP/s, "
            f"peak {e['peak_mem_mib']:.0f} MiB",
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    ap.add_argument("--size", type=int, default=None, help="training crop (128; CPU 64)")
    ap.add_argument("--batch", type=int, default=None, help="training batch (32; CPU 4)")
    ap.add_argument("--train-steps", type=int, default=None, help="timed steps (30; CPU 5)")
    ap.add_argument("--sample-size", type=int, default=None, help="output px (512; CPU 128)")
    ap.add_argument("--sample-steps", type=int, default=None, help="DDIM steps (20; CPU 4)")
    ap.add_argument("--repeats", type=int, default=3, help="sampling runs (median call)")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument(
        "--compile",
        choices=["auto", "yes", "no", "both"],
        default="auto",
        help="torch.compile both networks: auto = both eager and compiled on CUDA, eager on CPU",
    )
    ap.add_argument("--no-enhance", action="store_true", help="skip the product-path timing")
    ap.add_argument(
        "--memory-compiled",
        action="store_true",
        help="also measure peak memory of the compiled networks (4 more compilations)",
    )
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "bench-speed-out")))
    ap.add_argument("--record", action="store_true", help="append the table to RESULTS.md")
    ap.add_argument("overrides", nargs="*", help="params.yaml overrides for the width, e.g. "
                    "model.base_channels=64")  # fmt: skip
    args = ap.parse_args(argv)
    dev = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    cuda = dev.type == "cuda"
    size = args.size or (128 if cuda else 64)
    batch = args.batch or (32 if cuda else 4)
    tsteps = args.train_steps or (30 if cuda else 5)
    ssize = args.sample_size or (512 if cuda else 128)
    ssteps = args.sample_steps or (20 if cuda else 4)
    compile_modes = {"auto": [False, True] if cuda else [False], "yes": [True], "no": [False],
                     "both": [False, True]}[args.compile]  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    load0 = os.getloadavg()[0]

    base = load_config(REPO / "params.yaml", args.overrides)
    overrides = [*args.overrides, *sr3_overrides(base)]
    cfg = load_config(REPO / "params.yaml", overrides)
    topo = (
        f"widths {[cfg.model.base_channels * k for k in cfg.model.channel_mults]}, 2 res blocks "
        f"per level, attention at downsampling {list(cfg.model.attn_resolutions)} + middle, "
        f"head width {cfg.model.head_channels}"
    )
    print(f"bench_speed on {dev}: {topo}", flush=True)
    ceiling = matmul_ceiling(dev)
    print(f"matmul ceiling: {ceiling['flops_per_s'] / 1e9:.1f} GFLOP/s", flush=True)
    common = {"device": str(dev), "threads": args.threads, "overrides": overrides}
    rows = []
    nets = ("ours", "diffusers")
    for compiled in compile_modes:
        mode = "compiled" if compiled else "eager"
        base_spec = {**common, "compile": compiled}
        tspec = {**base_spec, "size": size, "batch": batch, "warmup": 3 if cuda else 1}
        sspec = {**base_spec, "size": ssize, "steps": ssteps}
        # Timings: both networks in one process, interleaved.
        tr = in_fresh_process(bench_train, {**tspec, "nets": nets, "steps": tsteps})
        sa = in_fresh_process(bench_sample, {**sspec, "nets": nets, "repeats": args.repeats})
        for net in nets:
            # Peak memory: each network alone in a fresh process (2 steps / 1 sampling run);
            # with --memory-compiled also for compiled mode (each costs 2 more compilations).
            tr[net]["peak_mem_mib"] = sa[net]["peak_mem_mib"] = None
            if not compiled or args.memory_compiled:
                tm = in_fresh_process(bench_train, {**tspec, "nets": [net], "steps": 2})[net]
                sm = in_fresh_process(bench_sample, {**sspec, "nets": [net], "repeats": 1})[net]
                tr[net]["peak_mem_mib"] = tm["peak_mem_mib"]
                sa[net]["peak_mem_mib"] = sm["peak_mem_mib"]
            fl_train = count_flops(net, cfg, size)
            fl_sample = count_flops(net, cfg, ssize)
            mfu = fl_train["train_flops"] * tr[net]["images_per_s"] / ceiling["flops_per_s"]
            row = {"net": net, "mode": mode, "params": tr[net]["params"],
                   "train_flops": fl_train["train_flops"], "fwd_flops": fl_train["fwd_flops"],
                   "sample_fwd_flops": fl_sample["fwd_flops"], "mfu": mfu,
                   "train": tr[net], "sample": sa[net]}  # fmt: skip
            rows.append(row)
            print(
                f"{net:>9} {mode}: {tr[net]['images_per_s']:.2f} img/s train (MFU {mfu:.1%}), "
                f"{sa[net]['seconds_per_step']:.4f} s/step sampling",
                flush=True,
            )
    ratios = {}
    for mode in dict.fromkeys(r["mode"] for r in rows):  # eager first
        o = next(r for r in rows if r["net"] == "ours" and r["mode"] == mode)
        d = next(r for r in rows if r["net"] == "diffusers" and r["mode"] == mode)
        ratios[mode] = {
            "train": o["train"]["images_per_s"] / d["train"]["images_per_s"],
            "step": o["sample"]["seconds_per_step"] / d["sample"]["seconds_per_step"],
            "params": o["params"] / d["params"],
            "flops": o["train_flops"] / d["train_flops"],
        }
    enhance = None
    if not args.no_enhance:
        enhance = in_fresh_process(
            bench_enhance, {**common, "overrides": args.overrides, "size": ssize}
        )
        print(f"enhance: {enhance['seconds_per_image']:.3f} s/img", flush=True)
    res = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "commit": commit(),
        "command": shlex.join(["python", "benchmarks/bench_speed.py", *(argv or sys.argv[1:])]),
        "machine": machine(dev),
        "device": dev.type,
        "args": {
            "size": size,
            "batch": batch,
            "train_steps": tsteps,
            "sample_size": ssize,
            "sample_steps": ssteps,
            "repeats": args.repeats,
            "threads": args.threads,
        },  # fmt: skip
        "topology": topo,
        "loadavg": {"start": load0, "end": os.getloadavg()[0]},
        "ceiling": ceiling,
        "rows": rows,
        "ratios": ratios,
        "enhance": enhance,
    }
    write_results(args.out, "bench_speed", res, markdown(res), args.record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
