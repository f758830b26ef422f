"""Fixed validation LQ/HQ pairs: the output of the `degrade` stage.

Each pair is seeded by (degrade.seed, task, content hash of the HR crop), so a pair never
changes when other images are added or the order changes. Training synthesises LQ images on
the fly with the very same `degrade.degrade_for_task`; only the seed differs.

Layout of `<degrade.out_dir>/<task>/`: `hr/<name>.png`, `lq/<name>.png`, `pairs.csv`, and for
inpaint `mask/<name>.png` (white = fill; lq/ is then the masked input, holes pre-filled by `degrade.fill_holes`): the triple.

`degrade_stage(cfg, tasks)` is the whole stage (manifest -> pairs of every task -> the resolved
config); flows/degrade.py maps it over the tasks, the benchmarks and tests call it directly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from diffenhance.config import Config, DegradeConfig, write_resolved
from diffenhance.data.prepare import MANIFEST, load_manifest
from diffenhance.degrade import degrade_for_task, masked_input, modcrop, pair_seed, task_scale
from diffenhance.io import atomic_path, read_image, read_mask, write_image

PAIRS_CSV = "pairs.csv"


@dataclass(frozen=True)
class Pair:
    name: str
    hr: np.ndarray  # float32 HxWx3 in [0, 1]
    lq: np.ndarray  # float32 hxwxC in [0, 1], h = H / scale; C = 4 for inpaint (+ the mask)

    @property
    def mask(self) -> np.ndarray | None:
        """Inpainting's hole (HxW, 1 = fill): the LQ's 4th channel; None for other tasks."""
        return self.lq[..., 3] if self.lq.shape[2] > 3 else None


def center_crop(img: np.ndarray, size: int) -> np.ndarray:
    """Centre crop to at most `size` x `size` (smaller sides are kept)."""
    h, w = img.shape[:2]
    ch, cw = min(size, h), min(size, w)
    top, left = (h - ch) // 2, (w - cw) // 2
    return img[top : top + ch, left : left + cw]


def select_val_crops(manifest: pd.DataFrame, max_images: int) -> pd.DataFrame:
    """Validation crops of the manifest, at most `max_images`, evenly spaced, deterministic."""
    val = manifest[manifest["split"] == "val"].sort_values("crop_path").reset_index(drop=True)
    if len(val) <= max_images:
        return val
    idx = np.linspace(0, len(val) - 1, max_images).round().astype(int)
    return val.iloc[np.unique(idx)].reset_index(drop=True)


def make_pair(hr_img: np.ndarray, key: str, task: str, cfg: DegradeConfig) -> tuple:
    """(hr, lq, seed) for one validation crop: centre crop, modcrop to the scale, degrade."""
    scale = task_scale(task, cfg)
    hr = modcrop(center_crop(hr_img, cfg.val_size), scale)
    seed = pair_seed(cfg.seed, "val", task, key)
    lq = degrade_for_task(hr, task, np.random.default_rng(seed), cfg, validation=True)
    return hr, lq, seed


def write_pair(
    crop_file: Path, key: str, task: str, cfg: DegradeConfig, out_dir: Path
) -> dict[str, object]:
    """Degrade one HR crop for `task` and write hr/ and lq/ PNGs; return its pairs.csv row."""
    hr, lq, seed = make_pair(read_image(crop_file), key, task, cfg)
    name = Path(crop_file).stem
    task_dir = Path(out_dir) / task
    write_image(task_dir / "hr" / f"{name}.png", hr)
    write_image(task_dir / "lq" / f"{name}.png", lq[..., :3])
    extra = {}
    if lq.shape[2] > 3:  # inpaint: the mask beside the masked input
        write_image(task_dir / "mask" / f"{name}.png", lq[..., 3])
        extra = {"mask": f"mask/{name}.png", "mask_coverage": round(float(lq[..., 3].mean()), 6)}
    return {
        "name": name,
        "hr": f"hr/{name}.png",
        "lq": f"lq/{name}.png",
        **extra,
        "task": task,
        "scale": task_scale(task, cfg),
        "seed": seed,
        "source_sha256": key,
        "hr_height": hr.shape[0],
        "hr_width": hr.shape[1],
        "lq_height": lq.shape[0],
        "lq_width": lq.shape[1],
    }


def write_pairs_csv(rows: list[dict[str, object]], task_dir: Path) -> Path:
    """Write `pairs.csv` (sorted by name) atomically."""
    df = pd.DataFrame(rows).sort_values("name").reset_index(drop=True)
    out = Path(task_dir) / PAIRS_CSV
    with atomic_path(out) as tmp:
        df.to_csv(tmp, index=False)
    return out


def val_crops(cfg: Config) -> pd.DataFrame:
    """The validation crops the `degrade` stage pairs up: `select_val_crops` of the manifest in
    `data.prepared_dir`, at most `degrade.val_max_images`; RuntimeError when there are none."""
    prepared = Path(cfg.data.prepared_dir)
    crops = select_val_crops(load_manifest(prepared), cfg.degrade.val_max_images)
    if crops.empty:
        raise RuntimeError(
            f"{prepared / MANIFEST} has no validation crops (split == 'val'); "
            "prepare a dataset with validation images (rerun the `prepare` stage)"
        )
    return crops


def write_task_pairs(cfg: Config, task: str, crops: pd.DataFrame) -> Path:
    """The pairs of one task: every crop of `crops` (rows of the manifest in
    `data.prepared_dir`) degraded for `task` into `<degrade.out_dir>/<task>/` (hr/, lq/,
    pairs.csv); returns the pairs.csv path."""
    prepared, out_dir = Path(cfg.data.prepared_dir), Path(cfg.degrade.out_dir)
    rows = [
        write_pair(prepared / r.crop_path, r.crop_sha256, task, cfg.degrade, out_dir)
        for r in crops.itertuples()
    ]
    return write_pairs_csv(rows, out_dir / task)


def degrade_stage(cfg: Config, tasks: Sequence[str] | None = None) -> dict[str, Path]:
    """The `degrade` stage: the fixed validation pairs of each of `tasks` (default
    `degrade.tasks`) from the prepared manifest, and `params.resolved.yaml` (data, degrade) in
    `degrade.out_dir`; returns {task: pairs.csv path}."""
    crops = val_crops(cfg)
    written = {
        t: write_task_pairs(cfg, t, crops) for t in (cfg.degrade.tasks if tasks is None else tasks)
    }
    write_resolved(cfg, cfg.degrade.out_dir, ["data", "degrade"])
    return written


def load_pairs(task_dir: str | Path, limit: int | None = None) -> list[Pair]:
    """Read the fixed pairs of one task (sorted by name), optionally only the first `limit`."""
    task_dir = Path(task_dir)
    csv = task_dir / PAIRS_CSV
    if not csv.is_file():
        raise FileNotFoundError(
            f"{csv}: no validation pairs; run the `degrade` stage first (dvc repro degrade)"
        )
    df = pd.read_csv(csv)
    if limit is not None:
        df = df.head(limit)
    return [
        Pair(r.name, read_image(task_dir / r.hr), _read_lq(task_dir, r)) for r in df.itertuples()
    ]


def _read_lq(task_dir: Path, row: object) -> np.ndarray:
    """A pair's LQ input: lq/ (+ its mask/ as a fourth channel where pairs.csv names one)."""
    lq = read_image(task_dir / row.lq)  # type: ignore[attr-defined]
    mask = getattr(row, "mask", None)
    if isinstance(mask, str) and mask:
        return masked_input(lq, read_mask(task_dir / mask, lq.shape[:2]))
    return lq
