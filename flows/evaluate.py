"""`evaluate` stage: PSNR/SSIM of each trained model in `train.tasks` and of the classical
baselines on the task's fixed validation pairs, into `reports/<task>/` (metrics.json,
per_image.csv, psnr_vs_steps.csv, timing.json, protocol.json, images/).
Run: `python -m flows.evaluate [section.key=value ...]`."""

from __future__ import annotations

import sys
from pathlib import Path

from prefect import flow

from diffenhance.config import load_config, write_resolved
from diffenhance.evaluate import check_inputs
from flows.common import per_task, run_stage, stage_logger
from tasks.evaluate import evaluate_model


@flow(name="evaluate")
def evaluate(params: str = "params.yaml", overrides: list[str] | None = None) -> dict:
    """Evaluate every task in `train.tasks`, one after the other (deterministic); returns
    {task: metrics}."""
    cfg = load_config(params, overrides or [])
    log = stage_logger()
    results = {}
    for task_name in cfg.train.tasks:
        metrics = evaluate_model(cfg, task_name)
        out = Path(cfg.evaluate.out_dir) / task_name
        write_resolved(cfg, out, ["degrade", "infer", "evaluate"])
        log.info(
            "evaluate: %s: model PSNR-Y %.2f dB, SSIM-Y %.4f on %d images -> %s",
            task_name, metrics["model_psnr_y"], metrics["model_ssim_y"],
            int(metrics["n_images"]), out / "metrics.json",
        )  # fmt: skip
        results[task_name] = metrics
    return results


if __name__ == "__main__":
    sys.exit(run_stage(evaluate, None, __doc__, preflight=per_task(check_inputs)))
