"""`report` stage: `reports/<task>/report.html` (self-contained) and `plots/` for each task in
`train.tasks`, plus a markdown summary and a metrics table as Prefect artifacts.
Run: `python -m flows.report [section.key=value ...]`."""

from __future__ import annotations

import sys
from pathlib import Path

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from diffenhance.config import load_config
from flows.common import run_stage, stage_logger
from tasks.report import make_report


@flow(name="report")
def report(params: str = "params.yaml", overrides: list[str] | None = None) -> list[str]:
    """Build one report per task; returns the report.html paths."""
    cfg = load_config(params, overrides or [])
    log = stage_logger()
    written = []
    for task_name in cfg.train.tasks:
        eval_dir = Path(cfg.evaluate.out_dir) / task_name
        out_dir = Path(cfg.report.out_dir) / task_name
        train_log = Path(cfg.train.out_dir) / task_name / "train_log.csv"
        rep = make_report(eval_dir, out_dir, cfg.report, train_log)
        create_markdown_artifact(
            key=f"report-{task_name}",
            markdown=rep.markdown,
            description=f"evaluation summary of {task_name}",
        )
        create_table_artifact(
            key=f"metrics-{task_name}",
            table=rep.table,
            description=f"mean PSNR/SSIM per method, {task_name}",
        )
        log.info("report: %s -> %s", task_name, rep.html.resolve())
        written.append(str(rep.html))
    return written


if __name__ == "__main__":
    sys.exit(run_stage(report, None, __doc__))
