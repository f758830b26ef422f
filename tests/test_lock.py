"""One job per output (`diffenhance.enhance.lock`): a second job on an output that a running
job holds stops with one line naming the holder (exit 2) before any work; a lock left by a
job that is gone is taken over; the storage layer's exclusive create has one winner, locally
and on a real S3 server."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from diffenhance.cli import app
from diffenhance.config import load_config
from diffenhance.enhance import (
    LOCK_KEY,
    SUMMARY_KEY,
    OutputLocked,
    hold_output,
    lock,
    run_job,
)
from diffenhance.storage import Storage, open_storage
from tests.conftest import REPO
from tests.enhance_helpers import random_checkpoint, write_inputs

JOB = ["enhance.shard_size=3", "infer.tile=16", "infer.tile_overlap=4", "infer.steps=1"]
pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return random_checkpoint(tmp_path_factory.mktemp("model") / "sr2.safetensors")


@pytest.fixture
def job(tmp_path, ckpt):
    """(input folder of 4 images, output folder, the job's config)."""
    inp, out = tmp_path / "in", tmp_path / "out"
    write_inputs(inp, [(12, 12)] * 4)
    io = [f"enhance.input={inp}", f"enhance.output={out}", f"enhance.model={ckpt}"]
    return inp, out, load_config(None, [*io, *JOB])


@contextmanager
def held_by_another_thread(store: Storage) -> Iterator[None]:
    """The lock of `store` held by another thread of this process (another holder) for the
    block."""
    got, done, failed = threading.Event(), threading.Event(), []

    def hold() -> None:
        try:
            with hold_output(store):
                got.set()
                done.wait(60)
        except Exception as e:  # pragma: no cover - reported below
            failed.append(e)
            got.set()

    t = threading.Thread(target=hold)
    t.start()
    assert got.wait(30) and not failed, failed
    try:
        yield
    finally:
        done.set()
        t.join(30)


def outputs(out: Path) -> list[str]:
    return sorted(p.name for p in out.rglob("*.png")) if out.exists() else []


def write_lock(out: Path, **fields) -> None:
    record = {
        "format": lock.LOCK_FORMAT,
        "token": "x" * 32,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": "2026-12-05T00:00:00.000+00:00",
        "heartbeat": datetime.now(UTC).isoformat(),
        "command": "diffenhance enhance",
    }
    (out / LOCK_KEY).parent.mkdir(parents=True, exist_ok=True)
    (out / LOCK_KEY).write_text(json.dumps({**record, **fields}))  # fmt: skip


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# ----------------------------------------------------------------------------- storage


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_exclusive_create_has_one_winner_and_leaves_nothing_else(backend, request, tmp_path):
    url = str(tmp_path / "o") if backend == "local" else request.getfixturevalue("s3_prefix")
    store = open_storage(url)
    assert store.create_exclusive("m/lock.json", b"first") is True
    assert store.create_exclusive("m/lock.json", b"second") is False
    assert store.read_bytes("m/lock.json") == b"first"
    assert [o.key for o in store.list("")] == ["m/lock.json"]  # no temp file beside it


def test_s3_exclusive_create_is_a_conditional_put_on_the_server(s3_prefix, monkeypatch):
    """The race the pre-check cannot see (the object appears after it): the server refuses
    the PUT (If-None-Match: *) and the first content stays."""
    store = open_storage(s3_prefix)
    store.write_bytes("lock.json", b"first")
    monkeypatch.setattr(store, "stat", lambda key: None)
    assert store.create_exclusive("lock.json", b"second") is False
    assert store.read_bytes("lock.json") == b"first"


# ----------------------------------------------------------------------------- jobs


def test_a_second_job_on_a_held_output_exits_2_naming_the_holder_before_any_work(job, tmp_path):
    inp, out, cfg = job
    (params := tmp_path / "params.yaml").write_text("{}\n")
    args = ["enhance", str(inp), str(out), "-m", cfg.enhance.model, "--params", str(params), *JOB]
    with held_by_another_thread(open_storage(str(out))):
        res = CliRunner().invoke(app, args)
        assert res.exit_code == 2, res.output
        (line,) = [x for x in res.stderr.splitlines() if x.startswith("error:")]
        assert f"{out} is being written by another enhance job" in line, line
        assert f"pid {os.getpid()} on {socket.gethostname()}" in line, line
        assert str(out / LOCK_KEY) in line and "Traceback" not in res.output
        assert outputs(out) == [] and not (out / SUMMARY_KEY).exists()
        # a dry run only reads: it does not need the lock
        dry = CliRunner().invoke(app, [*args, "--dry-run"])
        assert dry.exit_code == 0, dry.output
        with pytest.raises(OutputLocked):  # the library call refuses alike
            run_job(cfg)
    res = CliRunner().invoke(app, args)  # the holder is done: the job runs, and lets go
    assert res.exit_code == 0, res.output
    assert len(outputs(out)) == 4 and not (out / LOCK_KEY).exists()


def test_the_flow_refuses_a_held_output_with_the_same_line(prefect_api, job, tmp_path):
    """Another process (python -m flows.enhance) meets the lock this test process holds."""
    inp, out, cfg = job
    (params := tmp_path / "params.yaml").write_text("{}\n")
    io = [f"enhance.input={inp}", f"enhance.output={out}", f"enhance.model={cfg.enhance.model}"]
    with held_by_another_thread(open_storage(str(out))):
        proc = subprocess.run(
            [sys.executable, "-m", "flows.enhance", "--params", str(params), *io, *JOB],
            env={**os.environ, "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{REPO}"},
            cwd=tmp_path, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    (line,) = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
    assert f"pid {os.getpid()} on {socket.gethostname()}" in line, line
    assert "Traceback" not in proc.stderr and outputs(out) == []


def test_a_lock_left_by_a_killed_job_is_taken_over_with_a_warning(job, caplog):
    inp, out, cfg = job
    pid = dead_pid()
    write_lock(out, pid=pid)
    with caplog.at_level(logging.WARNING, logger="diffenhance.enhance.lock"):
        summary = run_job(cfg)
    assert summary["enhanced"] == 4 and not (out / LOCK_KEY).exists()
    assert f"pid {pid} is not running on this host" in caplog.text


def test_another_hosts_lock_holds_while_its_heartbeat_is_fresh(job, caplog):
    inp, out, cfg = job
    write_lock(out, host="elsewhere.example", pid=1)
    with pytest.raises(OutputLocked, match="pid 1 on elsewhere.example"):
        run_job(cfg)
    old = datetime.now(UTC) - timedelta(seconds=lock.STALE_AFTER_S + 5)
    write_lock(out, host="elsewhere.example", pid=1, heartbeat=old.isoformat())
    with caplog.at_level(logging.WARNING, logger="diffenhance.enhance.lock"):
        assert run_job(cfg)["enhanced"] == 4
    assert "its heartbeat is 30" in caplog.text and not (out / LOCK_KEY).exists()


def test_an_unreadable_lock_holds_until_it_is_old(job):
    inp, out, cfg = job
    (out / LOCK_KEY).parent.mkdir(parents=True)
    (out / LOCK_KEY).write_text("{not json")
    with pytest.raises(OutputLocked, match=r"a job \(its lock cannot be read\)"):
        run_job(cfg)
    old = time.time() - lock.STALE_AFTER_S - 5
    os.utime(out / LOCK_KEY, (old, old))
    assert run_job(cfg)["enhanced"] == 4


def test_the_same_thread_reenters_another_thread_is_another_holder(tmp_path):
    store = open_storage(str(tmp_path / "out"))
    with hold_output(store), hold_output(store):  # the flow: around planning, then run_job
        record = json.loads(store.read_bytes(LOCK_KEY))
        assert record["pid"] == os.getpid() and record["format"] == lock.LOCK_FORMAT
        refused: list[BaseException] = []

        def other() -> None:
            try:
                with hold_output(store):
                    pass
            except OutputLocked as e:
                refused.append(e)

        t = threading.Thread(target=other)
        t.start()
        t.join(30)
        assert len(refused) == 1
    assert not store.exists(LOCK_KEY)


def test_the_heartbeat_refreshes_and_release_keeps_a_lock_that_is_not_ours(
    tmp_path, monkeypatch, caplog
):
    monkeypatch.setattr(lock, "HEARTBEAT_S", 0.05)
    store = open_storage(str(tmp_path / "out"))
    with caplog.at_level(logging.WARNING, logger="diffenhance.enhance.lock"):
        with hold_output(store):
            first = json.loads(store.read_bytes(LOCK_KEY))
            deadline = time.monotonic() + 10
            while json.loads(store.read_bytes(LOCK_KEY))["heartbeat"] == first["heartbeat"]:
                assert time.monotonic() < deadline, "the heartbeat never refreshed the lock"
                time.sleep(0.02)
            theirs = {**first, "token": "t" * 32}
            store.write_bytes(LOCK_KEY, json.dumps(theirs).encode())  # taken by another job
            time.sleep(0.3)
        assert json.loads(store.read_bytes(LOCK_KEY)) == theirs  # not deleted by our release
    assert "lock was removed or taken by another job" in caplog.text


def test_an_s3_output_is_locked_alike(s3_prefix):
    store = open_storage(s3_prefix + "/out")
    with held_by_another_thread(store):
        second = hold_output(open_storage(s3_prefix + "/out"))
        with pytest.raises(OutputLocked, match=f"{s3_prefix}/out is being written"), second:
            pass
        assert json.loads(store.read_bytes(LOCK_KEY))["pid"] == os.getpid()
    assert not store.exists(LOCK_KEY)
