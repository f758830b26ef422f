"""Task of the `train` stage."""

from __future__ import annotations

from prefect import task

from diffenhance.config import Config
from diffenhance.train import train_task


@task(name="train-model")
def train_model(cfg: Config, task_name: str) -> str:
    return str(train_task(cfg, task_name))
