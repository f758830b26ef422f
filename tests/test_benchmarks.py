"""benchmarks/ is no second pipeline: its data comes from the library's stage functions, the
shipped models' recipes run through the `train` stage's own entry point."""

from __future__ import annotations

import ast
import importlib.util
import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
# The pieces of the `degrade` stage that only `pairs.degrade_stage` (and its flow) compose.
STAGE_PIECES = {"write_pair", "write_pairs_csv", "select_val_crops", "prepare_one"}


def imported_names(f: Path) -> set[str]:
    return {
        a.name
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8")))
        if isinstance(node, ast.ImportFrom)
        for a in node.names
    }


def test_benchmarks_and_tiny_call_the_stage_functions_not_copies():
    files = [*sorted((REPO / "benchmarks").glob("*.py")), REPO / "tests" / "tiny.py"]
    copies = {f.name: sorted(imported_names(f) & STAGE_PIECES) for f in files}
    assert not {k: v for k, v in copies.items() if v}, copies
    users = [f.name for f in files if "degrade_stage" in imported_names(f)]
    assert sorted(users) == ["bench_lrspace.py", "gpu_check.py", "tiny.py", "train_pretrained.py"]


@pytest.mark.parametrize("name", sorted(p.stem for p in (REPO / "benchmarks").glob("*.py")))
def test_every_benchmark_imports(name):
    """A benchmark that imports a helper that no longer exists fails here, not on a GPU box."""
    _bench(name)


def test_the_formulations_script_is_gone():
    """The comparison is the `compare` stage; nothing points at the removed script."""
    assert not (REPO / "benchmarks" / "formulations.py").exists()
    tracked = subprocess.run(
        ["git", "grep", "-l", "benchmarks/formulations.py", "--", ".", ":!benchmarks/RESULTS.md",
         ":!tests/test_benchmarks.py"],
        cwd=REPO, capture_output=True, text=True,
    ).stdout.split()  # fmt: skip
    assert tracked == []


@pytest.fixture(scope="module")
def train_pretrained():
    sys.path.insert(0, str(REPO / "benchmarks"))  # its `from _common import ...`
    try:
        spec = importlib.util.spec_from_file_location(
            "train_pretrained", REPO / "benchmarks" / "train_pretrained.py"
        )
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        yield mod
    finally:
        sys.path.remove(str(REPO / "benchmarks"))


def test_recipe_runs_through_the_train_flow_or_its_library_entry(train_pretrained, monkeypatch):
    recipe = Path("benchmarks/pretrained/params-sr4.yaml")
    cmd = train_pretrained.train_command(recipe, ["train.steps=2"])
    assert cmd[1:] == ["-m", "flows.train", "--params", str(recipe), "train.steps=2"]
    # the flow's own parser takes the recipe and the overrides
    from flows.common import parse_stage_args

    args = parse_stage_args(cmd[3:], "train")
    assert (args.params, args.overrides) == (str(recipe), ["train.steps=2"])
    # a GPU box without prefect: the library function the flow's task runs, same arguments
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "prefect" else real(name, *a)
    )
    cmd = train_pretrained.train_command(recipe, ["train.steps=2"])
    assert cmd[1:] == ["-m", "diffenhance.train", "--params", str(recipe), "train.steps=2"]


def test_ship_installs_a_finished_run_with_its_recommendation_and_figures(
    train_pretrained, tmp_path
):
    """`--ship` copies a run's folder into the shipped place whole, records the recommended
    steps in the checkpoint and the held-out figures in the card; a wrong folder changes
    nothing."""
    from diffenhance.model import load_restorer, presets

    run_out = tmp_path / "run"
    shutil.copytree(REPO / "models" / "pretrained" / "sr2", run_out / "sr2")
    dest = tmp_path / "pretrained"
    figures = {"psnr_y_model": 33.75, "command": "bench_quality.py --tasks sr2"}
    (tmp_path / "fig.json").write_text(json.dumps(figures))
    rc = train_pretrained.main(["--task", "sr2", "--ship", str(run_out), "--dest", str(dest),
                                "--recommend-steps", "2", "--why", "2 steps: +0.01 dB",
                                "--measured", str(tmp_path / "fig.json")])  # fmt: skip
    assert rc == 0
    assert sorted(p.name for p in dest.iterdir()) == ["sr2"]  # no temp folders left
    card = json.loads((dest / "sr2" / "training.json").read_text())
    assert card["measured"] == figures and card["task"] == "sr2"
    assert card["size_bytes"] == (dest / "sr2" / "model.safetensors").stat().st_size
    rec = json.loads(load_restorer(dest / "sr2").meta["recommended"])
    assert (rec["steps"], rec["samples"], rec["why"]) == (2, 1, "2 steps: +0.01 dB")
    # --knob: bench_knob.py's presets go into the checkpoint, its table into the card
    knob = {"presets": {"fidelity": {"steps": 1, "samples": 1, "detail": 1.0},
                        "balanced": {"steps": 4, "samples": 1, "detail": 1.0}},
            "rows": [{"steps": 4, "detail": 1.0, "psnr_y": 33.7}], "command": "bench_knob.py"}  # fmt: skip
    (tmp_path / "knob.json").write_text(json.dumps(knob))
    rc = train_pretrained.main(["--task", "sr2", "--ship", str(run_out), "--dest", str(dest),
                                "--why", "measured", "--knob", str(tmp_path / "knob.json")])  # fmt: skip
    assert rc == 0
    assert presets(load_restorer(dest / "sr2")) == knob["presets"]
    assert json.loads((dest / "sr2" / "training.json").read_text())["knob"] == knob
    before = (dest / "sr2" / "model.safetensors").read_bytes()
    shutil.copytree(run_out / "sr2", run_out / "sr4")
    with pytest.raises(ValueError, match="not 'sr4'"):  # an sr2 run shipped as sr4
        train_pretrained.ship("sr4", run_out, dest, 1, "x")
    (run_out / "sr2" / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no \\['model.safetensors'"):
        train_pretrained.ship("sr2", run_out, dest, 1, "x")
    assert (dest / "sr2" / "model.safetensors").read_bytes() == before
    assert train_pretrained.main(["--task", "sr2", "--ship", str(run_out)]) == 2  # no --why


def _bench(name: str):
    """Import benchmarks/<name>.py as a module (its helpers resolve from benchmarks/)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        spec = importlib.util.spec_from_file_location(
            f"bench_{name}", REPO / "benchmarks" / f"{name}.py"
        )
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod
    finally:
        sys.path.remove(str(REPO / "benchmarks"))


def _row(steps, detail, psnr, hf, flat, whole, coherence=1.0):
    return {"steps": steps, "detail": detail, "psnr_y": psnr, "hf_ratio": hf,
            "err_std_flat_y": flat, "err_std_y": whole, "edge_coherence": coherence}  # fmt: skip


def test_bench_knob_presets_follow_the_bars():
    """The detail preset needs HF >= 0.8 with grain <= 1.1, edge coherence >= 0.85, <= 2 dB
    below fidelity, HF <= 1.2; otherwise the best setting under the bars ships as balanced and
    there is no detail."""
    knob = _bench("bench_knob")
    fid = _row(1, 0.0, 30.0, 0.3, 2.0, 10.0)
    rows = [
        fid,
        _row(2, 1.0, 28.5, 0.9, 2.8, 14.0),  # grain (2.8/2)/(14/10) = 1.0: ok, HF 0.9: detail
        _row(4, 1.0, 28.4, 1.1, 4.0, 14.0),  # grain 1.43: refused though sharper
        _row(8, 1.0, 27.5, 1.1, 2.8, 14.0),  # 2.5 dB below fidelity: refused
        _row(6, 1.0, 28.6, 1.0, 2.8, 14.0, coherence=0.84),  # speckle along edges: refused
    ]
    for r in rows:
        r["grain_score"] = knob.grain(r, fid)
    assert rows[1]["grain_score"] == pytest.approx(1.0)
    got = knob.choose_presets(rows, "y")
    assert got == {"fidelity": {"steps": 1, "samples": 1, "detail": 0.0},
                   "balanced": {"steps": 2, "samples": 1, "detail": 0.5},
                   "detail": {"steps": 2, "samples": 1, "detail": 1.0}}  # fmt: skip
    rows[1]["hf_ratio"] = 0.5  # the best clean setting is not ground-truth-like: balanced only
    got = knob.choose_presets(rows, "y")
    assert list(got) == ["fidelity", "balanced"] and got["balanced"]["detail"] == 1.0


def test_bench_knob_scores_inpainting_inside_the_hole_only():
    """An inpainting output is scored in the hole: corrupting the output outside it changes no
    figure, a change inside does; the figures are `evaluate.score`'s keys (psnr_rgb is
    evaluate's psnr_mask) without the exact known pixels that lift the whole-image ones."""
    from diffenhance.evaluate import score
    from diffenhance.restoration import get_task

    knob = _bench("bench_knob")
    rng = np.random.default_rng(0)
    hr = rng.random((64, 64, 3)).astype(np.float32)
    mask = np.zeros((64, 64), np.float32)
    mask[10:40, 20:50] = 1.0
    hole = mask[..., None] >= 0.5
    noisy = np.clip(hr + 0.1 * rng.standard_normal(hr.shape), 0, 1).astype(np.float32)
    pred = np.where(hole, noisy, hr)  # what inpainting returns: the input outside the hole
    got = knob.hole_score(pred, hr, mask)
    whole = score(pred, hr, get_task("inpaint").protocols(), mask)
    assert set(got) == set(whole) - {"psnr_mask", "ssim_mask"}
    assert got["psnr_rgb"] == whole["psnr_mask"]
    assert got["psnr_y"] < whole["psnr_y"] and got["err_std_y"] > whole["err_std_y"]
    corrupt = np.where(hole, pred, rng.random(hr.shape).astype(np.float32))
    assert knob.hole_score(corrupt, hr, mask) == got  # outside the hole: nothing counts
    worse = pred.copy()
    worse[20:30, 30:40] = 1.0 - worse[20:30, 30:40]
    assert knob.hole_score(worse, hr, mask)["psnr_y"] < got["psnr_y"]
    assert knob.hole_score(worse, hr, mask)["err_std_y"] > got["err_std_y"]


def test_ship_keeps_the_runs_min_tile(train_pretrained, tmp_path):
    """Shipping with a knob rewrites the recommendation but keeps a min_tile the run's
    checkpoint recommends (inpaint's: a hole needs its whole crop as context)."""
    from diffenhance.model import load_restorer, presets, recommended_min_tile

    run_out = tmp_path / "run"
    shutil.copytree(REPO / "models" / "pretrained" / "inpaint", run_out / "inpaint")
    assert recommended_min_tile(load_restorer(run_out / "inpaint")) == 256
    knob = {"presets": {"fidelity": {"steps": 1, "samples": 1, "detail": 1.0}}, "rows": [],
            "scope": "inside the hole"}  # fmt: skip
    (tmp_path / "knob.json").write_text(json.dumps(knob))
    dest = tmp_path / "pretrained"
    rc = train_pretrained.main(["--task", "inpaint", "--ship", str(run_out), "--dest", str(dest),
                                "--why", "measured", "--knob", str(tmp_path / "knob.json")])  # fmt: skip
    assert rc == 0
    r = load_restorer(dest / "inpaint")
    assert recommended_min_tile(r) == 256 and presets(r) == knob["presets"]
    assert json.loads((dest / "inpaint" / "training.json").read_text())["knob"]["scope"] == (
        "inside the hole"
    )


def test_gpu_deps_carries_every_package_pydantic_imports_at_the_pinned_version():
    """benchmarks/gpu_deps.py fetches pydantic and what it needs at constraints.txt's pins: the
    versions installed here, and nothing pydantic or pydantic-core requires is left out."""
    import importlib.metadata as md

    deps = _bench("gpu_deps")
    for dist in deps.PACKAGES.values():
        assert deps.pinned(dist) == f"{dist}=={md.version(dist)}"
    required = {
        re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0].replace("-", "_").lower()
        for d in ("pydantic", "pydantic_core")
        for r in md.requires(d) or []
        if "extra ==" not in r
    }
    carried = {d.replace("-", "_").lower() for d in deps.PACKAGES.values()}
    assert required and required <= carried, required - carried


def test_gpu_deps_ensure_imports_a_missing_package_from_its_wheel(tmp_path):
    """`gpu_deps.py ensure`: a module that does not import comes from the wheel (unpacked into a
    temporary folder, on PYTHONPATH for the command it runs, removed at exit); with no wheels,
    exit 2 and the command that fetches them."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    with zipfile.ZipFile(wheels / "carried_mod-1.0-py3-none-any.whl", "w") as z:
        z.writestr("carried_mod/__init__.py", "VALUE = 7\n")
        z.writestr("carried_mod-1.0.dist-info/METADATA", "Name: carried-mod\nVersion: 1.0\n")
    code = (
        "import os, subprocess, sys; sys.path.insert(0, sys.argv[1]); import gpu_deps\n"
        "print(gpu_deps.ensure(('carried_mod',), gpu_deps.Path(sys.argv[2])))\n"
        "import carried_mod; print(carried_mod.VALUE, os.path.dirname(carried_mod.__path__[0]))\n"
        "subprocess.run([sys.executable, '-c', 'import carried_mod'], check=True)\n"
    )
    args = [sys.executable, "-c", code, str(REPO / "benchmarks")]
    out = subprocess.run([*args, str(wheels)], capture_output=True, text=True, check=True)
    taken, line = out.stdout.splitlines()
    assert taken == "['carried_mod']" and line.startswith("7 ")
    assert not Path(line.split(" ", 1)[1]).exists()  # the temporary folder went at exit
    empty = subprocess.run([*args, str(tmp_path)], capture_output=True, text=True)
    assert empty.returncode == 2 and "benchmarks/gpu_deps.py fetch" in empty.stderr


def test_gpu_check_names_its_steps_and_refuses_an_unknown_one(tmp_path):
    """`--only knob` (issue 21's measurement alone) and `--skip`: a misspelt step is an error
    before anything runs, not a silently fuller (and longer) GPU call."""
    cmd = [
        sys.executable,
        str(REPO / "benchmarks" / "gpu_check.py"),
        "--cpu",
        "--out",
        str(tmp_path),
    ]
    res = subprocess.run([*cmd, "--only", "knobs"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "unknown step(s) knobs" in res.stderr, res.stderr
    assert "tests, train, speed, pretrained, knob" in res.stderr
    assert not list(tmp_path.iterdir())


def test_gpu_check_train_step_runs_on_the_cpu(tmp_path):
    """The GPU script's `train` step (a short real run from scratch on the bundled photos) on
    the CPU: it stopped at once when params.yaml's formulation became pmrf with a frozen stage 1
    that a run from scratch has no checkpoint for, and the first GPU call would have found that."""
    cmd = [sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--cpu", "--only", "train",
           "--out", str(tmp_path)]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert res.returncode == 0, res.stderr[-3000:]
    run = json.loads((tmp_path / "gpu_check.json").read_text())["real_training"]
    assert run["steps"] == 4 and 0 < run["val_psnr"] < 100
    assert (tmp_path / "train_log.csv").is_file()


@pytest.mark.slow
def test_gpu_check_runs_every_step_on_the_cpu(tmp_path):
    """Every step of the GPU script with `--cpu` (~8 min): what a GPU session runs first."""
    cmd = [sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--cpu", "--out",
           str(tmp_path)]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, cwd=REPO)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    assert {"gpu_tests", "real_training", "pretrained", "knob", "wide"} <= set(result)
