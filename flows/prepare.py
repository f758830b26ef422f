"""`prepare` stage: resolve the dataset (samples, a user folder or DIV2K), cut sub-image crops,
write `data/prepared/manifest.csv`. Run: `python -m flows.prepare [section.key=value ...]`."""

from __future__ import annotations

import sys

from prefect import flow, unmapped
from prefect.task_runners import ThreadPoolTaskRunner

from diffenhance.config import load_config, write_resolved
from diffenhance.data import prepare as lib
from flows.common import run_stage, stage_logger
from tasks.data import list_sources, prepare_images


@flow(name="prepare", task_runner=ThreadPoolTaskRunner(max_workers=2))
def prepare(params: str = "params.yaml", overrides: list[str] | None = None) -> str:
    """Crop every source image, one task per batch (`lib.batches`, a progress line after each);
    returns the manifest path."""
    cfg = load_config(params, overrides or [])
    log = stage_logger()
    sources = list_sources(cfg.data)
    log.info("prepare: %d source images from %s", len(sources), cfg.data.source)
    batches = lib.batches(sources)
    futures = prepare_images.map(batches, unmapped(cfg.data))
    rows: list[dict] = []
    done = 0
    for batch, f in zip(batches, futures, strict=True):  # in order: each line counts all before
        rows += f.result()
        done += len(batch)
        lib.log_progress(done, len(sources))
    manifest = lib.write_manifest(rows, cfg.data)
    write_resolved(cfg, cfg.data.prepared_dir, ["data"])
    log.info("%s", lib.summary(rows, len(sources), cfg.data))
    return str(manifest)


if __name__ == "__main__":
    sys.exit(run_stage(prepare, None, __doc__))
