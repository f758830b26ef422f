"""Tasks of the `prepare` and `degrade` stages."""

from __future__ import annotations

from pathlib import Path

from prefect import task

from diffenhance.config import DataConfig, DegradeConfig
from diffenhance.data import pairs, prepare


@task(name="list-sources")
def list_sources(cfg: DataConfig) -> list:
    return prepare.list_sources(cfg)


@task(name="prepare-image", retries=1)
def prepare_image(src, cfg: DataConfig) -> list[dict]:
    return prepare.prepare_one(src, cfg)


@task(name="degrade-pair")
def degrade_pair(
    crop_file: Path, key: str, task_name: str, cfg: DegradeConfig, out_dir: Path
) -> dict:
    return pairs.write_pair(crop_file, key, task_name, cfg, out_dir)
