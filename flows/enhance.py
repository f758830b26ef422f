"""`enhance` flow: enhance every image under `enhance.input` (a folder or s3://bucket/prefix)
into `enhance.output`, in deterministic shards mapped over a Prefect task runner (threads, or
a Dask cluster when `enhance.dask_address` is set), resumably, ending with a summary artifact
and `<output>/_diffenhance/summary.json`.

    python -m flows.enhance [--params params.yaml] [section.key=value ...]
    python -m flows.enhance serve (--cron "0 3 * * *" | --interval SECONDS) [--name NAME]
                                  [--max-runs N] [--params params.yaml] [section.key=value ...]

`serve` registers a deployment (default name `enhance-scheduled`) with that schedule (cron in
UTC) on the Prefect API (PREFECT_API_URL) and runs its flow runs in this process until stopped
(SIGTERM / Ctrl-C: exit 143 / 130), or once N runs have finished (final state stored, process
gone). Stopping pauses the deployment (Prefect's runner does); the next `serve` of that name
says so and resumes it.
Exit codes (`diffenhance.enhance.run`'s error policy, as `diffenhance enhance`): 0 all
enhanced, 1 some images failed or shards crashed (storage down), 2 configuration, usage,
input or model-file error - one `error:` line, no traceback (flows.common.run_entry).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

from prefect import flow, unmapped
from prefect.task_runners import ThreadPoolTaskRunner

from diffenhance.config import Config, EnhanceConfig, check_overrides, load_config
from diffenhance.enhance import (
    Job,
    Shard,
    ShardOutcome,
    ShardsCrashed,
    exit_code,
    model_file,
    plan_job,
    run_job,
)
from diffenhance.signals import Interrupted, received
from flows.common import run_entry, stage_logger
from tasks.enhance import enhance_shard, publish_summary


def make_task_runner(cfg: EnhanceConfig) -> Any:
    """Threads by default; a Dask cluster at `dask_address`, or an in-process LocalCluster of
    `workers` workers for dask_address=local."""
    if cfg.dask_address is None:
        return ThreadPoolTaskRunner(max_workers=cfg.workers)
    from prefect_dask import DaskTaskRunner

    if cfg.dask_address == "local":
        return DaskTaskRunner(
            cluster_kwargs={
                "n_workers": cfg.workers,
                "threads_per_worker": 1,
                "processes": False,
                "dashboard_address": ":0",
            }
        )
    return DaskTaskRunner(address=cfg.dask_address)


def prefect_shards(job: Job, shards: Sequence[Shard], cfg: Config) -> Iterator[ShardOutcome]:
    """The flow's shard runner: `enhance-shard` mapped over the shards on the flow's task
    runner; each shard's manifest in order, or the exception that stopped it."""
    futures = enhance_shard.map(list(shards), job=unmapped(job), cfg=unmapped(cfg))
    for fut in futures:
        try:
            yield fut.result()
        except Exception as e:  # run_job decides: stop the job or record the shard
            yield e


@flow(name="enhance-shards")
def enhance_shards(params: str, overrides: list[str]) -> dict[str, Any]:
    """Plan, map `enhance-shard` over the shards with work left, summarise (`run_job`)."""
    cfg = load_config(params, overrides)
    log = stage_logger()
    job = plan_job(cfg)
    todo = [s for s in job.shards if s.needs_run]
    log.info(
        "enhance: %d images in %d shards from %s; %d to do in %d shards; %d ignored",
        job.n_sources, len(job.shards), job.input_url, job.n_todo, len(todo), len(job.ignored),
    )  # fmt: skip
    return run_job(cfg, job=job, runner=prefect_shards)


@flow(name="enhance")
def enhance(params: str = "params.yaml", overrides: list[str] | None = None) -> dict[str, Any]:
    """Batch enhancement with the task runner that `enhance.dask_address` selects.

    Raises ShardsCrashed (the run fails, exit 1) when shards crashed as a whole, after the
    summary of the others is written and published."""
    overrides = list(overrides or [])
    cfg = load_config(params, overrides)
    runner = make_task_runner(cfg.enhance)
    summary = enhance_shards.with_options(task_runner=runner)(params=params, overrides=overrides)
    publish_summary(summary)
    log = stage_logger()
    log.info(
        "enhance: %d enhanced, %d skipped, %d failed, %.3g images/s, %.3g MP/s",
        summary["enhanced"], summary["skipped_done"], summary["failed"],
        summary["images_per_s"], summary["megapixels_per_s"],
    )  # fmt: skip
    for f in summary["failures"]:
        log.warning("enhance: %s failed: %s", f["key"], f["reason"])
    if errors := summary["shard_errors"]:
        crashed = "; ".join(f"shard {e['shard_id']}: {e['reason']}" for e in errors)
        raise ShardsCrashed(f"{len(errors)} shards crashed ({crashed}); rerun to finish them")
    return summary


# ----------------------------------------------------------------------------- serving

# `prefect deploy` registers prefect.yaml's `enhance-nightly`; a served deployment of the same
# name would replace it (tests/test_serve.py checks they differ)
SERVED_NAME = "enhance-scheduled"


async def _serve(deployment: Any, max_runs: int | None) -> None:
    """Serve `deployment` on a runner in this process (`serve`); Ctrl-C stops it gracefully."""
    from prefect.runner import Runner

    await _say_if_paused(deployment.full_name)
    runner = Runner(name=f"{deployment.name}-runner", limit=1)
    previous = signal.signal(signal.SIGINT, _graceful_sigint(runner))
    try:
        dep_id = await runner.aadd_deployment(deployment)  # paused=False: resumes it
        await _run_runner(runner, dep_id, max_runs, f"serving deployment '{deployment.full_name}'")
    finally:
        signal.signal(signal.SIGINT, previous)


async def _say_if_paused(full_name: str) -> None:
    """One line when deployment `full_name` exists paused: Prefect's runner pauses its
    deployments when it stops, so a restarted `serve` finds its own paused."""
    from prefect import get_client
    from prefect.exceptions import ObjectNotFound

    async with get_client() as client:
        try:
            paused = (await client.read_deployment_by_name(full_name)).paused
        except ObjectNotFound:
            return
    if paused:
        print(f"deployment '{full_name}' was paused (serve pauses it when it stops); "
              "resuming its schedule", file=sys.stderr, flush=True)  # fmt: skip


def _graceful_sigint(runner: Any) -> Callable[[int, Any], None]:
    """A SIGINT handler that stops `runner` as Prefect's own SIGTERM handler does (in-flight
    runs cancelled, schedules paused, its storage folder deleted); an exception raised into
    its event loop instead skips part of that. Before it runs: `Interrupted`, as elsewhere.
    The entry point then ends as interrupted (`diffenhance.signals.received`)."""

    def handler(signum: int, frame: Any) -> None:
        if not runner.started or runner.stopping:
            raise Interrupted(signum)
        runner.stopping = True
        runner.execute_in_background(runner.astop)

    return handler


async def _run_runner(runner: Any, dep_id: Any, max_runs: int | None, ready: str) -> None:
    """Run `runner` until stopped, or until deployment `dep_id` has `max_runs` finished runs
    (`_stop_after`); print `ready` once it is up (its signal handlers installed)."""
    since = datetime.now(UTC)

    async def watch() -> None:
        while not runner.started:
            await asyncio.sleep(0.1)
        print(ready, file=sys.stderr, flush=True)
        if max_runs:
            await _stop_after(runner, dep_id, max_runs, since)

    watcher = asyncio.ensure_future(watch())
    try:
        await runner.start()
    finally:  # stopped otherwise (a signal): no more runs to wait for
        watcher.cancel()


async def _stop_after(runner: Any, dep_id: Any, max_runs: int, since: datetime) -> None:
    """Stop `runner` once `max_runs` runs of deployment `dep_id` ended after `since` and the
    runner has none in progress. A run's final state is stored before its process exits, and
    a runner stopped while one is exiting cancels it: Cancelled overwrites Completed."""
    from prefect import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterEndTime,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    terminal = [StateType.COMPLETED, StateType.FAILED, StateType.CRASHED, StateType.CANCELLED]
    ended = FlowRunFilter(
        state=FlowRunFilterState(type=FlowRunFilterStateType(any_=terminal)),
        end_time=FlowRunFilterEndTime(after_=since),
    )
    of_dep = DeploymentFilter(id=DeploymentFilterId(any_=[dep_id]))
    async with get_client() as client:
        while not runner.stopping:
            await asyncio.sleep(0.5)
            if not runner.has_slots_available():  # limit=1: a run's process is still running
                continue
            runs = await client.read_flow_runs(flow_run_filter=ended, deployment_filter=of_dep)
            # no await from this check to astop: no run can start in between
            if len(runs) >= max_runs and runner.has_slots_available() and not runner.stopping:
                await runner.astop()
                return


def preflight(params: str, overrides: Sequence[str]) -> None:
    """Check the config and the model file (`model.validate_checkpoint`: header only) before
    Prefect starts; ConfigError, EnhanceError or CheckpointError naming what to fix."""
    from diffenhance.model import validate_checkpoint

    cfg = load_config(params, overrides)
    validate_checkpoint(model_file(cfg.enhance.model))


def serve(
    params: str,
    overrides: Sequence[str],
    *,
    cron: str | None = None,
    interval: float | None = None,
    name: str = SERVED_NAME,
    max_runs: int | None = None,
) -> None:
    """Register the `enhance` deployment `name` with a cron or an interval (seconds) schedule,
    exactly one, and execute its runs; after `max_runs` finished runs, stop."""
    if (cron is None) == (interval is None):
        raise ValueError("serve: give exactly one of cron and interval")
    preflight(params, overrides)  # fail now, not at the first scheduled run
    from prefect.deployments.runner import EntrypointType

    from flows.enhance import enhance as flow_obj  # importable module path, even under -m

    dep = flow_obj.to_deployment(
        name=name,
        cron=cron,
        interval=interval,
        paused=False,  # a stopped serve left it paused: serving resumes it
        parameters={"params": params, "overrides": list(overrides)},
        entrypoint_type=EntrypointType.MODULE_PATH,
        description="Scheduled batch enhancement (see README, 'Enhancing images').",
    )
    asyncio.run(_serve(dep, max_runs))


def _positive(kind: type[float] | type[int]) -> Callable[[str], float]:
    """An argparse type: a number of `kind` above 0."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not value > 0 or not math.isfinite(value):  # nan, inf
            raise argparse.ArgumentTypeError(f"must be a finite number above 0, not {text}")
        return value

    return parse


def _interval(text: str) -> float:
    """An argparse type: seconds between runs, at least 1 (Prefect's schedules are in whole
    microseconds and a busier loop is no schedule)."""
    value = _positive(float)(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 second, not {text}")
    return value


def _name(text: str) -> str:
    """An argparse type: a deployment name Prefect accepts (none of / % & > <)."""
    if not text.strip() or any(c in text for c in "/%&><"):
        raise argparse.ArgumentTypeError(
            f"not a deployment name: {text!r} (non-empty, without / % & > <)"
        )
    return text


def _cron(text: str) -> str:
    """An argparse type: a cron schedule Prefect accepts."""
    from prefect.client.schemas.schedules import CronSchedule

    try:
        CronSchedule(cron=text)
    except ValueError:  # pydantic's ValidationError too
        raise argparse.ArgumentTypeError(
            f'not a cron schedule: {text!r} (e.g. "0 3 * * *")'
        ) from None
    return text


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """The command line; `serving`: whether it is `serve`'s."""
    argv = list(argv)
    p = argparse.ArgumentParser(
        prog="python -m flows.enhance",
        description="Batch enhancement as a Prefect flow.",
        epilog="Schedule it instead: python -m flows.enhance serve (--cron EXPR | --interval "
        "SECONDS) [--name NAME] [--max-runs N]; see serve --help.",
    )
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    p.add_argument("overrides", nargs="*", metavar="section.key=value")
    serving = bool(argv) and argv[0] == "serve"
    if serving:
        argv = argv[1:]
        p.prog += " serve"
        when = p.add_mutually_exclusive_group(required=True)
        when.add_argument("--cron", type=_cron, help='cron schedule (UTC), e.g. "0 3 * * *"')
        when.add_argument(
            "--interval",
            type=_interval,
            metavar="SECONDS",
            help="a run every SECONDS, the first one SECONDS after this start",
        )
        p.add_argument(
            "--name", default=SERVED_NAME, type=_name, help=f"deployment name ({SERVED_NAME})"
        )
        p.add_argument(
            "--max-runs", type=_positive(int), metavar="N", help="stop after N finished runs"
        )
    return p.parse_args(argv, argparse.Namespace(serving=serving))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)

    def run() -> int:
        check_overrides(args.overrides)  # before a flow run or deployment stores them
        if args.serving:
            serve(args.params, args.overrides, cron=args.cron, interval=args.interval,
                  name=args.name, max_runs=args.max_runs)  # fmt: skip
            if (sig := received()) is not None:  # SIGTERM: the runner's own graceful stop
                raise Interrupted(sig)
            return 0
        preflight(args.params, args.overrides)
        summary = enhance(params=args.params, overrides=list(args.overrides))
        return exit_code(summary)

    # a bad config or model: one `error:` line, exit 2; SIGINT, SIGTERM: one line, 130 / 143
    return run_entry(run, "the runner" if args.serving else "the flow run")


if __name__ == "__main__":
    sys.exit(main())
