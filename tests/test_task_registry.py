"""The restoration-task registry: one owner per task.

* A task registered from this file alone (``dim``: halved brightness, scale 1, its own
  baseline) is accepted by config validation and goes through the normal path: the `degrade`
  stage's pairs, the `train` stage, checkpoint validation, the `evaluate` stage (its baseline,
  its protocol) and `diffenhance enhance`.
* No task name is compared outside the task package (src/, flows/, tasks/, the UI's page).
* Side inputs are named fields: `join` / `split` / `side` round-trip, and wrong names or sizes
  are refused.
"""

from __future__ import annotations

import ast
import re

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from diffenhance.cli import app
from diffenhance.config import ConfigError, DegradeConfig, load_config
from diffenhance.data.pairs import load_pairs
from diffenhance.evaluate import evaluate_model
from diffenhance.io import read_image, write_image
from diffenhance.model import load_restorer, validate_checkpoint
from diffenhance.restoration import (
    RestorationTask,
    get_task,
    image_of,
    register,
    task_names,
    unregister,
)
from diffenhance.train import train_model
from tests.conftest import REPO
from tests.tiny import make_dataset, smooth_image, tiny_config

BUILTIN = ("sr2", "sr4", "denoise", "jpeg", "blind", "inpaint")


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    yield


class Dim(RestorationTask):
    """Toy: the LQ image is the HR image at half brightness; the baseline doubles it back."""

    name = "dim_toy"
    description = "brightness restoration (a test's toy)"

    def synthesise(self, hr, rng, cfg, *, validation):
        return (hr * 0.5).astype(np.float32)

    def baselines(self, cfg):
        methods, skipped = super().baselines(cfg)
        return {"double": lambda lq: np.clip(image_of(lq) * 2, 0, 1), **methods}, skipped


@pytest.fixture
def toy_task():
    register(Dim)
    yield Dim.name
    unregister(Dim.name)
    assert Dim.name not in task_names()


def test_the_builtins_are_registered_in_order_and_are_degrade_tasks_default():
    assert task_names() == BUILTIN
    assert DegradeConfig().tasks == task_names()  # config's literal default = the registry
    assert [get_task(t).scale() for t in BUILTIN] == [2, 4, 1, 1, 4, 1]
    assert get_task("blind").scales() == (1, 2, 4)
    assert get_task(get_task("sr4")) is get_task("sr4")  # an object passes through


def test_unknown_task_lists_the_registry():
    with pytest.raises(ConfigError, match="registered task") as e:
        load_config(None, ["train.tasks=[dim_toy]"])
    for name in task_names():
        assert repr(name) in str(e.value)
    with pytest.raises(ValueError, match="unknown task 'sr8'"):
        get_task("sr8")


def test_side_inputs_are_named_fields():
    inpaint, sr4 = get_task("inpaint"), get_task("sr4")
    img = np.random.default_rng(0).random((6, 5, 3)).astype(np.float32)
    mask = np.zeros((6, 5), np.float32)
    mask[2:4, 1:3] = 1
    lq = inpaint.join(img, mask=mask)
    image, side = inpaint.split(lq)
    assert image.shape == img.shape and list(side) == ["mask"]
    assert np.array_equal(side["mask"], mask) and np.array_equal(inpaint.side(lq, "mask"), mask)
    assert np.array_equal(image[mask == 0], img[mask == 0])  # known pixels kept
    assert np.array_equal(sr4.join(img), img) and sr4.split(img)[1] == {}
    with pytest.raises(ValueError, match=r"takes the side inputs \['mask'\], got \[\]"):
        inpaint.join(img)
    with pytest.raises(ValueError, match="takes the side inputs"):
        sr4.join(img, mask=mask)
    with pytest.raises(KeyError, match="no side input 'mask'"):
        sr4.side(img, "mask")


def test_a_toy_task_degrades_trains_evaluates_and_enhances_through_the_normal_path(
    tmp_path, toy_task
):
    # degrade: the stage writes its pairs like any task's
    make_dataset(tmp_path, tasks=(toy_task,), n_train=2, n_val=1, size=16)
    pairs_csv = pd.read_csv(tmp_path / "degraded" / toy_task / "pairs.csv")
    assert list(pairs_csv["task"]) == [toy_task] and list(pairs_csv["scale"]) == [1]
    (p,) = load_pairs(tmp_path / "degraded" / toy_task)
    assert np.abs(p.lq - p.hr * 0.5).max() <= 0.5 / 255 + 1e-6  # the toy's degradation, 8-bit
    # train: config accepts the name, the stage trains it and the checkpoint names it
    cfg = tiny_config(
        tmp_path, f"train.tasks=[{toy_task}]", f"degrade.tasks=[{toy_task}]", "train.steps=4",
        "train.val_every=2", f"evaluate.out_dir={tmp_path / 'reports'}", "evaluate.steps=[1]",
        "evaluate.uncertainty_samples=0",
    )  # fmt: skip
    model_dir = train_model(cfg, toy_task)
    assert (model_dir / "train_log.csv").is_file()
    spec = validate_checkpoint(model_dir)
    assert (spec.task, spec.scale) == (toy_task, 1)
    assert load_restorer(model_dir).restoration is get_task(toy_task)
    # evaluate: its own baseline first (the report's reference), its protocol
    ev = evaluate_model(cfg, toy_task)
    assert ev.protocol["task"] == toy_task and ev.baselines == ["double", "input"]
    assert ev.protocol["reference_baseline"] == "double"
    assert [q["crop"] for q in ev.protocol["protocols"]] == [0, 0]
    assert np.isfinite(ev.metrics["model_psnr_y"]) and ev.metrics["double_psnr_rgb"] > 40
    # enhance: the CLI's normal path with the trained model
    lq = (smooth_image(np.random.default_rng(1), 12, 10) * 0.5).astype(np.float32)
    write_image(tmp_path / "in.png", lq)
    res = CliRunner().invoke(
        app, ["enhance", str(tmp_path / "in.png"), str(tmp_path / "out.png"), "-m", str(model_dir)]
    )
    assert res.exit_code == 0, res.output
    out = read_image(tmp_path / "out.png")
    assert out.shape == (12, 10, 3) and np.isfinite(out).all()


# ----------------------------------------------------------------------------- no name branches

CODE_DIRS = ("src/diffenhance", "flows", "tasks")
TASK_PACKAGE = "src/diffenhance/restoration"


def _strings(node: ast.AST) -> list[str]:
    """String constants of a comparison operand (inside tuple/list/set literals too)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        return [s for e in node.elts for s in _strings(e)]
    return []


def task_name_comparisons(source: str, names: set[str]) -> list[tuple[int, str]]:
    """(line, name) of each comparison (==, !=, in, not in, match case) with a task name."""
    found = []
    for node in ast.walk(ast.parse(source)):
        operands: list[ast.AST] = []
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
        elif isinstance(node, ast.MatchValue):
            operands = [node.value]
        elif isinstance(node, ast.Dict):  # a {task name: ...} table is a branch in disguise
            operands = [k for k in node.keys if k is not None]
        found += [(node.lineno, s) for o in operands for s in _strings(o) if s in names]
    return sorted(found)


def test_no_task_name_is_compared_outside_the_task_package():
    names = set(task_names())
    found = {}
    for folder in CODE_DIRS:
        for f in sorted((REPO / folder).rglob("*.py")):
            rel = f.relative_to(REPO).as_posix()
            if rel.startswith(TASK_PACKAGE + "/"):
                continue
            if hits := task_name_comparisons(f.read_text(encoding="utf-8"), names):
                found[rel] = hits
    alt = "|".join(map(re.escape, sorted(names)))
    page = re.compile(rf"""[!=]==?\s*["'](?:{alt})["']|["'](?:{alt})["']\s*[!=]==?""")
    for f in sorted((REPO / "src/diffenhance/ui/static").rglob("*")):
        if f.is_file() and f.suffix in (".html", ".js"):
            text = f.read_text(encoding="utf-8")
            if hits := [
                (text[: m.start()].count("\n") + 1, m.group()) for m in page.finditer(text)
            ]:
                found[f.relative_to(REPO).as_posix()] = hits
    assert not found, f"task names compared outside {TASK_PACKAGE} (file: [(line, name)]): {found}"


def test_the_scan_sees_comparisons():
    src = (
        "if task == 'inpaint': pass\n"
        "x = t in ('sr2', 'sr4')\n"
        "y = {'denoise': 1}\n"
        "match t:\n    case 'jpeg': pass\n"
        "ok = name == 'residual'\n"
    )
    got = task_name_comparisons(src, set(BUILTIN))
    assert got == [(1, "inpaint"), (2, "sr2"), (2, "sr4"), (3, "denoise"), (5, "jpeg")]
