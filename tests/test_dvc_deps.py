"""dvc.yaml's code deps cover every module each stage imports, so `dvc status` / `dvc repro`
see a code change: a static import trace checked against the deps, and real `dvc status` in a
copy of the repo after editing an imported module."""

from __future__ import annotations

import ast
import functools
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.pipeline_utils import commit_stand_ins, copy_repo, run

# Top-level project packages and the folder each is imported from (sys.path entries).
PACKAGES = {"diffenhance": "src", "flows": ".", "tasks": "."}


def module_file(root: Path, name: str) -> Path | None:
    """The file of project module `name` under `root` (a module or a package's __init__.py)."""
    parts = name.split(".")
    if parts[0] not in PACKAGES:
        return None
    base = root / PACKAGES[parts[0]] / Path(*parts)
    for f in (base.with_suffix(".py"), base / "__init__.py"):
        if f.is_file():
            return f
    return None


def module_name(root: Path, f: Path) -> str:
    rel = f.relative_to(root)
    if rel.parts[0] == "src":
        rel = rel.relative_to("src")
    parts = list(rel.with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(root: Path, f: Path) -> set[str]:
    """Every module name an import statement anywhere in `f` (module level or inside a function)
    may load, incl. `from pkg import sub` submodules and `importlib.import_module("literal")`.
    An import_module call with a computed name of a project package raises: it cannot be traced."""
    here = module_name(root, f)
    package = here if f.name == "__init__.py" else here.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"), str(f))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(up + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            names.add(base)
            names |= {f"{base}.{a.name}" for a in node.names}
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute | ast.Name)
            and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
            and node.args
        ):
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                names.add(arg.value)
            elif any(
                isinstance(v, ast.Constant) and str(v.value).split(".")[0] in PACKAGES
                for v in getattr(arg, "values", [])
            ):
                raise AssertionError(f"{f}:{node.lineno}: import_module of a computed name")
    return names


@functools.cache
def import_closure(root: Path, module: str) -> frozenset[str]:
    """Repo-relative paths of the project files `python -m <module>` may import (transitively,
    with every parent package's __init__.py)."""
    seen: set[Path] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__, a/b/__init__ too
            f = module_file(root, ".".join(parts[:i]))
            if f is not None and f not in seen:
                seen.add(f)
                todo += sorted(imported_names(root, f))
    return frozenset(f.relative_to(root).as_posix() for f in seen)


def stage_code(root: Path) -> dict[str, tuple[str, list[str]]]:
    """{stage: (module its cmd runs with `python -m`, its deps)} as DVC resolves dvc.yaml."""
    from dvc.repo import Repo

    out = {}
    with Repo(str(root)) as repo:
        for st in repo.index.stages:
            m = re.search(r"\bpython -m ([\w.]+)", st.cmd)
            assert m, f"{st.addressing}: cmd {st.cmd!r} does not run `python -m <module>`"
            out[st.addressing.split(":")[-1]] = (m.group(1), [d.def_path for d in st.deps])
    return out


def covered(path: str, deps: list[str]) -> bool:
    """A dep covers a file if it is that file or a folder above it."""
    return any(path == d.rstrip("/") or path.startswith(d.rstrip("/") + "/") for d in deps)


@pytest.fixture(scope="module")
def stages() -> dict[str, tuple[str, list[str]]]:
    s = stage_code(REPO)
    assert {"prepare", "degrade", "train@sr4", "evaluate@sr4", "report@sr4", "compare"} <= set(s)
    return s


def test_every_stage_lists_every_module_it_imports(stages):
    missing = {
        stage: sorted(f for f in import_closure(REPO, module) if not covered(f, deps))
        for stage, (module, deps) in stages.items()
    }
    assert not {k: v for k, v in missing.items() if v}, "add these to the stage's deps in dvc.yaml"
    # the trace sees what the stages use
    closure = import_closure(REPO, "flows.evaluate")
    assert {"flows/__init__.py", "flows/common.py", "flows/evaluate.py", "tasks/evaluate.py",
            "src/diffenhance/infer.py", "src/diffenhance/config.py"} <= closure  # fmt: skip


def test_import_trace_finds_what_python_imports(stages):
    """The static trace misses nothing that importing the flow modules really loads."""
    modules = sorted({m for m, _ in stages.values()})
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "print('\\n'.join(f for f in (getattr(m, '__file__', None) for m in list(sys.modules.values())) if f))"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    loaded = set()
    for line in proc.stdout.splitlines():
        p = Path(line).resolve()
        if p.is_relative_to(REPO) and module_file(REPO, module_name(REPO, p)) == p:
            loaded.add(p.relative_to(REPO).as_posix())
    traced = set().union(*(import_closure(REPO, m) for m in modules))
    assert "src/diffenhance/model.py" in loaded
    assert loaded <= traced, sorted(loaded - traced)


# --------------------------------------------------------------- real `dvc status` in a copy


@pytest.fixture(scope="module")
def committed(tmp_path_factory):
    """A copy of the repo whose dvc.lock records every stage as run (placeholder outputs and
    `dvc commit -f` instead of running the heavy stages)."""
    r = copy_repo(tmp_path_factory.mktemp("dvcdeps"))
    commit_stand_ins(r)
    assert status(r) == {}
    return r


def status(repo: Path) -> dict[str, list]:
    return json.loads(run(repo, "dvc", "status", "--json").stdout)


EDITED = ["src/diffenhance/infer.py", "src/diffenhance/config.py", "flows/common.py",
          "tasks/common.py", "tasks/evaluate.py"]  # fmt: skip


def test_editing_imported_modules_changes_the_stages_that_import_them(committed, stages):
    users = {
        f: {s for s, (module, _) in stages.items() if f in import_closure(committed, module)}
        for f in EDITED
    }
    assert all(users.values()), users
    assert {"train@sr4", "evaluate@sr4", "compare"} <= users["src/diffenhance/infer.py"]
    before = {f: (committed / f).read_bytes() for f in EDITED}
    for f, text in before.items():
        (committed / f).write_bytes(text + b"# an edit\n")
    try:
        changed = {k.split(":")[-1]: v for k, v in status(committed).items()}  # compare/dvc.yaml:
    finally:
        for f, text in before.items():
            (committed / f).write_bytes(text)
    for f in EDITED:
        stale = sorted(
            s for s in users[f]
            if not any(covered(f, list(c.get("changed deps", {}))) for c in changed.get(s, []))
        )  # fmt: skip
        assert not stale, f"`dvc status` misses the edit of {f} for {stale}"
    assert status(committed) == {}  # edits undone: up to date again


def test_bytecode_next_to_the_code_is_not_a_change(committed):
    """.dvcignore: __pycache__ under a directory dep (src/diffenhance) is not code."""
    cache = committed / "src/diffenhance/__pycache__"
    cache.mkdir(exist_ok=True)
    (cache / "infer.cpython-311.pyc").write_bytes(os.urandom(64))
    assert status(committed) == {}


def test_provenance_records_and_other_shipped_models_are_not_a_change(committed):
    """prepare and degrade write params.resolved.yaml inside their output folders: rewritten with
    another data.* value (the crops the same) it must not change data/prepared's hash and so
    retrain every model (.dvcignore). A train stage depends on its own task's shipped model
    only: an edit of denoise's model card leaves train@sr4 as it is, one of sr4's does not."""
    for d in ("data/prepared", "data/degraded"):
        (committed / d / "params.resolved.yaml").write_text(
            f"data:\n  div2k_url: {os.urandom(8).hex()}\n"
        )
    assert status(committed) == {}
    for task, expected in (("denoise", []), ("sr4", ["train@sr4"])):  # train.tasks: [sr4]
        card = committed / "models/pretrained" / task / "training.json"
        text = card.read_bytes()
        card.write_bytes(text + b" ")
        try:
            stale = sorted(k.split(":")[-1] for k in status(committed))
        finally:
            card.write_bytes(text)
        assert stale == expected, (task, stale)
    assert status(committed) == {}
