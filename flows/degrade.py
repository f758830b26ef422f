"""`degrade` stage: fixed, seeded validation LQ/HQ pairs for every task in `degrade.tasks`,
written to `data/degraded/<task>/`. Run: `python -m flows.degrade [section.key=value ...]`."""

from __future__ import annotations

import sys

from prefect import flow, unmapped
from prefect.task_runners import ThreadPoolTaskRunner

from diffenhance.config import load_config
from diffenhance.data.pairs import val_crops
from flows.common import run_stage, stage_logger
from tasks.data import degrade_pairs


@flow(name="degrade", task_runner=ThreadPoolTaskRunner(max_workers=2))
def degrade(params: str = "params.yaml", overrides: list[str] | None = None) -> list[str]:
    """Write the validation pairs: the library's `degrade_stage`, mapped one Prefect task per
    degradation task over the validation crops read once (no manifest, no validation crop:
    one DataError before any task); returns the pairs.csv paths, one per task."""
    cfg = load_config(params, overrides or [])
    log = stage_logger()
    crops = val_crops(cfg)
    futures = degrade_pairs.map(cfg.degrade.tasks, unmapped(cfg), unmapped(crops))
    written = [str(f.result()) for f in futures]
    for task_name, csv in zip(cfg.degrade.tasks, written, strict=True):
        log.info("degrade: %s -> %s", task_name, csv)
    return written


if __name__ == "__main__":
    sys.exit(run_stage(degrade, None, __doc__, preflight=val_crops))  # before Prefect starts
