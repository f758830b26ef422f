"""Batch enhancement jobs: list, shard, enhance, record, resume, summarise.

Usable without Prefect: `run_job` plans, runs the shards and summarises, and is what both
`diffenhance enhance` (shards in this process) and flows/enhance.py (shards mapped over a
Prefect task runner: threads or Dask) call, with one error policy (see `run`).

    job = plan_job(cfg)                      # list inputs, shards, what is already done
    summary = run_job(cfg, job=job)          # run_shard for each shard with work left
    sys.exit(exit_code(summary))             # 0 all done, 1 some images or shards failed

Modules: `job` (the job's data and constants), `plan` (listing, output keys, shards),
`models` (model resolution, shipped models, per-process model cache), `shard` (one shard:
resume, read, write, record, manifest), `summary` (summary, finish), `run` (`run_job`),
`lock` (one job per output), `settings` (`enhance_config`: a front end's settings -> the
job's Config, for the CLI and UI).

An output root (a folder or ``s3://bucket/prefix``) holds:

    <relative path of each input>            enhanced image (name + "_" + enhance.suffix when
                                             set; format per enhance.output_format)
    _diffenhance/manifests/<shard>.json      one per finished shard: inputs and their sha256,
                                             model sha256, params hash, outputs, timings, errors
    _diffenhance/manifests/<shard>.partial.json   progress of a running (or crashed) shard
    _diffenhance/summary.json                the last run's summary
    _diffenhance/lock.json                   who is writing it now (`lock`: one job at a time)
    _diffenhance/tmp/                        scratch of S3 inputs (swept when its run is gone)

Shards are runs of `enhance.shard_size` images in sorted key order; a shard's id is its index
plus a hash of its keys, so the same inputs always give the same shards. Outputs are written
atomically (temp file + rename locally, a single PUT on S3) and each finished image is recorded
in the shard's partial manifest at once, so a crash loses at most the image being written.
A rerun skips every image recorded with the same model sha256, params hash and input (size +
ETag/mtime, else its sha256) whose output exists, and finishes the rest. A file that cannot be
read or enhanced is recorded with its reason and never stops the job.
"""

from diffenhance.enhance.job import (
    MANIFEST_DIR,
    MANIFEST_FORMAT,
    META_DIR,
    SUMMARY_KEY,
    WRITABLE_SUFFIXES,
    DiskFull,
    EnhanceError,
    Job,
    OnImage,
    Shard,
    ShardsCrashed,
    Source,
    output_params,
    params_hash,
)
from diffenhance.enhance.lock import LOCK_KEY, OutputLocked, hold_output, job_lock
from diffenhance.enhance.models import (
    MODEL_LOADS,
    PRETRAINED_DIRS,
    cached_restorer,
    model_file,
    model_sha256,
    pretrained_model,
)
from diffenhance.enhance.plan import output_key, plan_job
from diffenhance.enhance.run import ShardOutcome, ShardRunner, in_process, is_job_error, run_job
from diffenhance.enhance.shard import ShardRun, failure_reason, run_shard
from diffenhance.enhance.summary import exit_code, finish_job, summarize

__all__ = [
    "MANIFEST_DIR",
    "MANIFEST_FORMAT",
    "META_DIR",
    "MODEL_LOADS",
    "PRETRAINED_DIRS",
    "SUMMARY_KEY",
    "WRITABLE_SUFFIXES",
    "LOCK_KEY",
    "DiskFull",
    "EnhanceError",
    "Job",
    "OnImage",
    "OutputLocked",
    "Shard",
    "ShardOutcome",
    "ShardRun",
    "ShardRunner",
    "ShardsCrashed",
    "Source",
    "cached_restorer",
    "exit_code",
    "failure_reason",
    "finish_job",
    "in_process",
    "hold_output",
    "is_job_error",
    "job_lock",
    "model_file",
    "model_sha256",
    "output_key",
    "output_params",
    "params_hash",
    "plan_job",
    "pretrained_model",
    "run_job",
    "run_shard",
    "summarize",
]
