"""A model file is validated once, up front, from its header alone: not safetensors, foreign
or broken metadata, impossible task/scale/sampling values, tensors of the wrong shape and absurd
network sizes all give one line naming the file, and `diffenhance enhance` exits 2 before
planning any work. The shipped models still validate and load."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from diffenhance.cli import app
from diffenhance.model import (
    MAX_PARAMETERS,
    CheckpointError,
    build_network,
    load_matching,
    load_restorer,
    read_checkpoint,
    save_weights,
    validate_checkpoint,
)
from tests.conftest import REPO
from tests.enhance_helpers import random_checkpoint, write_inputs


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    return random_checkpoint(tmp_path_factory.mktemp("good") / "sr2.safetensors")


def _with_meta(good: Path, path: Path, *, model: dict | str | None = None, **meta: str) -> Path:
    """`good` with metadata changed: `model` a dict of config changes or the raw string."""
    tensors, m = read_checkpoint(good)
    if isinstance(model, dict):
        m["model"] = json.dumps(json.loads(m["model"]) | model)
    elif model is not None:
        m["model"] = model
    return save_weights(path, tensors, m | meta)


def bad_models(good: Path, root: Path) -> dict[str, tuple[Path, str]]:
    """{case: (file, what its one-line error must say)}."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "random.safetensors").write_bytes(bytes(range(256)) * 16)
    torch.save({"w": torch.zeros(4)}, root / "pickle.safetensors")  # a .pt renamed
    rec = json.dumps({"steps": 2, "samples": -1})
    return {
        "random bytes": (root / "random.safetensors", "not a readable safetensors file"),
        "pickle .pt": (root / "pickle.safetensors", "not a readable safetensors file"),
        "metadata not JSON": (
            _with_meta(good, root / "json.safetensors", model="{not json"),
            "metadata 'model' is not valid JSON",
        ),
        "unknown model key": (
            _with_meta(good, root / "key.safetensors", model={"widht": 3}),
            "unknown key 'ModelConfig.widht'",
        ),
        "task=banana": (
            _with_meta(good, root / "banana.safetensors", task="banana"),
            "metadata task='banana' is not one of sr2, sr4",
        ),
        "scale=0": (
            _with_meta(good, root / "scale0.safetensors", scale="0"),
            "metadata scale='0' does not fit task sr2 (expected 2)",
        ),
        "scale of another task": (
            _with_meta(good, root / "scale4.safetensors", scale="4"),
            "metadata scale='4' does not fit task sr2",
        ),
        "recommended samples=-1": (
            _with_meta(good, root / "rec.safetensors", recommended=rec),
            "metadata recommended.samples=-1 must be an integer >= 1",
        ),
        "wrong shapes": (
            _with_meta(good, root / "shapes.safetensors", model={"base_channels": 32}),
            "tensors do not fit the network its metadata describes (denoiser.",
        ),
        "negative width": (
            _with_meta(good, root / "neg.safetensors", model={"base_channels": -4}),
            "metadata describes no valid network (model.base_channels must be >= 1",
        ),
        "huge network": (
            _with_meta(good, root / "huge.safetensors", model={"base_channels": 1_000_000}),
            "parameters (more than 2e+09)",
        ),
        "absurd depth": (
            _with_meta(good, root / "deep.safetensors", model={"num_res_blocks": 10**9}),
            "residual blocks (more than 1000)",
        ),
    }


@pytest.fixture(scope="module")
def bad(good, tmp_path_factory) -> dict[str, tuple[Path, str]]:
    return bad_models(good, tmp_path_factory.mktemp("bad"))


def test_every_bad_model_is_refused_in_one_line_naming_the_file(bad):
    for case, (path, why) in bad.items():
        t0 = time.perf_counter()
        with pytest.raises(CheckpointError) as e:
            validate_checkpoint(path)
        msg = str(e.value)
        assert msg.startswith(f"{path}: ") and why in msg, (case, msg)
        assert "\n" not in msg and "init_strict" not in msg, (case, msg)
        # 1e6 channels would be ~1e13 parameters (40 TB): refused from the metadata alone
        assert time.perf_counter() - t0 < 5, case
        with pytest.raises(CheckpointError, match="^" + str(path)):
            load_restorer(path)


def test_parameter_cap_counts_the_network_the_metadata_describes(good):
    spec = validate_checkpoint(good)
    r = load_restorer(good)
    assert spec.n_parameters == sum(p.numel() for p in r.unet.parameters())
    assert spec.n_parameters < MAX_PARAMETERS
    assert (spec.task, spec.scale, spec.diffusion_cfg.formulation) == ("sr2", 2, "residual")


@pytest.mark.parametrize("task", ["sr4", "denoise"])
def test_shipped_models_validate_and_load(task):
    path = REPO / "models/pretrained" / task
    spec = validate_checkpoint(path)
    r = load_restorer(path)
    assert (spec.task, spec.scale) == (r.task, r.scale) == (task, 4 if task == "sr4" else 1)
    assert spec.meta == r.meta and spec.n_parameters == sum(p.numel() for p in r.unet.parameters())
    tensors, _ = read_checkpoint(path)
    assert all(torch.equal(v, tensors[k]) for k, v in r.unet.state_dict().items())


def test_fine_tuning_advice_only_where_the_caller_gives_it(good):
    r = load_restorer(good)
    tensors, _ = read_checkpoint(good)
    wider = build_network(type(r.model_cfg)(base_channels=32), r.diffusion_cfg, r.scale)
    with pytest.raises(CheckpointError) as e:
        load_matching(wider, tensors, strict=True, source="x")
    assert "init_strict" not in str(e.value)
    advice = "Set train.init_strict=false to load only the tensors that match."
    with pytest.raises(CheckpointError, match="init_strict=false"):
        load_matching(wider, tensors, strict=True, source="x", advice=advice)


def test_cli_enhance_refuses_a_bad_model_before_planning(tmp_path, bad):
    inp = tmp_path / "in"
    write_inputs(inp, [(8, 8)])
    params = tmp_path / "params.yaml"
    params.write_text("{}\n")
    for case, (path, why) in bad.items():
        out = tmp_path / "out"
        res = CliRunner().invoke(
            app, ["enhance", str(inp), str(out), "-m", str(path), "--params", str(params)]
        )
        assert res.exit_code == 2, (case, res.output)
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: {path}: "), (case, res.stderr)
        assert why in lines[0] and "Traceback" not in res.output, case
        assert not out.exists(), case  # nothing planned, nothing written
