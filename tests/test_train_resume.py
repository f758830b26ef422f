"""Resume after a stop: exact with dropout, free of output paths, robust to a damaged state."""

from __future__ import annotations

import logging
import os
import shutil

import pandas as pd
import pytest
import torch
from safetensors.torch import load, load_file

from diffenhance.config import write_resolved
from diffenhance.data.pairs import degrade_stage
from diffenhance.train import resume_params, train_model
from tests.test_flow_errors import run_module
from tests.tiny import make_dataset, tiny_config

# Dropout draws from the global torch RNG; a state after every step; validation at step 2.
RESUME = ["model.dropout=0.1", "train.steps=4", "train.ckpt_every=1", "train.val_every=2"]
LOG_COLUMNS = ["step", "loss", "lr", "val_psnr", "val_ssim"]  # all but images_per_s (timing)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    make_dataset(root)
    return root


@pytest.fixture(scope="module")
def reference(dataset, tmp_path_factory):
    """(model.safetensors bytes, train log, {sample grid name: bytes}) of an uninterrupted run."""
    out = train_model(
        tiny_config(dataset, f"train.out_dir={tmp_path_factory.mktemp('ref')}", *RESUME), "sr2"
    )
    grids = {p.name: p.read_bytes() for p in sorted((out / "samples").glob("*.png"))}
    log = pd.read_csv(out / "train_log.csv")[LOG_COLUMNS]
    return (out / "model.safetensors").read_bytes(), log, grids


def _states(task_dir) -> list[str]:
    return sorted(p.name for p in (task_dir / "state").rglob("state-*.pt"))


def _assert_same_as(reference, task_dir) -> None:
    weights, log, _ = reference
    pd.testing.assert_frame_equal(pd.read_csv(task_dir / "train_log.csv")[LOG_COLUMNS], log)
    assert (task_dir / "model.safetensors").read_bytes() == weights


def test_resume_with_dropout_equals_uninterrupted(dataset, reference, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="diffenhance.train")
    cfg = tiny_config(dataset, f"train.out_dir={tmp_path}", *RESUME)
    out = train_model(cfg, "sr2", stop_after=2)  # "crash" right after the step-2 validation
    (out / "samples" / "step-00000099.png").write_bytes(b"another run's grid")
    shutil.rmtree(out / "samples")  # what `dvc repro` does to a stage's outputs before a rerun
    train_model(cfg, "sr2")
    assert "resuming from step 2" in caplog.text
    # Bit-identical losses after the resume, and the same checkpoint bytes although the
    # reference was written to another folder; the sample grids of before the crash are back.
    _assert_same_as(reference, out)
    grids = {p.name: p.read_bytes() for p in sorted((out / "samples").glob("*.png"))}
    assert grids == reference[2] and sorted(grids) == ["step-00000002.png", "step-00000004.png"]
    stale = out / "samples" / "step-00000099.png"  # a grid of another run: gone on the next run
    stale.write_bytes(b"another run's grid")
    train_model(cfg, "sr2")  # finished: trains again from step 0
    assert not stale.exists()


def test_out_dir_spelling_and_a_moved_folder_still_resume(
    dataset, reference, tmp_path, caplog, monkeypatch
):
    caplog.set_level(logging.INFO, logger="diffenhance.train")
    monkeypatch.chdir(tmp_path)
    train_model(
        tiny_config(dataset, f"train.out_dir={tmp_path / 'models'}", *RESUME), "sr2", stop_after=1
    )
    train_model(tiny_config(dataset, "train.out_dir=./models/", *RESUME), "sr2", stop_after=2)
    assert "resuming from step 1" in caplog.text
    shutil.move(tmp_path / "models", tmp_path / "moved")
    train_model(tiny_config(dataset, "train.out_dir=moved", *RESUME), "sr2")
    assert "resuming from step 2" in caplog.text
    assert "other params" not in caplog.text
    _assert_same_as(reference, tmp_path / "moved" / "sr2")


class _RunsCode:
    """Unpickling this runs os.mkdir(marker): what a weights-only load must never do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


@pytest.mark.parametrize("damage", ["truncated", "garbled", "pickled", "misfit"])
def test_damaged_newest_state_falls_back_to_the_previous_one(
    dataset, reference, tmp_path, caplog, damage
):
    caplog.set_level(logging.INFO, logger="diffenhance.train")
    cfg = tiny_config(dataset, f"train.out_dir={tmp_path / 'm'}", *RESUME)
    out = train_model(cfg, "sr2", stop_after=3)
    assert _states(out) == ["state-00000002.pt", "state-00000003.pt"]
    newest = sorted((out / "state").rglob("state-00000003.pt"))[0]
    data = newest.read_bytes()
    marker = tmp_path / "code-ran"
    if damage == "truncated":  # torch.load: RuntimeError (no zip directory) or OSError 22
        newest.write_bytes(data[: len(data) // 2])
    elif damage == "garbled":  # torch.load: UnpicklingError advising weights_only=False
        newest.write_bytes(bytes(b ^ 0x5A for b in data))
    elif damage == "pickled":
        digest = newest.parent.name
        torch.save({"step": 3, "digest": digest, "model": {}, "x": _RunsCode(marker)}, newest)
    else:  # its params' digest, but weights of another network (e.g. after a code change)
        state = torch.load(newest, weights_only=True)
        name = sorted(state["model"])[0]
        state["model"][name] = torch.zeros(3)
        torch.save(state, newest)
    train_model(cfg, "sr2")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(str(newest) in w for w in warnings), warnings  # names the bad file
    if damage == "pickled":
        assert any("is not a safe-loadable training state" in w for w in warnings), warnings
        assert not marker.exists()
    elif damage == "misfit":
        expected = f"{newest}: 1 tensors do not fit the network (model {name}: checkpoint (3,)"
        assert any(w.startswith(expected) for w in warnings), warnings
    else:
        assert any("is unreadable (damaged or truncated" in w for w in warnings), warnings
    assert "weights_only" not in caplog.text  # never advises an unsafe load
    assert "resuming from step 2" in caplog.text
    _assert_same_as(reference, out)
    assert _states(out) == ["state-00000003.pt", "state-00000004.pt"]  # the bad one overwritten
    assert torch.load(newest, weights_only=True)["step"] == 3


def test_another_formulations_options_leave_a_run_resumable(dataset, reference, tmp_path, caplog):
    """A state depends on the `diffusion.options` sections its formulation reads, not on the
    others': a residual run stopped at step 2 resumes exactly after pmrf and indi options
    changed, and a change to its own (residual.scale) starts it afresh."""
    caplog.set_level(logging.INFO, logger="diffenhance.train")
    cfg = tiny_config(dataset, f"train.out_dir={tmp_path}", *RESUME)
    assert cfg.diffusion.formulation == "residual"
    out = train_model(cfg, "sr2", stop_after=2)
    others = ["diffusion.options.pmrf.noise=0.3", "diffusion.options.indi.noise=0.05"]
    train_model(tiny_config(dataset, f"train.out_dir={tmp_path}", *RESUME, *others), "sr2")
    assert "resuming from step 2" in caplog.text
    assert "other params" not in caplog.text
    weights, log, _ = reference
    pd.testing.assert_frame_equal(pd.read_csv(out / "train_log.csv")[LOG_COLUMNS], log)
    ours = load_file(out / "model.safetensors")
    theirs = load(weights)
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    caplog.clear()
    own = tiny_config(
        dataset, f"train.out_dir={tmp_path}", *RESUME, "diffusion.options.residual.scale=2.0"
    )
    train_model(own, "sr2", stop_after=1)
    assert "resuming" not in caplog.text


def test_another_tasks_degradation_resumes_and_new_validation_pairs_start_afresh(
    dataset, reference, tmp_path, caplog
):
    """A state depends on its own task's degradation and validation pairs only: an sr2 run
    stopped at step 2 resumes exactly after denoise's and jpeg's settings changed (they used to
    start it afresh: hours lost on a GPU for an edit it never reads); sr2's pairs rewritten (a
    new degrade.val_size) start it afresh, so its log never mixes two validation sets."""
    caplog.set_level(logging.INFO, logger="diffenhance.train")
    data = tmp_path / "data"
    shutil.copytree(dataset, data)
    cfg = tiny_config(data, f"train.out_dir={tmp_path / 'models'}", *RESUME)
    out = train_model(cfg, "sr2", stop_after=2)
    others = [
        "degrade.noise_sigma=[1,2]",
        "degrade.val_noise_sigma=10",
        "degrade.jpeg_quality=[4,5]",
    ]
    train_model(tiny_config(data, f"train.out_dir={tmp_path / 'models'}", *RESUME, *others), "sr2")
    assert "resuming from step 2" in caplog.text
    _assert_same_as(reference, out)
    caplog.clear()
    train_model(cfg, "sr2", stop_after=2)  # finished: trains afresh, stopped at step 2 again
    smaller = tiny_config(data, f"train.out_dir={tmp_path / 'models'}", *RESUME,
                          "degrade.val_size=16")  # fmt: skip
    degrade_stage(smaller, ["sr2"])
    caplog.clear()
    train_model(smaller, "sr2", stop_after=1)
    assert "resuming" not in caplog.text


@pytest.mark.parametrize(
    ("overrides", "sections"),
    [
        ([], ["residual"]),
        (["diffusion.formulation=regression"], []),
        (["diffusion.formulation=pmrf"], ["pmrf", "residual"]),
        (["diffusion.formulation=pmrf", "diffusion.options.pmrf.mean=indi"], ["indi", "pmrf"]),
    ],
)
def test_resume_params_hold_the_option_sections_the_formulation_reads(dataset, overrides, sections):
    params = resume_params(tiny_config(dataset, *overrides), "sr2")
    assert sorted(params["diffusion"]["options"]) == sections
    assert params["diffusion"].keys() == tiny_config(dataset).to_dict()["diffusion"].keys()


@pytest.mark.parametrize("stop_at", [2, 4], ids=["checkpoint-step", "final-step"])
def test_a_stop_inside_validation_resumes_with_its_log_row(
    dataset, reference, tmp_path, caplog, monkeypatch, stop_at
):
    """A kill while step N validates (N a checkpoint step, or the last step) leaves no state of
    step N: the resumed run redoes the step and writes log row N and its samples, and a stop
    inside the final validation is resumed, not retrained from step 0."""
    import diffenhance.train as training

    caplog.set_level(logging.INFO, logger="diffenhance.train")
    cfg = tiny_config(dataset, f"train.out_dir={tmp_path}", *RESUME)
    validate = training.validate

    def killed(r, cfg, out_dir, step):
        if step == stop_at:
            raise KeyboardInterrupt
        return validate(r, cfg, out_dir, step)

    monkeypatch.setattr(training, "validate", killed)
    with pytest.raises(KeyboardInterrupt):
        train_model(cfg, "sr2")
    monkeypatch.setattr(training, "validate", validate)
    out = train_model(cfg, "sr2")
    assert "training again from step 0" not in caplog.text
    _assert_same_as(reference, out)
    assert (out / "samples" / f"step-{stop_at:08d}.png").is_file()
    assert f"resuming from step {stop_at - 1}" in caplog.text


def test_flow_run_shows_the_library_info_lines(prefect_api, dataset, tmp_path):
    """`python -m flows.train` (as `dvc repro` and `diffenhance train` run it) prints the
    diffenhance INFO lines: the resume, the validations, and what init_from=pretrained chose,
    once."""
    cfg = tiny_config(dataset, f"train.out_dir={tmp_path / 'm'}", *RESUME)
    train_model(cfg, "sr2", stop_after=2)
    res = run_module("flows.train", "--params", str(write_resolved(cfg, tmp_path)), cwd=tmp_path)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    assert "sr2: resuming from step 2" in out
    assert "sr2 step 4: val PSNR" in out
    assert out.count("train.init_from=pretrained:") == 1, out


def test_a_log_row_cut_by_a_crash_and_its_throughput_are_those_of_an_uninterrupted_run(
    dataset, tmp_path, monkeypatch
):
    """A state saved between two log rows carries the row's loss, image and time sums, and
    validation time is not training time: on a clock that moves 1 s per step and 100 s per
    validation, every row says 2 images/s, and a run stopped at step 3 (last state: step 2)
    writes exactly the uninterrupted run's log, loss averages included."""
    from types import SimpleNamespace

    import diffenhance.train as training

    clock = [0.0]
    monkeypatch.setattr(training, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    run_step, validate = training.TrainLoop.run_step, training.validate

    def timed_step(self):
        run_step(self)
        clock[0] += 1.0

    def timed_validate(*args):
        clock[0] += 100.0
        return validate(*args)

    monkeypatch.setattr(training.TrainLoop, "run_step", timed_step)
    monkeypatch.setattr(training, "validate", timed_validate)
    every = ["train.steps=6", "train.log_every=4", "train.ckpt_every=2", "train.val_every=4"]
    logs = []
    for name, stop in (("whole", None), ("resumed", 3)):
        cfg = tiny_config(dataset, f"train.out_dir={tmp_path / name}", *every)
        if stop:
            train_model(cfg, "sr2", stop_after=stop)
        logs.append(pd.read_csv(train_model(cfg, "sr2") / "train_log.csv"))
    whole, resumed = logs
    assert list(whole["step"]) == [4, 6]
    assert list(whole["images_per_s"]) == [2.0, 2.0]  # batch 2, 1 s a step
    pd.testing.assert_frame_equal(resumed, whole, check_exact=True)


def test_a_state_saved_before_log_meters_existed_still_resumes(dataset, reference, tmp_path):
    """States of older versions have no "meters": the resumed run starts the next row's sums
    afresh (here a row every step, so nothing is lost)."""
    cfg = tiny_config(dataset, f"train.out_dir={tmp_path}", *RESUME)
    out = train_model(cfg, "sr2", stop_after=2)
    for path in (out / "state").rglob("state-*.pt"):
        state = torch.load(path, weights_only=True)
        del state["meters"]
        torch.save(state, path)
    train_model(cfg, "sr2")
    _assert_same_as(reference, out)
