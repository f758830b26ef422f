"""benchmarks/ is no second pipeline: its data comes from the library's stage functions, the
shipped models' recipes run through the `train` stage's own entry point."""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

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
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        spec = importlib.util.spec_from_file_location(
            f"bench_{name}", REPO / "benchmarks" / f"{name}.py"
        )
        spec.loader.exec_module(importlib.util.module_from_spec(spec))
    finally:
        sys.path.remove(str(REPO / "benchmarks"))


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
