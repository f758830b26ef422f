"""The `degrade` stage as one library function (`pairs.degrade_stage`), and the flow that maps
it over the tasks: both write exactly the pairs of `write_pair` on every validation crop."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from diffenhance.config import load_config, write_resolved
from diffenhance.data.pairs import (
    PAIRS_CSV,
    StalePairsError,
    degrade_stage,
    load_pairs,
    write_pair,
)
from diffenhance.exitcodes import user_error_code
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


def files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*.png")}


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
