"""`train` stage: train (or resume) one restorer per task in `train.tasks`, into
`models/<task>/`. Run: `python -m flows.train [section.key=value ...]`; for several GPUs use
`torchrun --nproc_per_node=N -m diffenhance.train` (see docs/training.md)."""

from __future__ import annotations

import sys

from prefect import flow

from diffenhance.config import load_config
from diffenhance.train import check_inputs
from flows.common import per_task, run_stage, stage_logger
from tasks.train import train_model


@flow(name="train")
def train(params: str = "params.yaml", overrides: list[str] | None = None) -> list[str]:
    cfg = load_config(params, overrides or [])
    log = stage_logger()
    out = []
    for task_name in cfg.train.tasks:
        log.info("train: %s for %d steps on %s", task_name, cfg.train.steps, cfg.train.device)
        out.append(train_model(cfg, task_name))
    return out


if __name__ == "__main__":
    sys.exit(run_stage(train, None, __doc__, preflight=per_task(check_inputs)))
