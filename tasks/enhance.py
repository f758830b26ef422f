"""Tasks of the `enhance` flow: one per shard, and the run's summary artifact."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NONE

from diffenhance.config import Config
from diffenhance.enhance import Job, Shard, run_shard
from diffenhance.markdown import markdown_table


@task(
    name="enhance-shard",
    task_run_name="enhance-shard-{shard.id}",
    retries=1,
    retry_delay_seconds=5,
    cache_policy=NONE,
)
def enhance_shard(shard: Shard, job: Job, cfg: Config) -> dict[str, Any]:
    """Enhance one shard (model loaded once per worker process); returns its manifest."""
    return run_shard(job, shard, cfg)


def summary_markdown(summary: dict[str, Any], max_rows: int = 50) -> str:
    """The summary as a Markdown report: counts, rates, then each failure with its reason."""
    rows = [
        ("input", summary["input"]),
        ("output", summary["output"]),
        ("model sha256", summary["model"]["sha256"][:16]),
        ("params hash", summary["params_hash"]),
        ("images listed", summary["images"]),
        ("enhanced", summary["enhanced"]),
        ("skipped (already done)", summary["skipped_done"]),
        ("failed", summary["failed"]),
        ("ignored (not images)", len(summary["ignored"])),
        ("shards run / total", f"{summary['shards_run']} / {summary['shards']}"),
        ("seconds", summary["seconds"]),
        ("images/s", summary["images_per_s"]),
        ("output megapixels/s", summary["megapixels_per_s"]),
    ]
    md = ["# Enhancement summary", "", *markdown_table(["", ""], rows)]
    bad = [(f["key"], f["reason"]) for f in summary["failures"]]
    bad += [(f"shard {e['shard_id']}", e["reason"]) for e in summary["shard_errors"]]
    bad += [(f["key"], f["reason"]) for f in summary["ignored"]]
    if bad:
        md += ["", "## Failed and ignored files", ""]
        md += markdown_table(
            ["file", "reason"], [(f"`{k}`", r.replace("|", "/")) for k, r in bad[:max_rows]]
        )
        if len(bad) > max_rows:
            md.append(f"\n... and {len(bad) - max_rows} more (see _diffenhance/summary.json)")
    return "\n".join(md)


@task(name="enhance-summary", cache_policy=NONE)
def publish_summary(summary: dict[str, Any]) -> None:
    """The summary as a Prefect markdown artifact (key `enhance-summary`)."""
    from prefect.artifacts import create_markdown_artifact

    create_markdown_artifact(
        key="enhance-summary",
        markdown=summary_markdown(summary),
        description=f"{summary['enhanced']} enhanced, {summary['failed']} failed",
    )
