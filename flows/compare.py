"""`compare` stage: the formulations of `compare.formulations`, each trained for the same budget
by `train_compare@<formulation>`, scored side by side on the validation pairs of
`compare.task` (PSNR/SSIM and sharpness against sampler steps, both ends of the fidelity knob,
the baseline and regression), into `reports/compare/` with a self-contained report.html.
Run: `dvc repro compare/dvc.yaml` or `python -m flows.compare [section.key=value ...]`."""

from __future__ import annotations

import sys

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from diffenhance.config import load_config, write_resolved
from diffenhance.markdown import markdown_table
from flows.common import run_stage, stage_logger
from tasks.compare import compare_formulations, compare_report


@flow(name="compare")
def compare(params: str = "params.yaml", overrides: list[str] | None = None) -> dict:
    """Compare, write the report, publish the checks as a Prefect artifact; the metrics."""
    cfg = load_config(params, overrides or [])
    log = stage_logger()
    comp = compare_formulations(cfg)
    html = compare_report(cfg)
    write_resolved(cfg, cfg.compare.out_dir, ["degrade", "infer", "compare"])
    rows = []
    for c in comp.protocol["checks"]:
        verdict = "met" if c["met"] else "missed"
        rows.append([c["check"], f"{c['value']:.3f}", f"{c['bar']:.2f}", verdict])
        log.info("compare: %s = %.3f (bar %.2f): %s", c["check"], c["value"], c["bar"], verdict)
    lines = [f"# Formulations on `{cfg.compare.task}`", ""]
    lines += markdown_table(["check", "measured", "bar", ""], rows)
    lines += ["", f"Report: `{html}`"]
    create_markdown_artifact(key="compare-formulations", markdown="\n".join(lines) + "\n",
                             description="formulations at equal budget")  # fmt: skip
    log.info("compare: report %s", html)
    return comp.metrics


if __name__ == "__main__":
    sys.exit(run_stage(compare, None, __doc__))
