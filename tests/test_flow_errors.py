"""`python -m flows.<X>` on a user error (bad key, bad model file, bad storage URL): one
`error:` line and the documented exit code, no traceback - from Prefect's logs neither."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.enhance_helpers import write_inputs


def run_module(module: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}
    env |= {"OMP_NUM_THREADS": "1", "PREFECT_LOGGING_LEVEL": "INFO"}  # show what a user sees
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def assert_one_error_line(res: subprocess.CompletedProcess, code: int, start: str) -> None:
    out = res.stdout + res.stderr
    assert res.returncode == code, out
    assert "Traceback" not in out and "Encountered exception" not in out, out
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(start), out


@pytest.fixture(scope="module")
def job(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("flow-errors")
    write_inputs(root / "in", [(8, 8)])
    (root / "params.yaml").write_text("{}\n")
    (root / "noise.safetensors").write_bytes(os.urandom(4096))
    return root


def test_enhance_flow_bad_key_and_bad_model(prefect_api, job):
    io = [f"enhance.input={job / 'in'}", f"enhance.output={job / 'out'}"]
    res = run_module("flows.enhance", *io, "enhance.nope=1", cwd=job)
    assert_one_error_line(res, 2, "error: params.yaml with overrides")
    assert "unknown key 'enhance.nope'" in res.stderr
    model = job / "noise.safetensors"
    res = run_module("flows.enhance", *io, f"enhance.model={model}", cwd=job)
    assert_one_error_line(res, 2, f"error: {model}: not a readable safetensors file")
    serve = ["serve", "--cron", "0 3 * * *", *io, f"enhance.model={model}"]
    assert_one_error_line(run_module("flows.enhance", *serve, cwd=job), 2, f"error: {model}: ")
    assert not (job / "out").exists()


def test_publish_flow_storage_error_inside_the_flow(prefect_api, job):
    """The URL is refused inside the flow run (after Prefect started it): Prefect's traceback
    of it stays out of the console."""
    res = run_module("flows.publish", "storage.url=ftp://host/x", cwd=job)
    assert_one_error_line(res, 1, "error: unsupported storage URL scheme 'ftp'")
    res = run_module("flows.publish", "storage.nope=1", cwd=job)
    assert_one_error_line(res, 2, "error: params.yaml with overrides")


def test_prepare_flow_data_errors(prefect_api, job):
    """A dataset a user has to fix (a missing data.folder, one without an image) is a DataError:
    exit 2 with one `error:` line naming it, not Prefect's three tracebacks."""
    prepared = f"data.prepared_dir={job / 'prepared'}"
    missing = job / "no-such-folder"
    res = run_module(
        "flows.prepare", "data.source=folder", f"data.folder={missing}", prepared, cwd=job
    )
    assert_one_error_line(res, 2, f"error: data.folder='{missing}': {missing} does not exist")
    (job / "notes").mkdir()
    (job / "notes" / "readme.txt").write_text("not an image\n")
    folder = f"data.folder={job / 'notes'}"
    res = run_module("flows.prepare", "data.source=folder", folder, prepared, cwd=job)
    assert_one_error_line(res, 2, "error: data.source='folder': no usable image found")


def test_degrade_before_prepare_is_one_line_before_prefect(tmp_path):
    """`diffenhance degrade` on a fresh clone (no prepared manifest) said it six times, once
    per task, after 12 lines of Prefect's log and 25 s: the missing manifest is now checked once,
    before Prefect starts, a DataError that names the command to run."""
    (tmp_path / "params.yaml").write_text("{}\n")
    res = run_module("diffenhance.cli", "degrade", f"degrade.out_dir={tmp_path / 'out'}",
                     cwd=tmp_path)  # fmt: skip
    manifest = Path("data", "prepared", "manifest.csv")
    assert_one_error_line(res, 2, f"error: {manifest}: no manifest: the `prepare` stage has not")
    assert "run `diffenhance prepare` (or `dvc repro prepare`)" in res.stderr
    assert len((res.stdout + res.stderr).splitlines()) == 1, res.stdout + res.stderr
    assert not (tmp_path / "out").exists()


def test_train_and_evaluate_before_their_inputs_are_one_line_before_prefect(tmp_path):
    """`diffenhance train` before `prepare` failed inside the flow after ~10 lines of Prefect's
    log (17 s); before `degrade` it trained until its first validation (20 s and more) and then
    failed; `evaluate` before `train` the same. Each is now one `error:` line, exit 2, checked
    before Prefect starts, naming the stage to run."""
    from tests.tiny import make_dataset

    (tmp_path / "params.yaml").write_text("{}\n")
    res = run_module("diffenhance.cli", "train", cwd=tmp_path)
    manifest = Path("data", "prepared", "manifest.csv")
    assert_one_error_line(res, 2, f"error: {manifest}: no manifest: the `prepare` stage")
    assert len((res.stdout + res.stderr).splitlines()) == 1, res.stdout + res.stderr

    paths = make_dataset(tmp_path / "d")
    data = [f"data.prepared_dir={paths['prepared']}", "train.tasks=[sr2]"]
    models = tmp_path / "models"
    nowhere = tmp_path / "not-degraded"
    for stage, extra, start in (
        ("train", [f"degrade.out_dir={nowhere}"], f"error: {nowhere / 'sr2' / 'pairs.csv'}: no "),
        ("evaluate", [f"degrade.out_dir={paths['degraded']}"], f"error: {models / 'sr2'}"),
    ):
        res = run_module("diffenhance.cli", stage, *data, *extra, f"train.out_dir={models}",
                         cwd=tmp_path)  # fmt: skip
        assert_one_error_line(res, 2, start)
        assert len((res.stdout + res.stderr).splitlines()) == 1, res.stdout + res.stderr
        assert not models.exists()
