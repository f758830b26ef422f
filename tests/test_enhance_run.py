"""`run_job`'s one error policy (diffenhance.enhance.run) with a pluggable shard runner, and
the exit codes `diffenhance enhance` and `python -m flows.enhance` share for it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from diffenhance.cli import app
from diffenhance.config import load_config
from diffenhance.enhance import (
    MANIFEST_DIR,
    SUMMARY_KEY,
    EnhanceError,
    ShardsCrashed,
    exit_code,
    in_process,
    plan_job,
    run_job,
)
from diffenhance.exitcodes import user_error_code
from tests.conftest import REPO
from tests.enhance_helpers import IdentityTiles, random_checkpoint, write_inputs

JOB = ["enhance.shard_size=3", "infer.tile=16", "infer.tile_overlap=4", "infer.steps=2"]
pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return random_checkpoint(tmp_path_factory.mktemp("model") / "sr2.safetensors")


@pytest.fixture
def job_dirs(tmp_path, ckpt):
    """5 inputs (2 shards of enhance.shard_size=3), a params file and the job's config."""
    inp, out = tmp_path / "in", tmp_path / "out"
    write_inputs(inp, [(12, 12)] * 5)
    params = tmp_path / "params.yaml"
    params.write_text("{}\n")
    io = [f"enhance.input={inp}", f"enhance.output={out}", f"enhance.model={ckpt}"]
    return inp, out, load_config(params, io + JOB)


def test_a_crashed_shard_is_recorded_the_others_run_and_a_rerun_finishes_it(job_dirs):
    inp, out, cfg = job_dirs
    ident = IdentityTiles(scale=2)
    stale = out / MANIFEST_DIR / "00009-gone.json"  # an old shard's: kept while one crashed
    stale.parent.mkdir(parents=True)
    stale.write_text("{}")

    def first_crashes(job, shards, cfg):
        yield ConnectionError("storage went away")
        yield from in_process(model=ident)(job, shards[1:], cfg)

    job = plan_job(cfg)
    summary = run_job(cfg, job=job, runner=first_crashes)
    assert summary["shard_errors"] == [
        {"shard_id": job.shards[0].id, "reason": "ConnectionError: storage went away"}
    ]
    assert summary["enhanced"] == 2 and summary["shards_run"] == 1 and exit_code(summary) == 1
    assert json.loads((out / SUMMARY_KEY).read_text()) == summary
    assert stale.exists()
    again = run_job(cfg, model=ident)  # the default runner: in this process
    assert again["enhanced"] == 3 and again["skipped_done"] == 2 and exit_code(again) == 0
    assert not stale.exists()


def test_a_model_error_from_a_shard_stops_the_job_before_the_next_shard(job_dirs):
    inp, out, cfg = job_dirs
    started: list[str] = []

    def worker_has_other_weights(job, shards, cfg):
        for shard in shards:
            started.append(shard.id)
            yield EnhanceError("model.safetensors: sha256 abc on this worker, but ...")

    with pytest.raises(EnhanceError, match="on this worker"):
        run_job(cfg, runner=worker_has_other_weights)
    assert len(started) == 1 and not (out / SUMMARY_KEY).exists()
    assert user_error_code(EnhanceError("x")) == 2 and user_error_code(ShardsCrashed("x")) == 1


def test_storage_down_exits_1_with_one_line_from_the_cli_and_the_flow(
    prefect_api, tmp_path, ckpt, monkeypatch
):
    """Both front ends of one job: the same exit code (1, not the usage code 2) and the same
    one `error:` line naming the endpoint."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE9")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "sk-example-9")
    params = tmp_path / "params.yaml"
    params.write_text("{}\n")
    dead = ["storage.endpoint_url=http://127.0.0.1:9", "storage.max_attempts=1"]
    res = CliRunner().invoke(
        app, ["enhance", "s3://bucket/in", str(tmp_path / "out"), "-m", str(ckpt),
              "--params", str(params), *dead],
    )  # fmt: skip
    assert res.exit_code == 1, res.output
    (line,) = [x for x in res.stderr.splitlines() if x.startswith("error:")]
    assert "127.0.0.1:9" in line and "Traceback" not in res.output

    io = ["enhance.input=s3://bucket/in", f"enhance.output={tmp_path / 'out'}"]
    proc = subprocess.run(
        [sys.executable, "-m", "flows.enhance", "--params", str(params), *io,
         f"enhance.model={ckpt}", *dead],
        env={**os.environ, "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{REPO}"},
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    errors = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
    assert errors == [line] and "Traceback" not in proc.stderr
