"""Tasks of the `prepare` and `degrade` stages."""

from __future__ import annotations

from pathlib import Path

from prefect import task

from diffenhance.config import Config, DataConfig
from diffenhance.data import pairs, prepare


@task(name="list-sources")
def list_sources(cfg: DataConfig) -> list:
    return prepare.list_sources(cfg)


@task(name="prepare-image", retries=1)
def prepare_image(src, cfg: DataConfig) -> list[dict]:
    return prepare.prepare_one(src, cfg)


@task(name="degrade-pairs")
def degrade_pairs(task_name: str, cfg: Config) -> Path:
    """The `degrade` stage for one degradation task (its folder of pairs); the pairs.csv path."""
    return pairs.degrade_stage(cfg, [task_name])[task_name]
