"""The README is a page and docs/ a site that builds: `mkdocs build --strict` (a broken link or
anchor fails), the README's links, and its model table equal to `diffenhance models --markdown`
(generated from the model cards, so it cannot drift)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
START, END = "<!-- --8<-- [start:models] -->", "<!-- --8<-- [end:models] -->"


def build(config: Path, site: Path) -> subprocess.CompletedProcess[str]:
    """`mkdocs build --strict` of `config` into `site` (no network: the theme fetches nothing)."""
    env = os.environ | {"NO_MKDOCS_2_WARNING": "1"}  # material's banner about MkDocs 2
    cmd = [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(site)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


def test_site_builds_strict(tmp_path):
    site = tmp_path / "site"
    r = build(REPO / "mkdocs.yml", site)
    assert r.returncode == 0, r.stdout + r.stderr
    models = (site / "models" / "index.html").read_text()
    assert "psnr_y_fidelity" in models and "--8&lt;--" not in models  # the README's table
    results = (site / "results" / "index.html").read_text()
    assert 'id="benchmark-results"' in results  # benchmarks/RESULTS.md, included
    assert not (site / "dvc-plots.html").exists()  # DVC's plots template is not a page
    assert (REPO / "docs" / "dvc-plots.html").is_file()  # ... and stays where .dvc/config says
    assert "fonts.googleapis" not in (site / "index.html").read_text()  # works offline


@pytest.mark.parametrize(
    "broken", ["[gone](no-such-page.md)", "[gone](pipeline.md#no-such-heading)"]
)
def test_a_broken_link_fails_the_build(tmp_path, broken):
    for name in ("mkdocs.yml", "README.md", "docs", "benchmarks/RESULTS.md"):
        dest = tmp_path / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        copy = shutil.copytree if (REPO / name).is_dir() else shutil.copy
        copy(REPO / name, dest)
    with (tmp_path / "docs" / "index.md").open("a") as f:
        f.write(f"\nSee {broken}.\n")
    r = build(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert r.returncode != 0
    assert "no-such" in r.stdout + r.stderr


def test_readme_is_a_page():
    text = README.read_text()
    assert len(text.splitlines()) < 150
    for needed in ("make run", "make test", "source .venv/bin/activate", "docs/blind_crops.jpg"):
        assert needed in text
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    local = [u.split("#")[0] for u in links if not re.match(r"[a-z]+://", u)]
    assert local and [u for u in local if not (REPO / u).exists()] == []


def test_readme_model_table_is_generated():
    """The table between the README's markers is `diffenhance models --markdown`: after a
    shipped model or its training.json changes, paste that command's output there."""
    from typer.testing import CliRunner

    from diffenhance.cli import app

    r = CliRunner().invoke(
        app, ["models", "--markdown", "--models-dir", str(REPO / "models" / "pretrained")]
    )
    assert r.exit_code == 0, r.output
    text = README.read_text()
    table = text[text.index(START) + len(START) : text.index(END)].strip()
    assert table == r.output.strip()
    shipped = list((REPO / "models" / "pretrained").glob("*/model.safetensors"))
    assert table.count("\n| `") == len(shipped)  # one row per shipped model


def test_documented_train_logs_are_in_a_fresh_clone():
    """`--train-log PATH` in the docs names a file that a clone has (tracked in git), not one
    that only `dvc repro` writes (models/sr4/train_log.csv)."""
    pages = [README, *sorted((REPO / "docs").glob("*.md"))]
    paths = {p for page in pages for p in re.findall(r"--train-log\s+(\S+)", page.read_text())}
    assert paths
    if (REPO / ".git").exists():
        cmd = ["git", "-C", str(REPO), "ls-files", "--", *paths]
        tracked = set(
            subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.split()
        )
    else:  # a source archive: what it holds
        tracked = {p for p in paths if (REPO / p).is_file()}
    assert paths <= tracked, sorted(paths - tracked)
