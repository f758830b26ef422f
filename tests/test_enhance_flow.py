"""The `enhance` Prefect flow on the real engine: threads vs a Dask LocalCluster, the summary
artifact, the model loaded once per worker (serving it: tests/test_serve.py)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from diffenhance.config import load_config
from diffenhance.enhance import MODEL_LOADS
from flows.enhance import enhance, make_task_runner
from tests.conftest import REPO
from tests.enhance_helpers import random_checkpoint, write_inputs

JOB = ["enhance.shard_size=3", "infer.tile=16", "infer.tile_overlap=4", "infer.steps=2"]
JOB += ["infer.tile_batch=4", "infer.precision=fp32", "enhance.workers=2"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("enhance-flow")
    ckpt = random_checkpoint(root / "sr2.safetensors")
    write_inputs(root / "in", [(24, 24), (16, 40), (9, 9), (30, 20), (24, 24), (1, 17), (20, 20)])
    (root / "in" / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    params = root / "params.yaml"
    params.write_text("{}\n")
    return root, ckpt, params


def overrides(root: Path, ckpt: Path, out: str, *extra: str) -> list[str]:
    io = [f"enhance.input={root / 'in'}", f"enhance.output={root / out}", f"enhance.model={ckpt}"]
    return io + JOB + list(extra)


def outputs(out: Path) -> dict[str, bytes]:
    return {
        p.relative_to(out).as_posix(): p.read_bytes()
        for p in out.rglob("*")
        if p.is_file() and "_diffenhance" not in p.parts
    }


def test_threaded_and_dask_runs_are_identical_with_summary_artifact(prefect_api, setup):
    root, ckpt, params = setup
    loads = MODEL_LOADS["count"]
    threaded = enhance(params=str(params), overrides=overrides(root, ckpt, "threads"))
    assert MODEL_LOADS["count"] - loads == 1  # 3 shards on 2 threads: one load per process
    assert threaded["enhanced"] == 7 and threaded["shards_run"] == 3
    assert [f["key"] for f in threaded["failures"]] == ["broken.jpg"]
    dask_cfg = load_config(params, overrides(root, ckpt, "dask", "enhance.dask_address=local"))
    assert type(make_task_runner(dask_cfg.enhance)).__name__ == "DaskTaskRunner"
    dask = enhance(
        params=str(params),
        overrides=overrides(root, ckpt, "dask", "enhance.dask_address=local"),
    )
    assert dask["enhanced"] == 7 and dask["failed"] == 1
    a, b = outputs(root / "threads"), outputs(root / "dask")
    assert len(a) == 7 and a == b  # byte-identical outputs
    assert (root / "dask" / "_diffenhance" / "summary.json").is_file()

    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    async def latest_summary():
        async with get_client() as client:
            arts = await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["enhance-summary"]))
            )
            return sorted(arts, key=lambda x: x.created)[-1]

    art = asyncio.run(latest_summary())
    assert "| enhanced | 7 |" in art.data and "`broken.jpg`" in art.data


def test_prefect_yaml_describes_a_valid_scheduled_deployment():
    from prefect.cli.deploy._models import PrefectYamlModel
    from prefect.client.schemas.schedules import CronSchedule
    from prefect.flows import load_flow_from_entrypoint

    spec = PrefectYamlModel.model_validate(yaml.safe_load((REPO / "prefect.yaml").read_text()))
    (dep,) = spec.deployments
    assert load_flow_from_entrypoint(str(REPO / dep.entrypoint)).name == "enhance"
    sched = dep.schedules[0]
    CronSchedule(cron=sched.cron, timezone=sched.timezone)  # raises on a bad cron / timezone
    assert set(dep.parameters) == {"params", "overrides"}


@pytest.fixture(scope="module")
def dask_cluster(tmp_path_factory, prefect_api):
    """A real `dask scheduler` and two `dask worker` processes on 127.0.0.1, as docs/batch.md
    starts them (the nanny sets OMP_NUM_THREADS=1 in each worker); the scheduler's address."""
    from distributed import Client

    tmp = tmp_path_factory.mktemp("dask")
    sched_file = tmp / "scheduler.json"
    dask = str(Path(sys.executable).parent / "dask")
    env = {**os.environ, "PREFECT_API_URL": prefect_api,
           "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "src")])}  # fmt: skip
    quiet = {"cwd": REPO, "env": env, "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    procs = [subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", "0",
                               "--no-dashboard", "--scheduler-file", str(sched_file)], **quiet)]  # fmt: skip
    try:
        for _ in range(240):
            if sched_file.is_file() and sched_file.stat().st_size:
                break
            assert procs[0].poll() is None, "dask scheduler exited"
            time.sleep(0.25)
        for _ in range(2):
            procs.append(subprocess.Popen([dask, "worker", "--scheduler-file", str(sched_file),
                                           "--host", "127.0.0.1", "--nthreads", "1",
                                           "--no-dashboard"], **quiet))  # fmt: skip
        address = yaml.safe_load(sched_file.read_text())["address"]
        with Client(address, timeout=60) as client:
            client.wait_for_workers(2, timeout=120)
        yield address
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


@pytest.mark.slow  # ~50 s of worker start-up; the default run: test_threaded_and_dask_runs_are_identical
def test_dask_worker_processes_write_the_bytes_of_the_cli(prefect_api, setup, dask_cluster):
    """The issue's check: one image per shard on two real worker processes against the CLI in
    its own process (torch's default thread count, the default shard size): equal bytes, since
    a batch holds one image's tiles and infer.threads pins the thread count."""
    root, ckpt, params = setup
    pinned = ["infer.threads=1"]
    summary = enhance(params=str(params), overrides=overrides(
        root, ckpt, "dask-workers", f"enhance.dask_address={dask_cluster}",
        "enhance.shard_size=1", *pinned))  # fmt: skip
    assert summary["enhanced"] == 7 and summary["shards_run"] == 8
    infer = [o for o in JOB if o.startswith("infer.")]
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    cli = subprocess.run(
        [str(Path(sys.executable).parent / "diffenhance"), "enhance", str(root / "in"),
         str(root / "cli"), "-m", str(ckpt), *infer, *pinned],
        cwd=root, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert cli.returncode == 1, cli.stderr[-3000:]  # broken.jpg failed, the rest enhanced
    a, b = outputs(root / "dask-workers"), outputs(root / "cli")
    assert len(a) == 7 and a == b
