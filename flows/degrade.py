"""`degrade` stage: fixed, seeded validation LQ/HQ pairs for every task in `degrade.tasks`,
written to `data/degraded/<task>/`. Run: `python -m flows.degrade [section.key=value ...]`."""

from __future__ import annotations

import sys
from pathlib import Path

from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

from diffenhance.config import load_config, write_resolved
from diffenhance.data import load_manifest, pairs
from diffenhance.data.prepare import MANIFEST
from flows.common import run_stage, stage_logger
from tasks.data import degrade_pair


@flow(name="degrade", task_runner=ThreadPoolTaskRunner(max_workers=2))
def degrade(params: str = "params.yaml", overrides: list[str] | None = None) -> list[str]:
    """Write the validation pairs; returns the pairs.csv paths, one per task."""
    cfg = load_config(params, overrides or [])
    log = stage_logger()
    prepared = Path(cfg.data.prepared_dir)
    crops = pairs.select_val_crops(load_manifest(prepared), cfg.degrade.val_max_images)
    if crops.empty:
        raise RuntimeError(f"{prepared / MANIFEST} has no validation crops (split == 'val')")
    out_dir = Path(cfg.degrade.out_dir)
    written = []
    for task_name in cfg.degrade.tasks:
        futures = [
            degrade_pair.submit(
                prepared / r.crop_path, r.crop_sha256, task_name, cfg.degrade, out_dir
            )
            for r in crops.itertuples()
        ]
        rows = [f.result() for f in futures]
        written.append(str(pairs.write_pairs_csv(rows, out_dir / task_name)))
        log.info("degrade: %s: %d pairs", task_name, len(rows))
    write_resolved(cfg, out_dir, ["data", "degrade"])
    return written


if __name__ == "__main__":
    sys.exit(run_stage(degrade, None, __doc__))
