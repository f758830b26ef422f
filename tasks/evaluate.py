"""Task of the `evaluate` stage."""

from __future__ import annotations

from prefect import task

from diffenhance import evaluate as evaluation
from diffenhance.config import Config
from tasks.common import stage_logger


@task(name="evaluate-model")
def evaluate_model(cfg: Config, task_name: str) -> dict[str, float]:
    """Score `models/<task>` and the baselines on the task's validation pairs; its metrics."""
    log = stage_logger()
    return evaluation.evaluate_model(cfg, task_name, progress=log.info).metrics
