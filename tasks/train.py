"""Task of the `train` stage."""

from __future__ import annotations

from prefect import task

from diffenhance import train as training
from diffenhance.config import Config


@task(name="train-model")
def train_model(cfg: Config, task_name: str) -> str:
    return str(training.train_model(cfg, task_name))
