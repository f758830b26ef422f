"""Task of the `report` stage."""

from __future__ import annotations

from pathlib import Path

from prefect import task

from diffenhance.config import ReportConfig
from diffenhance.report import Report, build_report


@task(name="build-report")
def make_report(eval_dir: Path, out_dir: Path, cfg: ReportConfig, train_log: Path | None) -> Report:
    """report.html and plots/ for one evaluation folder."""
    return build_report(eval_dir, out_dir, cfg, train_log=train_log)
