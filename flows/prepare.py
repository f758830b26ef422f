"""`prepare` stage: resolve the dataset (samples, a user folder or DIV2K), cut sub-image crops,
write `data/prepared/manifest.csv`. Run: `python -m flows.prepare [section.key=value ...]`."""

from __future__ import annotations

import sys

from prefect import flow, unmapped
from prefect.task_runners import ThreadPoolTaskRunner

from diffenhance.config import load_config, write_resolved
from diffenhance.data import prepare as lib
from flows.common import run_stage, stage_logger
from tasks.data import list_sources, prepare_image


@flow(name="prepare", task_runner=ThreadPoolTaskRunner(max_workers=2))
def prepare(params: str = "params.yaml", overrides: list[str] | None = None) -> str:
    """Crop every source image; returns the manifest path."""
    cfg = load_config(params, overrides or [])
    log = stage_logger()
    sources = list_sources(cfg.data)
    log.info("prepare: %d source images from %s", len(sources), cfg.data.source)
    futures = prepare_image.map(sources, unmapped(cfg.data))
    rows = [row for f in futures for row in f.result()]
    manifest = lib.write_manifest(rows, cfg.data)
    write_resolved(cfg, cfg.data.prepared_dir, ["data"])
    log.info("prepare: %d crops -> %s", len(rows), manifest)
    return str(manifest)


if __name__ == "__main__":
    sys.exit(run_stage(prepare, None, __doc__))
