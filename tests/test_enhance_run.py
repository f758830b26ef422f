"""`run_job`'s one error policy (diffenhance.enhance.run) with a pluggable shard runner, and
the exit codes `diffenhance enhance` and `python -m flows.enhance` share for it."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from diffenhance.cli import app
from diffenhance.config import load_config
from diffenhance.enhance import (
    MANIFEST_DIR,
    SUMMARY_KEY,
    DiskFull,
    EnhanceError,
    ShardsCrashed,
    exit_code,
    in_process,
    plan_job,
    run_job,
)
from diffenhance.exitcodes import user_error_code
from diffenhance.io import is_temp_name, read_image, write_image
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


def job_config(inp: Path, out: Path, ckpt: Path, *extra: str):
    io = [f"enhance.input={inp}", f"enhance.output={out}", f"enhance.model={ckpt}"]
    return load_config(None, [*io, *JOB, *extra])


def temp_files_under(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if is_temp_name(p.name)]


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


# ----------------------------------------------------------------------------- disk full


def test_a_full_disk_stops_the_job_at_once_names_the_file_and_a_rerun_finishes(
    job_dirs, ckpt, monkeypatch
):
    """ENOSPC while writing the 2nd output (an encoder's write: no file name in the error)
    stops the job there, before a 3rd image is restored or a 2nd shard runs: one line naming
    the file, exit 1, no half file; the rerun does the rest."""
    inp, out, _ = job_dirs
    cfg = job_config(inp, out, ckpt, "infer.tile_batch=1")  # one image in flight at a time
    real_save = Image.Image.save
    saved: list[str] = []

    def disk_fills_at_the_second(self, fp, *args, **kwargs):
        saved.append(str(fp))
        if len(saved) % 2 == 0:  # the 2nd image of each run below
            Path(fp).write_bytes(b"\x89PNG half")  # what a full disk leaves
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", disk_fills_at_the_second)
    ident = IdentityTiles(scale=2)
    with pytest.raises(DiskFull) as e:
        run_job(cfg, model=ident)
    second = out / "sub0/img2.png"  # key order: sub0/img0, sub0/img2, sub0/img4, sub1/...
    msg = str(e.value)
    assert f"{second}: No space left on device (ENOSPC)" in msg and "\n" not in msg, msg
    assert len(ident.calls) == 2 and user_error_code(e.value) == 1
    assert not second.exists() and not temp_files_under(out) and not (out / SUMMARY_KEY).exists()
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == ["sub0/img0.png"]
    (partial,) = (out / MANIFEST_DIR).glob("*.partial.json")
    assert [r["input_key"] for r in json.loads(partial.read_text())["images"]] == ["sub0/img0.png"]

    # the CLI (and the flow, through the same exit-code table): exit 1, one `error:` line
    res = CliRunner().invoke(
        app, ["enhance", str(inp), str(out), "-m", str(ckpt), "--params", str(inp.parent /
              "params.yaml"), *JOB, "infer.tile_batch=1"],
    )  # fmt: skip
    assert res.exit_code == 1, res.output
    errors = [x for x in res.stderr.splitlines() if "error" in x.lower()]
    assert errors == [f"error: {out / 'sub0/img4.png'}: {msg.split(': ', 1)[1]}"], res.stderr
    assert "Traceback" not in res.output and not temp_files_under(out)

    monkeypatch.undo()
    again = run_job(cfg, model=ident)
    assert again["enhanced"] == 3 and again["skipped_done"] == 2 and exit_code(again) == 0
    assert len(list(out.rglob("*.png"))) == 5 and not temp_files_under(out)


@pytest.fixture
def tiny_disk(tmp_path):
    """A 64 KiB tmpfs (needs root, or CAP_SYS_ADMIN: skipped where mounting is refused)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if shutil.which("mount") is None or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)],
                       capture_output=True, text=True)  # fmt: skip
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def test_a_really_full_disk_stops_the_job_and_a_rerun_on_more_space_finishes(
    tmp_path, ckpt, tiny_disk
):
    """The same on a real 64 KiB tmpfs: 8 noise images (about 12 KiB each once enhanced)."""
    inp, out = tmp_path / "in", tiny_disk / "out"
    rng = np.random.default_rng(0)
    for i in range(8):
        write_image(inp / f"n{i}.png", rng.random((32, 32, 3), dtype=np.float32))
    cfg = job_config(inp, out, ckpt, "infer.tile_batch=1", "infer.tile=32")
    ident = IdentityTiles(scale=2)
    with pytest.raises(DiskFull) as e:
        run_job(cfg, model=ident)
    assert str(e.value).startswith(f"{out}/") and "No space left on device" in str(e.value)
    assert len(ident.calls) < 8 and not temp_files_under(out)
    written = sorted(out.glob("*.png"))
    assert written and all(read_image(p).shape == (64, 64, 3) for p in written)  # none half

    subprocess.run(["mount", "-o", "remount,size=2m", str(tiny_disk)], check=True)
    again = run_job(cfg, model=ident)
    assert again["failed"] == 0 and again["enhanced"] + again["skipped_done"] == 8
    assert again["enhanced"] >= 8 - len(written) and exit_code(again) == 0
    assert all(read_image(p).shape == (64, 64, 3) for p in out.glob("*.png"))
    assert len(list(out.glob("*.png"))) == 8 and not temp_files_under(out)
