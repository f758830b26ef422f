"""Fixed validation LQ/HQ pairs: the output of the `degrade` stage.

Each pair is seeded by (degrade.seed, task, content hash of the HR crop), so a pair never
changes when other images are added or the order changes. Training synthesises LQ images on
the fly with the very same `RestorationTask.degrade`; only the seed differs.

Layout of `<degrade.out_dir>/<task>/`: `hr/<name>.png`, `lq/<name>.png` (the LQ image),
`pairs.csv`, one `<side input>/<name>.png` per side input of the task, named by a pairs.csv
column of that name (inpaint: `mask/<name>.png`, white = fill; lq/ is then the masked input,
holes pre-filled), and `degradation.json`: the task's degradation settings and scale (its
`degrade_keys`: training range and validation setting), which train, evaluate and compare
read from there (`task_degradation`) rather than from params, so that a DVC stage of one task
depends on that task's keys only.

`degrade_stage(cfg, tasks)` is the whole stage (manifest -> pairs of every task -> the resolved
config); flows/degrade.py maps it over the tasks, the benchmarks and tests call it directly.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from diffenhance.config import Config, DegradeConfig, replaced_from_data, unrecorded, write_resolved
from diffenhance.data.errors import DataError
from diffenhance.data.prepare import MANIFEST, load_manifest
from diffenhance.degrade import modcrop, pair_seed
from diffenhance.io import atomic_path, read_image, read_mask, write_image
from diffenhance.restoration import RestorationTask, get_task

PAIRS_CSV = "pairs.csv"
DEGRADATION_JSON = "degradation.json"


class StalePairsError(DataError, ValueError):
    """A pair's file no longer matches what its pairs.csv row records, or the task's recorded
    degradation no longer matches params.yaml (a user error: exit 2)."""


class NoValidationCropsError(DataError, RuntimeError):
    """The prepared manifest has no validation crop to pair up (a user error: exit 2)."""


@dataclass(frozen=True)
class Pair:
    name: str
    hr: np.ndarray  # float32 HxWx3 in [0, 1]
    lq: np.ndarray  # float32 hxwxC in [0, 1], h = H / scale: the network input of its task
    # the region scored on its own (`RestorationTask.scored_region`; inpaint: the hole), HxW
    region: np.ndarray | None = None

    @property
    def mask(self) -> np.ndarray | None:
        """The region scored on its own (inpainting's hole, HxW, 1 = fill), or None."""
        return self.region


def task_pair(name: str, hr: np.ndarray, lq: np.ndarray, task: RestorationTask) -> Pair:
    """A `Pair` of `task`, its scored region taken from the input (`scored_region`)."""
    return Pair(name, hr, lq, task.scored_region(lq))


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


def make_pair(
    hr_img: np.ndarray, key: str, task: str | RestorationTask, cfg: DegradeConfig
) -> tuple:
    """(hr, lq, seed) for one validation crop: centre crop, modcrop to the scale, degrade
    with the task's validation settings."""
    task = get_task(task)
    hr = modcrop(center_crop(hr_img, cfg.val_size), task.scale(cfg))
    seed = pair_seed(cfg.seed, "val", task.name, key)
    lq = task.degrade(hr, np.random.default_rng(seed), cfg, validation=True)
    return hr, lq, seed


def write_pair(
    crop_file: Path, key: str, task: str | RestorationTask, cfg: DegradeConfig, out_dir: Path
) -> dict[str, object]:
    """Degrade one HR crop for `task` and write hr/ and lq/ PNGs (and one per side input);
    return its pairs.csv row."""
    task = get_task(task)
    hr, lq, seed = make_pair(read_image(crop_file), key, task, cfg)
    name = Path(crop_file).stem
    task_dir = Path(out_dir) / task.name
    image, side = task.split(lq)
    write_image(task_dir / "hr" / f"{name}.png", hr)
    write_image(task_dir / "lq" / f"{name}.png", image)
    for k, plane in side.items():  # inpaint: the mask beside the masked input
        write_image(task_dir / k / f"{name}.png", plane)
    return {
        "name": name,
        "hr": f"hr/{name}.png",
        "lq": f"lq/{name}.png",
        **{k: f"{k}/{name}.png" for k in side},
        **task.pair_columns(lq),
        "task": task.name,
        "scale": task.scale(cfg),
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
    `data.prepared_dir`, at most `degrade.val_max_images`; NoValidationCropsError when there
    are none."""
    prepared = Path(cfg.data.prepared_dir)
    crops = select_val_crops(load_manifest(prepared), cfg.degrade.val_max_images)
    if crops.empty:
        raise NoValidationCropsError(
            f"{prepared / MANIFEST} has no validation crops (split == 'val'); "
            "prepare a dataset with validation images (rerun the `prepare` stage)"
        )
    return crops


def write_task_pairs(cfg: Config, task: str | RestorationTask, crops: pd.DataFrame) -> Path:
    """The pairs of one task: every crop of `crops` (rows of the manifest in
    `data.prepared_dir`) degraded for `task` into `<degrade.out_dir>/<task>/` (hr/, lq/,
    pairs.csv); returns the pairs.csv path.

    pairs.csv is removed before the first pair is rewritten in place and written last, so a
    stopped run leaves none (loading says to rerun `degrade`), never the old one describing new
    files; pair PNGs it does not list (fewer `val_max_images` than before) are deleted."""
    t = get_task(task)
    prepared, out_dir = Path(cfg.data.prepared_dir), Path(cfg.degrade.out_dir)
    (out_dir / t.name / PAIRS_CSV).unlink(missing_ok=True)
    rows = [
        write_pair(prepared / r.crop_path, r.crop_sha256, t, cfg.degrade, out_dir)
        for r in crops.itertuples()
    ]
    _prune_pairs(out_dir / t.name, t, {str(r["name"]) for r in rows})
    with atomic_path(out_dir / t.name / DEGRADATION_JSON) as tmp:
        tmp.write_text(json.dumps(_degradation(cfg.degrade, t), indent=2, sort_keys=True) + "\n")
    return write_pairs_csv(rows, out_dir / t.name)


def _degradation(cfg: DegradeConfig, task: RestorationTask) -> dict[str, object]:
    """The task's `degrade_keys` in `cfg`, as JSON values (`degradation.json`)."""
    values = {k: getattr(cfg, k) for k in task.degrade_keys}
    return {"task": task.name, "degrade": json.loads(json.dumps(values))}


def task_degradation(cfg: Config, task: str | RestorationTask) -> Config:
    """`cfg` with the task's degradation settings and scale (its `degrade_keys`) taken from
    the `degradation.json` the `degrade` stage wrote beside its pairs, not from params: the
    train and evaluate stages of one task then depend on that task's keys only (its pairs
    folder), and a change to another task's range reruns neither.

    FileNotFoundError naming the `degrade` stage when the file is missing (pairs written
    before it existed); StalePairsError when params.yaml has changed a key since `degrade`
    ran (the pairs, and the range training would use, are another run's)."""
    t = get_task(task)
    path = Path(cfg.degrade.out_dir) / t.name / DEGRADATION_JSON
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no recorded degradation for {t.name} (pairs written by an older "
            "version, or a `degrade` run that stopped); run the `degrade` stage (dvc repro "
            "degrade)"
        )
    try:
        recorded = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        recorded = {"unreadable": str(e)}
    if not isinstance(recorded, dict) or not isinstance(recorded.get("degrade"), dict):
        raise StalePairsError(
            f"{path}: not a degradation record ({str(recorded)[:200]}); rerun the `degrade` "
            "stage (dvc repro degrade)"
        )
    with unrecorded():  # a freshness check: the values used are the file's
        now = _degradation(cfg.degrade, t)
    if recorded != now:
        changed = ", ".join(
            f"degrade.{k} = {recorded['degrade'].get(k)} there, {v} in params"
            for k, v in now["degrade"].items()
            if recorded["degrade"].get(k) != v
        )
        raise StalePairsError(
            f"{path}: {t.name}'s pairs were degraded with other settings "
            f"({changed or recorded}); rerun the `degrade` stage (dvc repro degrade)"
        )
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in recorded["degrade"].items()}
    degrade = replaced_from_data(cfg.degrade, **values)
    with unrecorded():
        return dataclasses.replace(cfg, degrade=degrade)


def _prune_pairs(task_dir: Path, task: RestorationTask, names: set[str]) -> None:
    """Delete the PNGs in `task_dir`'s hr/, lq/ and side-input folders not named in `names`."""
    for kind in ("hr", "lq", *task.side_inputs):
        folder = task_dir / kind
        for f in sorted(folder.glob("*.png")) if folder.is_dir() else []:
            if f.stem not in names:
                f.unlink()


def degrade_stage(
    cfg: Config, tasks: Sequence[str] | None = None, crops: pd.DataFrame | None = None
) -> dict[str, Path]:
    """The `degrade` stage: the fixed validation pairs of each of `tasks` (default
    `degrade.tasks`) from `crops` (default `val_crops(cfg)`: the flow reads them once for all
    its tasks), and `params.resolved.yaml` (data, degrade) in `degrade.out_dir`; returns
    {task: pairs.csv path}."""
    crops = val_crops(cfg) if crops is None else crops
    written = {
        t: write_task_pairs(cfg, t, crops) for t in (cfg.degrade.tasks if tasks is None else tasks)
    }
    write_resolved(cfg, cfg.degrade.out_dir, ["data", "degrade"])
    return written


def pairs_csv(task_dir: str | Path) -> Path:
    """`<task_dir>/pairs.csv`; FileNotFoundError naming the `degrade` stage when it is missing
    (a stage's missing input: `load_pairs`, and the train/evaluate checks before Prefect)."""
    csv = Path(task_dir) / PAIRS_CSV
    if not csv.is_file():
        raise FileNotFoundError(
            f"{csv}: no validation pairs (never written, or a `degrade` run stopped before it "
            "finished); run the `degrade` stage (dvc repro degrade)"
        )
    return csv


def load_pairs(task_dir: str | Path, limit: int | None = None) -> list[Pair]:
    """Read the fixed pairs of one task (sorted by name), optionally only the first `limit`.
    Each pair's network input is that of the task its pairs.csv row names. StalePairsError
    names a file whose size is not the one its row records (replaced since `degrade`)."""
    task_dir = Path(task_dir)
    csv = pairs_csv(task_dir)
    df = pd.read_csv(csv)
    if limit is not None:
        df = df.head(limit)
    pairs = []
    for r in df.itertuples():
        task = get_task(r.task)
        hr, lq = read_image(task_dir / r.hr), _read_lq(task_dir, r, task)
        for kind, img in (("hr", hr), ("lq", lq)):  # a file replaced since `degrade` wrote it
            want = (getattr(r, f"{kind}_height", None), getattr(r, f"{kind}_width", None))
            if None not in want and img.shape[:2] != want:
                raise StalePairsError(
                    f"{task_dir / getattr(r, kind)}: {img.shape[1]}x{img.shape[0]} px, but "
                    f"{csv} records {want[1]}x{want[0]}; rerun the `degrade` stage "
                    "(dvc repro degrade) to rewrite the pairs"
                )
        pairs.append(task_pair(r.name, hr, lq, task))
    return pairs


def _read_lq(task_dir: Path, row: object, task: RestorationTask) -> np.ndarray:
    """A pair's network input: lq/ joined with each side input its pairs.csv column names."""
    image = read_image(task_dir / row.lq)  # type: ignore[attr-defined]
    side = {k: read_mask(task_dir / getattr(row, k), image.shape[:2]) for k in task.side_inputs}
    return task.join(image, **side) if side else image
