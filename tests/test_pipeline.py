"""The README's main job and `dvc repro` semantics, on a tiny config, with real DVC and Prefect."""

from __future__ import annotations

import os

import pandas as pd
import pytest

from diffenhance.config import TASKS
from tests.pipeline_utils import copy_repo, run, set_params

TINY = {
    "data": {"crop_size": 96, "crop_step": 96, "min_size": 32},
    "degrade": {"val_size": 32, "val_max_images": 2},
}


@pytest.fixture(scope="module")
def repo(tmp_path_factory, prefect_api):
    r = copy_repo(tmp_path_factory.mktemp("pipeline"))
    set_params(r, TINY)
    # The main job itself, against the session's Prefect server.
    proc = run(r, "python", "-m", "flows.pipeline")
    return r, proc


def test_main_job_produces_prepared_and_degraded(repo):
    r, proc = repo
    manifest = pd.read_csv(r / "data/prepared/manifest.csv")
    assert set(manifest["split"]) == {"train", "val"}
    val_sources = {
        os.path.basename(p).split(".")[0] for p in manifest.query("split == 'val'")["source_path"]
    }
    assert val_sources == {"chelsea", "rocket"}
    for task in TASKS:
        pairs = pd.read_csv(r / "data/degraded" / task / "pairs.csv")
        assert len(pairs) == 2
        for row in pairs.itertuples():
            assert (r / "data/degraded" / task / row.hr).is_file()
            assert (r / "data/degraded" / task / row.lq).is_file()
    sr4 = pd.read_csv(r / "data/degraded/sr4/pairs.csv")
    assert (sr4.hr_height == 4 * sr4.lq_height).all()
    assert (r / "data/prepared/params.resolved.yaml").is_file()
    assert (r / "data/degraded/params.resolved.yaml").is_file()
    assert "pipeline: output data/degraded" in proc.stdout


def test_repro_twice_changes_nothing(repo):
    r, _ = repo
    proc = run(r, "dvc", "repro")
    assert "Running stage" not in proc.stdout
    status = run(r, "dvc", "status").stdout
    assert "up to date" in status


def test_degrade_param_reruns_only_degrade(repo):
    r, _ = repo
    before = (r / "data/degraded/denoise/pairs.csv").read_bytes()
    prepared_before = (r / "data/prepared/manifest.csv").stat().st_mtime_ns
    set_params(r, {"degrade": {"val_noise_sigma": 15.0}})
    proc = run(r, "dvc", "repro")
    assert "Running stage 'degrade'" in proc.stdout
    assert "Running stage 'prepare'" not in proc.stdout
    assert (r / "data/prepared/manifest.csv").stat().st_mtime_ns == prepared_before
    lq = pd.read_csv(r / "data/degraded/denoise/pairs.csv")
    assert len(lq) == 2
    assert (r / "data/degraded/denoise/pairs.csv").read_bytes() == before  # same names/seeds
