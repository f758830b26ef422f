"""Tasks of the `compare` stage."""

from __future__ import annotations

from prefect import task

from diffenhance import compare as comparison
from diffenhance.compare import Comparison, build_compare_report
from diffenhance.config import Config
from tasks.common import stage_logger


@task(name="compare-formulations")
def compare_formulations(cfg: Config) -> Comparison:
    """Score every formulation's comparison model and the baseline (files in compare.out_dir)."""
    return comparison.compare_formulations(cfg, progress=stage_logger().info)


@task(name="compare-report")
def compare_report(cfg: Config) -> str:
    """reports/compare/report.html and plots/ from what `compare_formulations` wrote."""
    return str(build_compare_report(cfg.compare.out_dir, cfg.report))
