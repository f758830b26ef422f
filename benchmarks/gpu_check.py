"""Every GPU-side check in one run: the `gpu` tests, a training-throughput benchmark, a
short real bf16 training run on 128 px patches of the bundled photos, the speed benchmark
against diffusers (benchmarks/bench_speed.py), and the pretrained models trained from their
recipes (benchmarks/train_pretrained.py, into --out/pretrained/<task>, not models/pretrained)
then scored (benchmarks/bench_quality.py), and issue 21's next measurement (`knob`): the
shipped sr4 flow trained on from its recipe (params-sr4-pmrf.yaml; 10000 steps at batch 32,
the CPU recipe's 6000 at batch 8 seen 6.7 times over) and its fidelity/detail knob measured
on the held-out photos (benchmarks/bench_knob.py --set-presets, into --out/knob/bench), and
the one after it (`wide`): a sharper posterior mean, sr4's stage 1 with an EDSR-baseline-size
predictor trained from scratch, the flow trained on it, both fitted to --wide-seconds by a
100-step probe of each, and the same knob measurement (into --out/wide/bench).

    python benchmarks/gpu_check.py --out $OUT            # on the GPU machine
    python benchmarks/gpu_check.py --cpu --out /tmp/gc   # check the script itself on a CPU (~8 min)
    python benchmarks/gpu_check.py --out $OUT --skip pretrained   # split over two commands
    python benchmarks/gpu_check.py --out $OUT --skip speed        # when one has a time limit
    python benchmarks/gpu_check.py --out $OUT --only knob         # issue 21's measurement alone
    python benchmarks/gpu_check.py --out $OUT --only wide         # a wider stage 1: --wide-seconds
                                                                  # + probes, data, bench (unmeasured)

Needs only torch, numpy, pandas, pillow, scikit-image, pytest and pydantic (no prefect/dvc/
boto3; where the image has no pydantic, its wheels from `.whl/site`, fetched here with
`python benchmarks/gpu_deps.py fetch` and carried along with `.whl`): the
library is put on sys.path from src/ and its stage functions (`prepare_dataset`,
`pairs.degrade_stage`, `train_model`) are called directly, never the flows; without prefect,
train_pretrained.py trains with `python -m diffenhance.train` (what the `train` flow runs). The
speed benchmark also needs diffusers (the `bench`
extra) and is recorded as skipped without it. The pretrained step trains on the extra photos
(benchmarks/extra_photos.py), read from the wheels in `.whl/`: fetch them first where the
registry is reachable (`python benchmarks/extra_photos.py /tmp/x`) and carry `.whl` along.
Writes `gpu_check.json` and `gpu_check.md` (rows
for benchmarks/RESULTS.md) under --out, and each step's own files in a subfolder.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import git_commit, train_step  # benchmarks/_common.py
from gpu_deps import ensure  # benchmarks/gpu_deps.py

ensure()  # pydantic (params validation) from carried wheels where the image lacks it

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from diffenhance.config import load_config  # noqa: E402
from diffenhance.nn import build_unet  # noqa: E402


def device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def run_gpu_tests(cpu: bool, out: Path) -> dict:
    env = {**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
    if cpu:
        env["DIFFENHANCE_GPU_TESTS_ON_CPU"] = "1"
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider"]
    cmd += ["--noconftest", "tests/test_gpu.py"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    (out / "gpu_tests.log").write_text(proc.stdout + proc.stderr)
    tail = (proc.stdout.strip().splitlines() or ["(no output)"])[-1]
    return {"returncode": proc.returncode, "summary": tail, "seconds": time.perf_counter() - t0}


def bench_train(dev: torch.device, size: int, batch: int, steps: int, overrides: list[str]) -> dict:
    """Images/s of the training step (bf16 autocast on CUDA, channels_last) on random data."""
    cfg = load_config(REPO / "params.yaml", overrides)
    torch.manual_seed(0)
    net = build_unet(cfg.model).to(dev).to(memory_format=torch.channels_last)
    step = train_step(net, net, cfg.diffusion, dev, size, batch)
    for _ in range(3):  # warm-up (cuDNN autotune, allocator)
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = step()
    float(loss.detach())
    if dev.type == "cuda":
        torch.cuda.synchronize()
    sec = time.perf_counter() - t0
    params = sum(p.numel() for p in net.parameters())
    return {
        "size": size,
        "batch": batch,
        "steps": steps,
        "params_m": params / 1e6,
        "images_per_s": batch * steps / sec,
        "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if dev.type == "cuda" else None,
    }


def real_training(dev: torch.device, steps: int, crop: int, batch: int, out: Path) -> dict:
    """A short real run of train_model on the bundled photos (the library's prepare and degrade
    stage functions, in-process: no flows, so no prefect needed)."""
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        return _train_in(Path(tmp), dev, steps, crop, batch, out)


def _train_in(work: Path, dev: torch.device, steps: int, crop: int, batch: int, out: Path) -> dict:
    import pandas as pd

    from diffenhance.data import prepare_dataset
    from diffenhance.data.pairs import degrade_stage
    from diffenhance.train import train_model

    cfg = load_config(
        REPO / "params.yaml",
        [
            f"data.raw_dir={work / 'raw'}",
            f"data.prepared_dir={work / 'prepared'}",
            "data.crop_size=256",
            "data.crop_step=128",
            f"degrade.out_dir={work / 'degraded'}",
            "degrade.val_max_images=4",
            f"train.out_dir={work / 'models'}",
            "train.init_from=null",  # a real run from scratch, not a fine-tune of the shipped
            "diffusion.options.pmrf.train_mean=true",  # so stage 1 is trained too, not loaded
            f"train.steps={steps}",
            f"train.batch_size={batch}",
            f"train.crop_size={crop}",
            f"train.val_every={steps}",
            f"train.ckpt_every={steps}",
            f"train.log_every={max(1, steps // 10)}",
            f"train.device={dev}",
            f"train.num_workers={min(8, os.cpu_count() or 1) if dev.type == 'cuda' else 0}",
        ],
    )
    prepare_dataset(cfg.data)  # the `prepare` and `degrade` stages, as library calls
    degrade_stage(cfg, ["sr4"])
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    model_dir = train_model(cfg, "sr4")
    sec = time.perf_counter() - t0
    log = pd.read_csv(model_dir / "train_log.csv")
    log.to_csv(out / "train_log.csv", index=False)
    return {
        "steps": steps,
        "crop": crop,
        "batch": batch,
        "seconds": sec,
        "images_per_s_logged": float(log["images_per_s"].iloc[-1]),
        "final_loss": float(log["loss"].iloc[-1]),
        "val_psnr": float(log["val_psnr"].dropna().iloc[-1]),
        "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if dev.type == "cuda" else None,
    }


def _script(name: str, args: list[str], log: Path) -> dict:
    """Run benchmarks/<name> in a subprocess; its output goes to `log`."""
    cmd = [sys.executable, str(REPO / "benchmarks" / name), *args]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    log.write_text(f"$ {' '.join(cmd)}\n{proc.stdout}{proc.stderr}")
    tail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-3:]
    return {"returncode": proc.returncode, "seconds": time.perf_counter() - t0, "tail": tail}


def run_speed(cpu: bool, out: Path) -> dict:
    """benchmarks/bench_speed.py (ours vs diffusers); skipped when diffusers is missing."""
    import importlib.util

    if importlib.util.find_spec("diffusers") is None:
        return {"skipped": "diffusers is not installed (pip install -e .[bench])"}
    args = ["--out", str(out / "speed")]
    if cpu:
        args += ["--device", "cpu", "--size", "32", "--batch", "2", "--train-steps", "2"]
        args += ["--sample-size", "32", "--sample-steps", "2", "model.base_channels=16"]
    res = _script("bench_speed.py", args, out / "speed.log")
    if res["returncode"] == 0:
        res["result"] = json.loads((out / "speed" / "bench_speed.json").read_text())
    return res


PRETRAINED_GPU = ["train.device=cuda", "train.batch_size=32", "train.num_workers=8",
                  "train.val_every=500", "train.ckpt_every=500", "train.log_every=50"]  # fmt: skip
PRETRAINED_CPU = ["model.base_channels=16", "model.channel_mults=[1,2]", "model.head_channels=16",
                  "model.attn_resolutions=[2]", "train.val_every=2", "train.ckpt_every=2",
                  "train.val_images=1", "train.log_every=1"]  # fmt: skip


def run_pretrained(cpu: bool, steps: int, out: Path) -> dict:
    """Train each shipped model from its recipe into out/pretrained/<task>, then score them
    with bench_quality.py (into out/quality)."""
    res: dict = {}
    extra = [*(PRETRAINED_CPU if cpu else PRETRAINED_GPU), f"train.steps={steps}"]
    for task in ("sr4", "denoise"):
        args = ["--task", task, "--dest", str(out / "pretrained"), "--extra-photos", *extra]
        r = _script("train_pretrained.py", args, out / f"pretrained-{task}.log")
        if r["returncode"] == 0:
            r["record"] = json.loads((out / "pretrained" / task / "training.json").read_text())
        res[task] = r
    if all(r["returncode"] == 0 for r in res.values()):
        args = ["--models", str(out / "pretrained"), "--out", str(out / "quality")]
        args += ["--val-size", "64", "--steps", "1"] if cpu else []
        q = _script("bench_quality.py", args, out / "quality.log")
        if q["returncode"] == 0:
            q["result"] = json.loads((out / "quality" / "bench_quality.json").read_text())
        res["quality"] = q
    return res


# Issue 21's next measurement: the shipped sr4 flow (stage 2 of params-sr4-pmrf.yaml, from the
# shipped model) trained on, with 4x the CPU recipe's batch; on the CPU, 2 steps of the real
# architecture (its init_from loads the shipped weights strictly) to check the step itself.
KNOB_RECIPE = REPO / "benchmarks" / "pretrained" / "params-sr4-pmrf.yaml"
KNOB_CPU = ["train.batch_size=2", "train.val_every=2", "train.ckpt_every=2", "train.val_images=1",
            "train.log_every=1"]  # fmt: skip


def run_knob(cpu: bool, steps: int, out: Path) -> dict:
    """Train the sr4 flow on from the shipped model (into out/knob/sr4), then measure its knob
    on the held-out photos with bench_knob.py --set-presets (the presets issue 21's bars pick,
    recorded in that checkpoint; into out/knob/bench)."""
    extra = [*(KNOB_CPU if cpu else PRETRAINED_GPU), f"train.steps={steps}"]
    args = ["--task", "sr4", "--params", str(KNOB_RECIPE), "--dest", str(out / "knob")]
    res = {"train": _script("train_pretrained.py", [*args, "--extra-photos", *extra],
                            out / "knob-train.log")}  # fmt: skip
    if res["train"]["returncode"] != 0:
        return res
    res["train"]["record"] = json.loads((out / "knob" / "sr4" / "training.json").read_text())
    args = ["--model", str(out / "knob" / "sr4"), "--out", str(out / "knob" / "bench")]
    args += ["--set-presets"]
    if cpu:
        args += ["--val-size", "64", "--steps", "1,2", "--detail", "0,1", "--unc-samples", "2"]
    res["bench"] = _script("bench_knob.py", args, out / "knob-bench.log")
    return res


STAGE1_RECIPE = REPO / "benchmarks" / "pretrained" / "params-sr4.yaml"
# Issue 21's next measurement: the price of detail is set by the posterior mean's HF ratio h0
# (RESULTS.md, "what the 2.0 dB bar asks"), and the CPU-width mean plateaued (30.13 / 30.14 /
# 30.16 dB at 3000 / 6000 / 9000 steps). A wider stage 1: its predictor (the regressor that
# makes most of mu) at EDSR-baseline size, 64 channels x 16 blocks instead of 16 x 8; the U-Nets
# stay. 3.75M parameters with the flow, 15 MB: within the 20 MB a shipped model may take.
WIDE = ["diffusion.options.residual.predictor_channels=64", "model.options.lr.predictor_blocks=16"]
WIDE_CPU = [*PRETRAINED_CPU, "train.batch_size=2", "diffusion.options.residual.predictor_channels=8",
            "model.options.lr.predictor_blocks=2"]  # fmt: skip
WIDE_FLOW = ["train.lr=0.001", "train.warmup_steps=100"]  # a new flow, not a fine-tune
PROBE_STEPS = 100  # GPU: the probe runs that time one step of each stage (logged every 25)


def probe_rate(record_dir: Path) -> float:
    """Training steps per second of a probe run: images/s of its logged windows (the first,
    with cuDNN's autotune and the allocator's warm-up, left out), over its batch size."""
    import pandas as pd

    log = pd.read_csv(record_dir / "train_log.csv").dropna(subset=["images_per_s"])
    batch = json.loads((record_dir / "training.json").read_text())["batch_size"]
    ips = log["images_per_s"].iloc[1:] if len(log) > 1 else log["images_per_s"]
    return float(ips.median()) / batch


def fitted_steps(seconds: float, steps_per_s: float) -> int:
    """Training steps that fit `seconds` with 15% left for validation, checkpoints and the
    start (whole hundreds, at least 200)."""
    return max(200, int(seconds * steps_per_s * 0.85) // 100 * 100)


def run_wide(cpu: bool, seconds: float, out: Path) -> dict:
    """A wider stage 1 for sr4 trained from scratch (params-sr4.yaml + WIDE), the pmrf flow
    trained on it (params-sr4-pmrf.yaml + WIDE, init_from the new mean), then its knob measured
    with bench_knob.py --set-presets (into out/wide/bench). Each stage gets its share of
    `seconds` (55% / 45%), in steps fitted from a short probe run of that stage. Its fidelity
    end is the new mean: its HF ratio h0 against the shipped sr4's 0.261 says whether a detail
    preset can pass the 2.0 dB bar."""
    base = WIDE_CPU if cpu else [*PRETRAINED_GPU, *WIDE]
    wide = out / "wide"
    res: dict = {}

    def flow(mean: Path) -> list[str]:
        return [*base, *WIDE_FLOW, f"train.init_from={mean}"]

    def train(name: str, recipe: Path, overrides: list[str], steps: int) -> bool:
        every = ["train.log_every=25", f"train.val_every={steps}"] if not cpu else []
        # train_pretrained.py's options, then the overrides (its positional arguments)
        args = ["--task", "sr4", "--extra-photos", "--dest", str(wide / name), "--params",
                str(recipe), *overrides, *every, f"train.steps={steps}"]  # fmt: skip
        r = _script("train_pretrained.py", args, out / f"wide-{name}.log")
        if r["returncode"] == 0:
            r["record"] = json.loads((wide / name / "sr4" / "training.json").read_text())
        res[name] = r
        return r["returncode"] == 0

    probe = 2 if cpu else PROBE_STEPS
    if not train("probe-stage1", STAGE1_RECIPE, base, probe):
        return res
    if not train("probe-flow", KNOB_RECIPE, flow(wide / "probe-stage1" / "sr4"), probe):
        return res
    try:
        rates = {k: probe_rate(wide / f"probe-{k}" / "sr4") for k in ("stage1", "flow")}
    except (OSError, KeyError, ValueError) as e:  # a probe's log unreadable: say so, go on
        res["plan"] = {"returncode": 1, "tail": [f"probe rates: {type(e).__name__}: {e}"]}
        return res
    plan = {k: 2 if cpu else fitted_steps(seconds * share, rates[k])
            for k, share in (("stage1", 0.55), ("flow", 0.45))}  # fmt: skip
    res["plan"] = {"seconds": seconds, "steps_per_s": rates, "steps": plan}
    print(f"wide: {res['plan']}", flush=True)
    if not train("stage1", STAGE1_RECIPE, base, plan["stage1"]):
        return res
    if not train("flow", KNOB_RECIPE, flow(wide / "stage1" / "sr4"), plan["flow"]):
        return res
    args = ["--model", str(wide / "flow" / "sr4"), "--out", str(wide / "bench"), "--set-presets"]
    if cpu:
        args += ["--val-size", "64", "--steps", "1,2", "--detail", "0,1", "--unc-samples", "2"]
    res["bench"] = _script("bench_knob.py", args, out / "wide-bench.log")
    return res


STEPS = ("tests", "train", "speed", "pretrained", "knob", "wide")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu", action="store_true", help="tiny sizes on the CPU (checks the script)")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu-check-out")))
    ap.add_argument("--train-steps", type=int, default=None)
    ap.add_argument("--pretrained-steps", type=int, default=None, help="GPU 2000, CPU 2")
    ap.add_argument("--knob-steps", type=int, default=None, help="GPU 10000, CPU 2")
    ap.add_argument(
        "--wide-seconds",
        type=float,
        default=300.0,
        help="GPU training time of the wide step's two stages (default 300); the probes, data "
        "and bench come on top",
    )
    ap.add_argument("--skip", default="", help=f"comma-separated, of: {','.join(STEPS)}")
    ap.add_argument("--only", default="", help="comma-separated: run only these steps")
    args = ap.parse_args()
    skip = {s for s in args.skip.split(",") if s}
    if args.only:
        skip |= set(STEPS) - set(args.only.split(","))
    if unknown := (skip | set(filter(None, args.only.split(",")))) - set(STEPS):
        ap.error(f"unknown step(s) {', '.join(sorted(unknown))}; the steps: {', '.join(STEPS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.cpu and not torch.cuda.is_available():
        print("error: no CUDA device; use --cpu to check the script on a CPU", file=sys.stderr)
        return 2
    dev = torch.device("cpu" if args.cpu else "cuda")
    result: dict = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "device": device_name(dev),
        "torch": torch.__version__,
        "commit": git_commit(),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    }
    print(f"gpu_check: {result['device']}, torch {result['torch']}", flush=True)
    if "tests" not in skip:
        result["gpu_tests"] = run_gpu_tests(args.cpu, args.out)
        print(f"gpu tests: {result['gpu_tests']['summary']}", flush=True)
    if "train" not in skip and args.cpu:
        result["bench_train"] = bench_train(dev, 32, 4, 3, ["model.base_channels=16"])
        steps = args.train_steps or 4
        result["real_training"] = real_training(dev, steps, 64, 2, args.out)
    elif "train" not in skip:
        result["bench_train"] = bench_train(dev, 128, 32, 20, [])
        steps = args.train_steps or 300
        result["real_training"] = real_training(dev, steps, 128, 32, args.out)
    if "speed" not in skip:
        result["speed"] = run_speed(args.cpu, args.out)
        print(f"speed: {result['speed'].get('skipped') or result['speed']['tail']}", flush=True)
    if "pretrained" not in skip:
        psteps = args.pretrained_steps or (2 if args.cpu else 2000)
        result["pretrained"] = run_pretrained(args.cpu, psteps, args.out)
        print(f"pretrained: {[(k, v['returncode']) for k, v in result['pretrained'].items()]}")
    if "knob" not in skip:
        result["knob"] = run_knob(args.cpu, args.knob_steps or (2 if args.cpu else 10000), args.out)
        print(f"knob: {[(k, v['returncode'], v['tail']) for k, v in result['knob'].items()]}")
    if "wide" not in skip:
        result["wide"] = run_wide(args.cpu, args.wide_seconds, args.out)
        print(
            f"wide: {[(k, v.get('returncode'), v.get('tail')) for k, v in result['wide'].items()]}"
        )
    print(json.dumps(result, indent=2), flush=True)
    (args.out / "gpu_check.json").write_text(json.dumps(result, indent=2))
    md = ""
    if "bench_train" in result:
        b, t = result["bench_train"], result["real_training"]
        mem = f"{b['peak_mem_gib']:.2f} GiB" if b["peak_mem_gib"] is not None else "n/a"
        md = (
            f"| {result['date'][:10]} | {result['device']} | {result['commit']} | "
            f"train step {b['size']} px x{b['batch']} ({b['params_m']:.1f}M params) | "
            f"{b['images_per_s']:.1f} img/s | {mem} | real run {t['steps']} steps: "
            f"{t['images_per_s_logged']:.1f} img/s, val PSNR {t['val_psnr']:.2f} dB | "
            f"`{result['command']}` |\n"
        )
    for sub in (args.out / "speed" / "bench_speed.md", args.out / "quality" / "bench_quality.md",
                args.out / "knob" / "bench" / "bench_knob.md",
                args.out / "wide" / "bench" / "bench_knob.md"):  # fmt: skip
        if sub.is_file():  # the benchmarks' own RESULTS.md sections
            md += "\n" + sub.read_text()
    (args.out / "gpu_check.md").write_text(md)
    print(md)
    steps_ok = [result.get("speed", {}).get("returncode", 0)]
    steps_ok += [
        v["returncode"] for k in ("pretrained", "knob", "wide")
        for v in result.get(k, {}).values() if "returncode" in v
    ]  # fmt: skip
    return 0 if result.get("gpu_tests", {}).get("returncode", 0) == 0 and not any(steps_ok) else 1


if __name__ == "__main__":
    sys.exit(main())
