"""`publish` job: push reports, checkpoints and batch results (`storage.publish`) to
`storage.url` (a local folder or s3://bucket/prefix), verify every object, and write the
publish manifest last. A second run with no changes uploads nothing.
Run: `python -m flows.publish [section.key=value ...]` or `diffenhance publish`.

An operational job, not a DVC stage: it has no outputs for DVC to cache, and with
`always_changed` it would make every `dvc repro` touch the network. Run it after `dvc repro`.
"""

from __future__ import annotations

import sys
from pathlib import Path

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from prefect.task_runners import ThreadPoolTaskRunner

from diffenhance import publish as pub
from diffenhance.config import load_config
from flows.common import run_stage, stage_logger
from tasks.publish import publish_folder


@flow(name="publish", task_runner=ThreadPoolTaskRunner(max_workers=4))
def publish(params: str = "params.yaml", overrides: list[str] | None = None) -> dict:
    """One task per folder of `storage.publish`; the manifest only after all of them succeeded.

    Returns {"url", "uploaded", "skipped", "bytes_uploaded", "objects", "manifest_written",
    "missing"}; raises `PublishError` (no manifest written) when any folder fails.
    """
    cfg = load_config(params, overrides or [])
    log = stage_logger()
    scfg, root = cfg.storage, Path.cwd()
    store = pub.open_destination(scfg, root)
    previous = pub.read_manifest(store, scfg.manifest)  # first request: fails fast when down
    sources = pub.publish_sources(scfg, root)
    futures = [publish_folder.submit(scfg, name, path, root) for name, path in sources.items()]
    for f in futures:
        f.wait()
    failed = [f for f in futures if not f.state.is_completed()]
    if failed:
        log.error(
            "publish: %d of %d folders failed; no manifest written", len(failed), len(futures)
        )
        failed[0].result()  # raises the first folder's PublishError
    result = pub.finish(store, scfg, [f.result() for f in futures], previous, root)
    log.info("publish: %s", result)
    create_markdown_artifact(
        markdown=pub.summary_markdown(result),
        key="publish-summary",
        description=f"publish to {result.url}",
    )
    return {
        "url": result.url,
        "uploaded": result.uploaded,
        "skipped": result.skipped,
        "bytes_uploaded": result.bytes_uploaded,
        "objects": len(result.manifest["objects"]),
        "manifest_written": result.manifest_written,
        "missing": result.missing,
    }


def main(argv: list[str] | None = None) -> int:
    """Exit 0 on success, 1 with a one-line `error:` on a storage failure, 2 on a config error
    (`run_stage`: no traceback)."""
    return run_stage(publish, argv, __doc__)


if __name__ == "__main__":
    sys.exit(main())
