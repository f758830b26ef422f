"""`python -m flows.enhance serve` on the real Prefect test server: a schedule by cron or by
interval, `--max-runs` stopping after its runs are stored Completed, the pause a stop leaves
and the next start lifts, and a served name apart from prefect.yaml's. Also what a fresh
clone's default input folder gives: a completed run of 0 images.

Each served process takes seconds of CPU to register and start its runner (about 7 s on a
2-core runner): the served tests start three.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from flows.enhance import enhance, parse_args
from tests.conftest import REPO
from tests.enhance_helpers import random_checkpoint, write_inputs
from tests.test_signals import Proc, signal_and_check

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

JOB = ["infer.tile=16", "infer.tile_overlap=4", "infer.steps=1", "infer.precision=fp32"]
SERVING = r"serving deployment '{}'"


@pytest.fixture(scope="module")
def job(tmp_path_factory) -> tuple[Path, list[str]]:
    """A folder of 3 small images and a tiny random sr2 model: (root, the overrides that
    enhance the folder into root/out)."""
    root = tmp_path_factory.mktemp("serve")
    ckpt = random_checkpoint(root / "sr2.safetensors")
    write_inputs(root / "in", [(24, 24), (16, 40), (20, 20)])
    io = [f"enhance.input={root / 'in'}", f"enhance.output={root / 'out'}"]
    return root, [*io, f"enhance.model={ckpt}", *JOB]


def serve(prefect_api: str, root: Path, name: str, *args: str) -> Proc:
    """`python -m flows.enhance serve --name NAME ARGS...` (overrides last) on the test server;
    returns once its runner is up."""
    cmd = [sys.executable, "-m", "flows.enhance", "serve", "--name", name, *args]
    proc = Proc(cmd, root / "tmp", REPO, PREFECT_API_URL=prefect_api,
                PREFECT_RUNNER_POLL_FREQUENCY="1", PREFECT_HOME=str(root / "prefect"))  # fmt: skip
    try:
        proc.wait_for(SERVING.format(f"enhance/{name}"), timeout=180)
    except BaseException:
        proc.kill()
        raise
    return proc


def read(coro_fn):
    """Run `coro_fn(client)` with a Prefect client of the test server."""
    from prefect import get_client

    async def go():
        async with get_client() as client:
            return await coro_fn(client)

    return asyncio.run(go())


def deployment(name: str):
    return read(lambda c: c.read_deployment_by_name(f"enhance/{name}"))


def stop(proc: Proc) -> str:
    """SIGTERM `proc`: it must stop as every entry point does (exit 143, one line, nothing
    left running or in its TMPDIR; tests/test_signals.py); its output."""
    return signal_and_check(proc, signal.SIGTERM, timeout=60, stopped="the runner")


# ----------------------------------------------------------------------------- arguments


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "one of the arguments --cron --interval is required"),
        (["--cron", "0 3 * * *", "--interval", "60"], "not allowed with argument"),
        (["--interval", "0"], "argument --interval: must be a finite number above 0, not 0"),
        (["--interval", "-5"], "argument --interval: must be a finite number above 0, not -5"),
        (["--interval", "nan"], "argument --interval: must be a finite number above 0, not nan"),
        (["--interval", "inf"], "argument --interval: must be a finite number above 0, not inf"),
        (["--interval", "1e-7"], "argument --interval: must be at least 1 second, not 1e-7"),
        (["--interval", "1h"], "argument --interval: not a number: '1h'"),
        (["--interval", "60", "--name", "a/b"], "argument --name: not a deployment name: 'a/b'"),
        (["--interval", "60", "--name", " "], "argument --name: not a deployment name: ' '"),
        (["--cron", "nope"], "argument --cron: not a cron schedule: 'nope'"),
        (
            ["--cron", "0 3 * * *", "--max-runs", "0"],
            "argument --max-runs: must be a finite number above 0",
        ),
    ],
)
def test_serve_takes_exactly_one_schedule_and_positive_numbers(args, message, capsys):
    with pytest.raises(SystemExit) as e:
        parse_args(["serve", *args])
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_served_default_name_is_not_a_prefect_yaml_deployment():
    """`prefect deploy` registers prefect.yaml's deployments; a served one of the same name
    would replace it (and the other way round)."""
    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    names = {d["name"] for d in spec["deployments"]}
    assert "enhance-nightly" in names
    assert parse_args(["serve", "--cron", "0 3 * * *"]).name not in names
    assert parse_args(["serve", "--interval", "60"]).name not in names


# ----------------------------------------------------------------------------- serving


def test_max_runs_stops_after_the_run_is_stored_completed(prefect_api, job):
    """The issue: with --max-runs 1 the run did its work, then the runner, stopped while the
    run's process was still exiting, cancelled it: the API said Cancelled ("Runner is
    shutting down"). Read after `serve` has exited, the run must be Completed."""
    root, overrides = job
    proc = serve(prefect_api, root, "serve-runs", "--interval", "3600", "--max-runs", "1",
                 *overrides)  # fmt: skip
    try:
        (sched,) = deployment("serve-runs").schedules
        assert sched.schedule.interval.total_seconds() == 3600 and sched.active
        from prefect.deployments import run_deployment

        run = run_deployment("enhance/serve-runs", timeout=90, poll_interval=1)
        assert proc.p.wait(timeout=60) == 0, proc.output  # --max-runs 1: it stops by itself
        state = read(lambda c: c.read_flow_run(run.id)).state
        assert state.is_completed(), (state.type, state.message)
        assert len(list((root / "out").rglob("*.png"))) == 3
    finally:
        proc.kill()


def test_sigterm_pauses_the_deployment_and_the_next_serve_resumes_it(prefect_api, job):
    """Prefect's runner pauses its deployment when it stops; the next `serve` of that name
    says so in one line and its schedule is active again."""
    root, overrides = job
    line = "deployment 'enhance/serve-paused' was paused"
    proc = serve(prefect_api, root, "serve-paused", "--cron", "0 3 * * *", *overrides)
    try:
        assert [s.schedule.cron for s in deployment("serve-paused").schedules] == ["0 3 * * *"]
        assert line not in stop(proc)
    finally:
        proc.kill()
    assert deployment("serve-paused").paused
    proc = serve(prefect_api, root, "serve-paused", "--interval", "600", *overrides)
    try:
        dep = deployment("serve-paused")
        assert not dep.paused and [s.active for s in dep.schedules] == [True]
        assert dep.schedules[0].schedule.interval.total_seconds() == 600
        out = stop(proc)
    finally:
        proc.kill()
    said = [x for x in out.splitlines() if line in x]
    assert said == [f"{line} (serve pauses it when it stops); resuming its schedule"], out


# ----------------------------------------------------------------------------- default input


def test_default_input_folder_is_kept_in_git():
    """A fresh clone has `enhance.input`'s default folder: data/incoming/.gitkeep is not
    ignored by git (DVC keeps its outputs out of git through .gitignore)."""
    from diffenhance.config import load_config

    assert load_config(REPO / "params.yaml", []).enhance.input == "data/incoming"
    assert (REPO / "data" / "incoming" / ".gitkeep").is_file()
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    ignored = subprocess.run(["git", "check-ignore", "-q", "data/incoming/.gitkeep"], cwd=REPO)
    assert ignored.returncode == 1  # 0: ignored; 128: error


def test_the_default_input_folder_of_a_fresh_clone_is_a_completed_run_of_0_images(
    prefect_api, job, tmp_path
):
    """What a scheduled run finds on a fresh clone (data/incoming holding only .gitkeep): a
    Completed run of 0 images, not an error."""
    root, overrides = job
    fresh = tmp_path / "incoming"
    fresh.mkdir()
    shutil.copy(REPO / "data" / "incoming" / ".gitkeep", fresh)
    state = enhance(
        params=str(REPO / "params.yaml"),
        overrides=[*overrides, f"enhance.input={fresh}", f"enhance.output={tmp_path / 'out'}"],
        return_state=True,
    )
    assert state.is_completed(), state
    summary = state.result()
    assert (summary["images"], summary["enhanced"], summary["failed"]) == (0, 0, 0)
    assert summary["ignored"] == []  # .gitkeep is not "ignored": hidden files are not listed
