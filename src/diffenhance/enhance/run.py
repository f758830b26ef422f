"""Running a whole job: plan (model checked first), run the shards through a pluggable shard
runner, summarise. `diffenhance enhance` runs the shards in this process (`in_process`); the
`enhance` flow maps them over Prefect tasks. Both call `run_job` and share its error policy:

* a config, model or input error (ConfigError, CheckpointError, EnhanceError) stops the job:
  raised by planning, before any work, or by the first shard that meets it (a worker whose
  model file differs) -> exit 2, one line naming the file and the problem;
* an image that cannot be read, enhanced or written is recorded with its reason (manifest
  `errors`, summary `failures`) and the job goes on -> exit 1 at the end (`exit_code`);
* a shard that crashes as a whole (storage down) is recorded in the summary's
  `shard_errors` and the other shards go on -> exit 1; storage that fails while planning
  raises StorageError -> exit 1;
* a full disk (ENOSPC, EDQUOT: writing an output, a manifest or a scratch file) stops the job
  at once (no further image is read): `DiskFull`, one line naming the file -> exit 1.
  Every image written so far is recorded, so a rerun goes on from there.

The exit codes of the raised errors are `diffenhance.exitcodes.USER_ERRORS`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from diffenhance.config import Config, ConfigError
from diffenhance.enhance.job import EnhanceError, Job, OnImage, OnTiles, Shard, disk_full
from diffenhance.enhance.lock import job_lock
from diffenhance.enhance.plan import plan_job
from diffenhance.enhance.shard import failure_reason, run_shard
from diffenhance.enhance.summary import finish_job, summarize

# The manifest of each shard, in the order given, or the exception that stopped the shard.
ShardOutcome = dict[str, Any] | Exception
ShardRunner = Callable[[Job, Sequence[Shard], Config], Iterable[ShardOutcome]]


def in_process(
    *, on_image: OnImage | None = None, model: Any = None, on_tiles: OnTiles | None = None
) -> ShardRunner:
    """A shard runner that runs the shards here, one after another (`run_shard`'s arguments)."""

    def run(job: Job, shards: Sequence[Shard], cfg: Config) -> Iterator[ShardOutcome]:
        for shard in shards:
            try:
                yield run_shard(job, shard, cfg, on_image=on_image, model=model, on_tiles=on_tiles)
            except Exception as e:  # run_job decides: stop the job or record the shard
                yield e

    return run


def is_job_error(e: BaseException) -> bool:
    """A config, model or input error: the job cannot succeed, so it stops (exit 2)."""
    from diffenhance.model import CheckpointError

    return isinstance(e, (ConfigError, CheckpointError, EnhanceError))


def run_job(
    cfg: Config,
    *,
    runner: ShardRunner | None = None,
    on_image: OnImage | None = None,
    model: Any = None,
    job: Job | None = None,
    on_tiles: OnTiles | None = None,
) -> dict[str, Any]:
    """Plan (unless `job` is given), run every shard with work left, write the summary and
    return it (see `summarize`; `exit_code(summary)` is the job's exit code).

    `runner`: how shards run (default `in_process(on_image=..., model=..., on_tiles=...)`).
    Raises the first config, model or input error and `DiskFull` (see the module docstring);
    records the others. Holds the output's lock (`lock.job_lock`: OutputLocked when another
    job is writing it)."""
    job = job or plan_job(cfg)
    with job_lock(job, cfg):
        runner = runner or in_process(on_image=on_image, model=model, on_tiles=on_tiles)
        return _run_shards(cfg, job, runner)


def _run_shards(cfg: Config, job: Job, runner: ShardRunner) -> dict[str, Any]:
    """Run the shards with work left, record or raise each failure, summarise."""
    todo = [s for s in job.shards if s.needs_run]
    t0 = time.perf_counter()
    manifests, shard_errors = [], []
    for shard, outcome in zip(todo, runner(job, todo, cfg), strict=True):
        if isinstance(outcome, Exception):
            if is_job_error(outcome):
                raise outcome
            if (full := disk_full(outcome)) is not None:  # the next shard would fail alike
                raise full
            # storage down, disk full: report the shard, go on
            shard_errors.append({"shard_id": shard.id, "reason": failure_reason(outcome)})
        else:
            manifests.append(outcome)
    summary = summarize(job, manifests, time.perf_counter() - t0, shard_errors)
    finish_job(job, summary, cfg)
    return summary
