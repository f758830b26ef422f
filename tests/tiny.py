"""Tiny synthetic datasets and configs shared by the model/training/evaluation tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from diffenhance.config import Config, load_config
from diffenhance.data.folder import file_sha256
from diffenhance.data.pairs import degrade_stage
from diffenhance.io import write_image

TINY_MODEL = [
    "model.base_channels=16",
    "model.channel_mults=[1,2]",
    "model.num_res_blocks=1",
    "model.attn_resolutions=[2]",
    "model.head_channels=16",
    "diffusion.timesteps=100",
]


def smooth_image(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A smooth random colour image (sum of a few low-frequency waves), float32 in [0,1]."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.zeros((h, w, 3), np.float32)
    for c in range(3):
        for _ in range(3):
            fy, fx, ph = rng.uniform(0.02, 0.2), rng.uniform(0.02, 0.2), rng.uniform(0, 6.28)
            img[..., c] += np.sin(fy * y + fx * x + ph)
    img = (img - img.min()) / (img.max() - img.min() + 1e-8)
    return img.astype(np.float32)


def make_dataset(root: Path, tasks=("sr2",), n_train=4, n_val=2, size=32, seed=0) -> dict:
    """prepared/ (manifest + crops) and degraded/<task>/ pairs under `root`; returns paths."""
    rng = np.random.default_rng(seed)
    prepared, degraded = root / "prepared", root / "degraded"
    rows = []
    for split, n in (("train", n_train), ("val", n_val)):
        for i in range(n):
            rel = f"{split}/img{i}_s000.png"
            write_image(prepared / rel, smooth_image(rng, size, size))
            rows.append(
                {"crop_path": rel, "split": split, "crop_sha256": file_sha256(prepared / rel)}
            )
    pd.DataFrame(rows).to_csv(prepared / "manifest.csv", index=False)
    cfg = load_config(
        None,
        [
            f"data.prepared_dir={prepared}",
            f"degrade.out_dir={degraded}",
            f"degrade.val_size={size}",
            f"degrade.val_max_images={n_val}",
        ],
    )
    degrade_stage(cfg, tasks)
    return {"prepared": prepared, "degraded": degraded}


def tiny_config(root: Path, *extra: str) -> Config:
    return load_config(
        None,
        [
            *TINY_MODEL,
            f"data.prepared_dir={root / 'prepared'}",
            f"degrade.out_dir={root / 'degraded'}",
            "degrade.val_size=32",
            f"train.out_dir={root / 'models'}",
            "train.steps=6",
            "train.batch_size=2",
            "train.crop_size=16",
            "train.warmup_steps=2",
            "train.log_every=1",
            "train.val_every=3",
            "train.val_steps=2",
            "train.ckpt_every=2",
            "train.ema_warmup_steps=2",
            "train.tasks=[sr2]",
            *extra,
        ],
    )


def tiny_model(root: Path, task: str = "sr2", steps: int = 4) -> Path:
    """Train a tiny restorer for `task` on a tiny synthetic dataset under `root`; its model dir.

    Takes a few seconds on CPU. The dataset is created first if missing.
    """
    from diffenhance.train import train_model

    if not (root / "degraded" / task / "pairs.csv").is_file():
        make_dataset(root, tasks=(task,))
    cfg = tiny_config(
        root, f"train.steps={steps}", f"train.tasks=[{task}]", f"train.val_every={steps}"
    )
    return train_model(cfg, task)
