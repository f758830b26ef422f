"""Tasks of the `prepare` and `degrade` stages."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from prefect import task

from diffenhance.config import Config, DataConfig
from diffenhance.data import pairs, prepare


@task(name="list-sources")
def list_sources(cfg: DataConfig) -> list:
    return prepare.list_sources(cfg)


@task(name="prepare-images", retries=1)
def prepare_images(batch: list, cfg: DataConfig) -> list[dict]:
    """One of `prepare.batches`: a task per batch, not per image, so Prefect's own line per
    finished task does not bury the log (900 of them on DIV2K)."""
    return prepare.prepare_batch(batch, cfg)


@task(name="degrade-pairs")
def degrade_pairs(task_name: str, cfg: Config, crops: pd.DataFrame) -> Path:
    """The `degrade` stage for one degradation task (its folder of pairs) from `crops`
    (`pairs.val_crops`); the pairs.csv path."""
    return pairs.degrade_stage(cfg, [task_name], crops)[task_name]
