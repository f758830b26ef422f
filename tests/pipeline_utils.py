"""Helpers to run the real pipeline (`dvc repro`, flows) in a throwaway copy of the repo."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import REPO

BIN = Path(sys.executable).parent


def copy_repo(dest: Path) -> Path:
    """Copy the working tree's tracked and untracked-not-ignored files into a new git repo."""
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        check=True,
        capture_output=True,
    ).stdout.split(b"\0")
    for f in files:
        if not f:
            continue
        src = REPO / f.decode()
        if not src.is_file():
            continue
        out = dest / f.decode()
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, out)
    git(dest, "init", "-q")
    git(dest, "add", "-A")
    git(dest, "commit", "-qm", "test copy")
    return dest


def git(repo: Path, *args: str) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.invalid",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.invalid",
    }
    return subprocess.run(
        ["git", *args], cwd=repo, check=True, capture_output=True, text=True, env=env
    ).stdout


def set_params(repo: Path, updates: dict[str, dict]) -> None:
    """Merge `updates` ({section: {key: value}}, nested mappings such as plug-in options merged
    key by key) into the copy's params.yaml."""
    p = repo / "params.yaml"
    raw = yaml.safe_load(p.read_text())

    def merge(into: dict, new: dict) -> None:
        for k, v in new.items():
            if isinstance(v, dict) and isinstance(into.get(k), dict):
                merge(into[k], v)
            else:
                into[k] = v

    merge(raw, updates)
    p.write_text(yaml.safe_dump(raw, sort_keys=False))


def run(repo: Path, *cmd: str, timeout: float = 900) -> subprocess.CompletedProcess:
    """Run a command in the copy with the venv first on PATH; raise with its output on failure."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    env["DVC_NO_ANALYTICS"] = "1"
    proc = subprocess.run(
        list(cmd), cwd=repo, env=env, capture_output=True, text=True, timeout=timeout
    )
    if proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} exited {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}"
            f"\n--- stderr\n{proc.stderr[-4000:]}"
        )
    return proc


def commit_stand_ins(repo: Path) -> None:
    """Record every stage of the copy's dvc.yaml as run without running it: a placeholder for
    each dep and out that does not exist (a file where the name has a suffix, else a folder),
    then `dvc commit -f`. `dvc status` is clean afterwards and shows only later changes."""
    from dvc.dependency.param import ParamsDependency
    from dvc.repo import Repo

    with Repo(str(repo)) as r:
        for stage in r.index.stages:
            for entry in [*stage.deps, *stage.outs]:
                p = repo / entry.def_path
                if isinstance(entry, ParamsDependency) or p.exists():
                    continue
                if p.suffix:
                    p.parent.mkdir(parents=True, exist_ok=True)
                    p.write_text(f"placeholder of {entry.def_path}\n")
                else:
                    p.mkdir(parents=True)
                    (p / "placeholder.txt").write_text(f"placeholder of {entry.def_path}\n")
    run(repo, "dvc", "commit", "-f", "-q")
