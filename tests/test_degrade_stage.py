"""The `degrade` stage as one library function (`pairs.degrade_stage`), and the flow that maps
it over the tasks: both write exactly the pairs of `write_pair` on every validation crop."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from diffenhance.config import load_config, recorded_reads, write_resolved
from diffenhance.data.pairs import (
    PAIRS_CSV,
    StalePairsError,
    degrade_stage,
    load_pairs,
    task_degradation,
    write_pair,
)
from diffenhance.exitcodes import user_error_code
from diffenhance.restoration import task_names
from tests.tiny import make_dataset


def stage_config(root: Path, *extra: str):
    return load_config(
        None,
        [
            f"data.prepared_dir={root / 'prepared'}",
            f"degrade.out_dir={root / 'out'}",
            "degrade.val_size=32",
            "degrade.tasks=[sr2,denoise]",
            *extra,
        ],
    )


def files(folder: Path, pattern: str = "*.png") -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in folder.rglob(pattern)
        if p.is_file()
    }


def test_degrade_stage_writes_every_task_pair_by_pair(tmp_path):
    make_dataset(tmp_path, tasks=("sr2",), n_val=3)
    cfg = stage_config(tmp_path, "degrade.val_max_images=2")
    written = degrade_stage(cfg)
    assert written == {t: tmp_path / "out" / t / PAIRS_CSV for t in ("sr2", "denoise")}
    assert (tmp_path / "out" / "params.resolved.yaml").is_file()
    manifest = pd.read_csv(tmp_path / "prepared" / "manifest.csv")
    val = manifest[manifest.split == "val"].sort_values("crop_path")
    chosen = val.iloc[[0, 2]]  # 2 of 3, evenly spaced: the first and the last
    for task in ("sr2", "denoise"):
        expected_dir = tmp_path / "expected"
        rows = [
            write_pair(tmp_path / "prepared" / r.crop_path, r.crop_sha256, task,
                       cfg.degrade, expected_dir)
            for r in chosen.itertuples()
        ]  # fmt: skip
        got = pd.read_csv(written[task])
        assert list(got["name"]) == [r["name"] for r in rows] == ["img0_s000", "img2_s000"]
        assert list(got["seed"]) == [r["seed"] for r in rows]
        assert files(tmp_path / "out" / task) == files(expected_dir / task)
        assert len(load_pairs(tmp_path / "out" / task)) == 2
        got_hr, got_lq = got["hr"].iloc[0], got["lq"].iloc[0]
    # a pair's file replaced since (an HR image copied over its LQ): exit 2 naming it
    sr2 = tmp_path / "out" / "sr2"
    lq = sr2 / got_lq
    lq.write_bytes((sr2 / got_hr).read_bytes())
    with pytest.raises(StalePairsError, match=f"{lq}: .* px, but .*pairs.csv records") as e:
        load_pairs(sr2)
    assert user_error_code(e.value) == 2
    # one task only: the other's folder is not written
    only = degrade_stage(stage_config(tmp_path, f"degrade.out_dir={tmp_path / 'one'}"), ["sr2"])
    assert list(only) == ["sr2"] and not (tmp_path / "one" / "denoise").exists()


def test_degrade_stage_without_validation_crops_says_what_to_do(tmp_path):
    make_dataset(tmp_path, tasks=("sr2",))
    manifest = tmp_path / "prepared" / "manifest.csv"
    df = pd.read_csv(manifest)
    df[df.split == "train"].to_csv(manifest, index=False)
    with pytest.raises(RuntimeError, match="no validation crops.*prepare"):
        degrade_stage(stage_config(tmp_path))
    assert not (tmp_path / "out").exists()


def test_degrade_flow_maps_the_library_stage(tmp_path, prefect_api):
    from flows.degrade import degrade

    make_dataset(tmp_path, tasks=("sr2",))
    cfg = stage_config(tmp_path)
    degrade_stage(cfg)
    lib = {t: files(tmp_path / "out" / t) for t in cfg.degrade.tasks}
    flow_out = tmp_path / "flow"
    params = write_resolved(cfg, tmp_path / "params")  # the same config, as a params file
    written = degrade(params=str(params), overrides=[f"degrade.out_dir={flow_out}"])
    assert written == [str(flow_out / t / PAIRS_CSV) for t in cfg.degrade.tasks]
    assert {t: files(flow_out / t) for t in cfg.degrade.tasks} == lib
    for t in cfg.degrade.tasks:
        assert (flow_out / t / PAIRS_CSV).read_bytes() == (
            tmp_path / "out" / t / PAIRS_CSV
        ).read_bytes()
    resolved = (flow_out / "params.resolved.yaml").read_text()
    assert resolved.startswith("data:") and f"out_dir: {flow_out}" in resolved


def test_the_flow_reads_the_manifest_once_before_any_task(tmp_path, prefect_api):
    """No manifest: the flow fails on it before mapping (it failed once per task), with the
    DataError that names the command to run (exit 2)."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from diffenhance.data.prepare import NoManifestError
    from flows.degrade import degrade

    params = write_resolved(stage_config(tmp_path), tmp_path / "params")
    state = degrade(params=str(params), return_state=True)
    with pytest.raises(NoManifestError, match=r"manifest\.csv: .*run `diffenhance prepare`"):
        state.result()
    assert user_error_code(NoManifestError()) == 2
    with get_client(sync_client=True) as client:
        runs = FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
        assert client.read_task_runs(flow_run_filter=runs) == []
    assert not (tmp_path / "out").exists()


def test_a_stopped_degrade_leaves_no_pairs_csv_and_fewer_images_prune_the_rest(
    tmp_path, monkeypatch
):
    """Pairs are rewritten in place: a run with a new noise level stopped at the 2nd pair left
    the old pairs.csv over mixed files. Now it is gone until the task finishes (loading says to
    rerun `degrade`); a smaller val_max_images deletes the pairs no longer listed."""
    import diffenhance.data.pairs as pairs

    make_dataset(tmp_path, tasks=("sr2",), n_val=3)
    cfg = stage_config(tmp_path, "degrade.tasks=[denoise]", "degrade.val_max_images=3")
    degrade_stage(cfg)
    denoise = tmp_path / "out" / "denoise"
    assert len(load_pairs(denoise)) == 3
    calls = []
    real = pairs.write_pair

    def stopped_at_the_second(*args, **kwargs):
        calls.append(args)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(pairs, "write_pair", stopped_at_the_second)
    with pytest.raises(KeyboardInterrupt):
        degrade_stage(
            stage_config(tmp_path, "degrade.tasks=[denoise]", "degrade.val_noise_sigma=5")
        )
    with pytest.raises(FileNotFoundError, match=r"pairs\.csv: .*stopped.*dvc repro degrade"):
        load_pairs(denoise)
    monkeypatch.setattr(pairs, "write_pair", real)

    degrade_stage(stage_config(tmp_path, "degrade.tasks=[denoise]", "degrade.val_max_images=1"))
    assert pd.read_csv(denoise / PAIRS_CSV)["name"].tolist() == ["img0_s000"]
    assert sorted(files(denoise)) == ["hr/img0_s000.png", "lq/img0_s000.png"]


def test_a_training_range_changes_only_its_own_tasks_degradation_record(tmp_path):
    """Each task's training settings are recorded in its own folder (degradation.json), so an
    edit of jpeg's range leaves every other task's folder byte-identical (their DVC train and
    evaluate stages stay cached) and jpeg's pairs too: only its record changes."""
    make_dataset(tmp_path, tasks=("sr2",), n_val=2)
    tasks = "degrade.tasks=[sr2,denoise,jpeg,blind,inpaint]"
    degrade_stage(stage_config(tmp_path, tasks))
    out = tmp_path / "out"
    before = {t: files(out / t, "*") for t in ("sr2", "denoise", "jpeg", "blind", "inpaint")}
    assert json.loads(before["denoise"]["degradation.json"]) == {
        "task": "denoise", "degrade": {"noise_sigma": [5.0, 50.0], "val_noise_sigma": 25.0}
    }  # fmt: skip
    assert json.loads(before["sr2"]["degradation.json"]) == {"task": "sr2", "degrade": {}}
    assert json.loads(before["blind"]["degradation.json"])["degrade"] == {"blind_scale": 4}
    degrade_stage(stage_config(tmp_path, tasks, "degrade.jpeg_quality=[20,70]"))
    after = {t: files(out / t, "*") for t in before}
    assert {t for t in before if after[t] != before[t]} == {"jpeg"}
    changed = {k for k in before["jpeg"] if after["jpeg"][k] != before["jpeg"][k]}
    assert changed == {"degradation.json"}
    assert json.loads(after["jpeg"]["degradation.json"])["degrade"] == {
        "jpeg_quality": [20, 70], "val_jpeg_quality": 30
    }  # fmt: skip


def test_train_and_evaluate_read_the_recorded_degradation_and_refuse_a_stale_one(tmp_path):
    """`task_degradation` is what train and evaluate see: the recorded values, not another
    task's; after an edit of the task's own key without rerunning degrade, a clear error
    naming the key and the stage to rerun; without a record, the stage to run."""
    make_dataset(tmp_path, tasks=("sr2",), n_val=1)
    cfg = stage_config(tmp_path, "degrade.tasks=[denoise]", "degrade.noise_sigma=[1,9]")
    degrade_stage(cfg)
    got = task_degradation(cfg, "denoise")
    assert got.degrade.noise_sigma == (1.0, 9.0) and got.degrade == cfg.degrade
    with pytest.raises(StalePairsError, match=r"degrade\.noise_sigma = \[1\.0, 9\.0\] there, "
                       r"\[2\.0, 9\.0\] in params.*dvc repro degrade") as err:  # fmt: skip
        task_degradation(stage_config(tmp_path, "degrade.noise_sigma=[2,9]"), "denoise")
    assert user_error_code(err.value) == 2
    other = stage_config(tmp_path, "degrade.noise_sigma=[1,9]", "degrade.jpeg_quality=[5,6]")
    assert task_degradation(other, "denoise").degrade.noise_sigma == (1.0, 9.0)  # jpeg's key
    record = tmp_path / "out" / "denoise" / "degradation.json"
    for damaged in ("{not json", '["a list"]', '{"task": "denoise"}'):
        record.write_text(damaged)
        with pytest.raises(StalePairsError, match=r"not a degradation record.*repro degrade"):
            task_degradation(cfg, "denoise")
    record.unlink()
    with pytest.raises(FileNotFoundError, match=r"denoise/degradation\.json.*dvc repro degrade"):
        task_degradation(cfg, "denoise")


@pytest.mark.parametrize("task", task_names())
def test_degrade_keys_are_the_keys_its_degradation_and_scale_read(task):
    """Each task's `degrade_keys` (what degradation.json records) are exactly the degrade.*
    keys its degradation (training and validation) and its scale read, as the params
    recorder sees them: a key missing there would be read from params, unlisted in DVC's
    train stage."""
    import numpy as np

    from diffenhance.restoration import get_task

    t = get_task(task)
    with recorded_reads() as reads:
        cfg = load_config(None, [])
        hr = np.full((32, 32, 3), 0.5, np.float32)
        t.scale(cfg.degrade)
        for validation in (False, True):
            t.degrade(hr, np.random.default_rng(0), cfg.degrade, validation=validation)
    assert {r.removeprefix("degrade.") for r in reads} == set(t.degrade_keys)
