"""notebooks/walkthrough.ipynb: committed without outputs, and runs headless end to end.

The notebook is executed with nbclient in a real Jupyter kernel, in tiny mode
(DIFFENHANCE_NOTEBOOK_TINY=1: 64 px crops, 1 sampler step, a 2-step fine-tune); its last cell
prints the numbers it computed as `RESULTS_JSON {...}`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "walkthrough.ipynb"


def _read() -> nbformat.NotebookNode:
    return nbformat.read(NOTEBOOK, as_version=4)


def test_committed_notebook_has_no_outputs():
    nb = _read()
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert len(code) >= 5
    for c in code:
        assert c.outputs == [], f"cell {c.get('id')} has outputs: strip them before committing"
        assert c.execution_count is None


@pytest.fixture
def tiny_env(monkeypatch, tmp_path):
    # the kernel inherits the environment; TMPDIR keeps the notebook's work folder in tmp_path
    monkeypatch.setenv("DIFFENHANCE_NOTEBOOK_TINY", "1")
    monkeypatch.setenv("TMPDIR", str(tmp_path))


def test_notebook_runs_headless(tiny_env):
    nb = _read()
    client = NotebookClient(
        nb,
        timeout=120,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    )
    client.execute()  # raises CellExecutionError (with the traceback) when a cell fails
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    figures = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(figures) == 2  # LQ | bicubic | model | ground truth, for sr4 and denoise
    text = "".join(o.get("text", "") for o in outputs if o.get("name") == "stdout")
    line = next(ln for ln in text.splitlines() if ln.startswith("RESULTS_JSON "))
    res = json.loads(line.removeprefix("RESULTS_JSON "))
    for key in ("sr4_model_psnr", "sr4_baseline_psnr", "denoise_model_psnr"):
        assert math.isfinite(res[key]) and 5 < res[key] < 60, (key, res[key])
    assert res["finetuned_step"] == 2
    h, w = res["cli_in"]
    assert res["cli_out"] == [4 * h, 4 * w]
    # the executed copy stays in memory: the committed file is untouched
    assert all(c.outputs == [] for c in _read().cells if c.cell_type == "code")
