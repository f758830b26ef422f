"""The end of a job: the run's summary (counts, failures, rates), written to
`<output>/_diffenhance/summary.json`, and the manifests of shards that no longer exist dropped."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from diffenhance.config import Config
from diffenhance.enhance.job import MANIFEST_DIR, SUMMARY_KEY, Job, now
from diffenhance.storage import open_storage


def summarize(
    job: Job,
    manifests: list[dict[str, Any]],
    seconds: float,
    shard_errors: Sequence[dict[str, str]] = (),
) -> dict[str, Any]:
    """The run's summary: counts, failures with reasons, images/s and megapixels/s.

    `manifests`: those returned by `run_shard` in this run; `seconds`: its wall time;
    `shard_errors`: {"shard_id", "reason"} of shards that crashed as a whole."""
    ran = {m["shard_id"] for m in manifests}
    skipped = sum(len(s.done) for s in job.shards if s.id not in ran)
    skipped += sum(m["run"]["skipped"] for m in manifests)
    processed = sum(m["run"]["processed"] for m in manifests)
    failures = [
        {"key": e["input_key"], "reason": e["reason"], "shard_id": m["shard_id"]}
        for m in manifests
        for e in m["errors"]
    ]
    out_mpix = sum(m["run"]["output_megapixels"] for m in manifests)
    in_mpix = sum(m["run"]["input_megapixels"] for m in manifests)
    secs = max(seconds, 1e-9)
    return {
        "input": job.input_url,
        "output": job.output_url,
        "model": {"path": job.model_path, "sha256": job.model_sha256},
        "params_hash": job.params_hash,
        "planned_at": job.planned_at,
        "finished_at": now(),
        "images": job.n_sources,
        "shards": len(job.shards),
        "shards_run": len(manifests),
        "enhanced": processed,
        "skipped_done": skipped + sum(m["run"]["reused"] for m in manifests),
        "reused": sum(m["run"]["reused"] for m in manifests),  # touched inputs, same sha256
        "failed": len(failures),
        "failures": sorted(failures, key=lambda f: f["key"]),
        "ignored": list(job.ignored),
        "shard_errors": list(shard_errors),
        "seconds": round(seconds, 3),
        "images_per_s": round(processed / secs, 4),
        "input_megapixels": round(in_mpix, 4),
        "output_megapixels": round(out_mpix, 4),
        "megapixels_per_s": round(out_mpix / secs, 4),  # output megapixels
    }


def finish_job(job: Job, summary: dict[str, Any], cfg: Config) -> None:
    """Write the summary JSON; when every shard ran cleanly, drop manifests of shards that no
    longer exist (their records were carried into the current shards' manifests)."""
    if job.single:
        return
    out = open_storage(job.output_url, cfg.storage)
    out.write_bytes(SUMMARY_KEY, json.dumps(summary, indent=1).encode())
    if summary["shard_errors"]:
        return
    current = {s.id for s in job.shards}
    for o in list(out.list(MANIFEST_DIR)):
        sid = o.key.rsplit("/", 1)[-1].removesuffix(".json").removesuffix(".partial")
        if sid not in current:
            out.delete(o.key)


def exit_code(summary: dict[str, Any]) -> int:
    """The job's exit code: 0 all done, 1 some images failed or a shard crashed."""
    return 1 if summary["failed"] or summary["shard_errors"] else 0
