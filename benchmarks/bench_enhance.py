"""Throughput of batch enhancement: images/s and output megapixels/s.

Runs the real job (`diffenhance.enhance.run_job`: listing, shards, tiled inference, atomic
PNG writes, manifests) on a folder of synthetic images, for the tiny test model and for the
default model of params.yaml, each with untrained weights (speed does not depend on them),
over the tile settings given. Inference time dominates; listing and writing are included.

    python benchmarks/bench_enhance.py                           # CPU, ~2-4 min on 2 cores
    python benchmarks/bench_enhance.py --device cuda --images 32 --side 256
    python benchmarks/bench_enhance.py --record                  # append rows to RESULTS.md

Prints a Markdown table; --record appends it to benchmarks/RESULTS.md with the machine,
card, date and command. Needs no prefect/dvc/boto3.
"""

from __future__ import annotations

import argparse
import datetime as dt
import shlex
import sys
import tempfile
import time
from pathlib import Path

from _common import card_name, cpu_name  # benchmarks/_common.py

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from diffenhance.config import load_config  # noqa: E402
from diffenhance.enhance import run_job  # noqa: E402
from diffenhance.io import write_image  # noqa: E402
from diffenhance.model import build_restorer, checkpoint_metadata, save_weights  # noqa: E402

TINY = [
    "model.base_channels=16",
    "model.channel_mults=[1,2]",
    "model.num_res_blocks=1",
    "model.attn_resolutions=[2]",
    "model.head_channels=16",
]
MODELS = {"tiny": TINY, "default": []}


def machine() -> tuple[str, str]:
    return f"{cpu_name()}, torch {torch.__version__}", card_name()


def make_inputs(folder: Path, n: int, side: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:side, 0:side].astype(np.float32) / side
    for i in range(n):
        f = rng.uniform(2, 9, size=(3, 2))
        img = np.stack([0.5 + 0.5 * np.sin(6.28 * (f[c, 0] * x + f[c, 1] * y)) for c in range(3)])
        write_image(folder / f"img{i:03d}.png", img.transpose(1, 2, 0).astype(np.float32))


def checkpoint(path: Path, model_overrides: list[str], task: str) -> Path:
    cfg = load_config(None, model_overrides)
    torch.manual_seed(0)
    r = build_restorer(cfg.model, cfg.diffusion, task, cfg.degrade)
    return save_weights(path, r.unet.state_dict(), checkpoint_metadata(r, step=0))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="tiny,default", help="tiny, default (comma-separated)")
    p.add_argument("--task", default="sr4")
    p.add_argument("--images", type=int, default=4)
    p.add_argument("--side", type=int, default=96, help="input image side (px)")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--tiles", default="32:8,64:16", help="tile:overlap pairs (input px)")
    p.add_argument("--tile-batch", type=int, default=8)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--record", action="store_true", help="append to benchmarks/RESULTS.md")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-enhance-") as tmp:
        root = Path(tmp)
        make_inputs(root / "in", a.images, a.side)
        for name in a.models.split(","):
            ckpt = checkpoint(root / f"{name}.safetensors", MODELS[name], a.task)
            for spec in a.tiles.split(","):
                tile, overlap = (int(v) for v in spec.split(":"))
                out = root / f"out-{name}-{tile}"
                cfg = load_config(
                    None,
                    [
                        f"enhance.input={root / 'in'}",
                        f"enhance.output={out}",
                        f"enhance.model={ckpt}",
                        f"infer.steps={a.steps}",
                        f"infer.tile={tile}",
                        f"infer.tile_overlap={overlap}",
                        f"infer.tile_batch={a.tile_batch}",
                        f"infer.device={a.device}",
                    ],
                )
                t0 = time.perf_counter()
                s = run_job(cfg)
                wall = time.perf_counter() - t0
                assert s["enhanced"] == a.images and s["failed"] == 0, s
                rows.append(
                    f"| {name} | {a.task} | {a.images} x {a.side}px | {a.steps} | "
                    f"{tile}/{overlap}/{a.tile_batch} | {s['images_per_s']:.3f} | "
                    f"{s['megapixels_per_s']:.4f} | {wall:.1f} |"
                )
                print(rows[-1], flush=True)
    cpu, card = machine()
    cmd = "python benchmarks/bench_enhance.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    table = "\n".join(
        [
            f"### Enhancement throughput, {dt.date.today().isoformat()}",
            "",
            f"- machine: {cpu}",
            f"- card: {card}",
            f"- command: `{cmd.strip()}`",
            "",
            "| model | task | inputs | steps | tile/overlap/batch | images/s | output MP/s | wall s |",
            "|---|---|---|---|---|---|---|---|",
            *rows,
            "",
        ]
    )
    print(table)
    if a.record:
        results = REPO / "benchmarks" / "RESULTS.md"
        if not results.exists():
            results.write_text(
                "# Benchmark results\n\nEach entry: machine, card, date and the command that "
                "produced it.\n\n"
            )
        with results.open("a") as f:
            f.write("\n" + table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
