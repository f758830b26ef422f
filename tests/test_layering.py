"""Layering: flows compose tasks, tasks call the library; nothing lower imports anything higher."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO
from tests.test_dvc_deps import imported_names, module_name

# Known exceptions: file -> why. Remove an entry when its upward import goes.
KNOWN: dict[str, str] = {}


def upward_imports(f: Path, forbidden: set[str]) -> list[int]:
    """Lines of `f` that import a module of a package in `forbidden`: import statements anywhere
    (module level or inside functions) and importlib.import_module calls whose name is a string
    literal or an f-string starting with one of those packages."""
    lines = []
    for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"), str(f))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
            and node.args
        ):
            arg = node.args[0]
            first = arg.values[0] if isinstance(arg, ast.JoinedStr) and arg.values else arg
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                names = [first.value]
        if any(n.split(".")[0] in forbidden for n in names):
            lines.append(node.lineno)
    return lines


def test_nothing_imports_a_higher_layer():
    layers = {"src/diffenhance": {"flows", "tasks"}, "tasks": {"flows"}}
    found = {}
    for folder, forbidden in layers.items():
        for f in sorted((REPO / folder).rglob("*.py")):
            rel = f.relative_to(REPO).as_posix()
            if rel not in KNOWN and (lines := upward_imports(f, forbidden)):
                found[rel] = lines
    assert not found, f"imports of a higher layer (file: lines): {found}"


def test_the_check_sees_upward_imports(tmp_path):
    f = tmp_path / "m.py"
    f.write_text(
        "import os\nfrom flows.common import stage_logger\n"
        "def g():\n    import flows.train\n    import importlib\n"
        "    importlib.import_module(f'flows.{os.name}')\n"
        "from diffenhance import io\nfrom . import flows\n"
    )
    assert sorted(upward_imports(f, {"flows"})) == [2, 4, 6]


# ----------------------------------------------------------------------------- import cycles


def module_imports(root: Path) -> dict[str, set[str]]:
    """{module: the modules of `root`'s packages it imports}, for every .py under `root` (a
    source root such as src/): what `test_dvc_deps.imported_names` reads (imports inside
    functions too: a lazy import is still a dependency), with the packages above each imported
    module, which Python imports first."""
    files = {module_name(root, f): f for f in root.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, f in files.items():
        deps = set()
        for imported in imported_names(root, f):
            parts = imported.split(".")
            for i in range(1, len(parts) + 1):  # a.b.c imports a, a.b and a.b.c
                dep = ".".join(parts[:i])
                if dep in files and dep != name and not name.startswith(dep + "."):
                    deps.add(dep)
        graph[name] = deps
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles of `graph` as its strongly connected components of 2+ modules."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(v: str) -> None:  # Tarjan's algorithm
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while (w := stack.pop()) != v:
                component.append(w)
            if component:
                cycles.append(sorted([v, *component]))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def test_no_import_cycle_in_src():
    """Issue 22: config validates registered names through the ground floor's registries
    (diffenhance.registry), so config, formulations, networks and tasks form no circle."""
    graph = module_imports(REPO / "src")
    assert "diffenhance.config" in graph and len(graph) > 40
    assert not import_cycles(graph), import_cycles(graph)


def test_the_cycle_check_sees_a_lazy_circle(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg import b\n")
    (pkg / "b.py").write_text("def f():\n    from . import c\n")
    (pkg / "c.py").write_text("import pkg.a\n")
    (pkg / "d.py").write_text("import pkg.a\n")
    assert import_cycles(module_imports(tmp_path)) == [["pkg.a", "pkg.b", "pkg.c"]]


def test_every_module_imports_alone():
    """Each module of src/ imports first, in an interpreter holding none of diffenhance (a
    circle or an import that relies on another module being loaded first fails here)."""
    names = sorted(n for n in module_imports(REPO / "src") if n.startswith("diffenhance"))
    code = (
        "import importlib, sys\n"
        f"for name in {names!r}:\n"
        "    for m in [m for m in sys.modules if m.split('.')[0] == 'diffenhance']:\n"
        "        del sys.modules[m]\n"
        "    importlib.import_module(name)\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO
    )
    assert res.returncode == 0, res.stderr[-3000:]


# ----------------------------------------------------------------------------- start-up

# Imported only inside the functions that use them: each costs a CLI command a third of a
# second (scipy) to seconds (torchmetrics pulls torchvision, scipy and matplotlib) before it
# checks its arguments. torch stays: diffenhance.enhance imports it with the model code.
DEFERRED = ("torchmetrics", "torchvision", "scipy", "matplotlib", "pandas", "prefect", "skimage")


def test_a_failing_enhance_imports_no_heavy_module(tmp_path):
    """`diffenhance enhance missing.png out.png -m sr4` reports the missing input having
    imported none of DEFERRED (a module-level import of one on the enhance path, as
    diffenhance.metrics had of torchmetrics, made it take 6-7 s)."""
    code = (
        "import json, sys\n"
        "from diffenhance.cli import app\n"
        "try:\n"
        "    app(['enhance', 'missing.png', 'out.png', '-m', 'sr4'])\n"
        "except SystemExit as e:\n"
        "    code = e.code\n"
        f"loaded = sorted({{m.split('.')[0] for m in sys.modules}} & set({DEFERRED!r}))\n"
        "print(json.dumps([code, loaded]))\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert "missing.png: input not found" in res.stderr, res.stderr[-3000:]
    assert json.loads(res.stdout.splitlines()[-1]) == [2, []]
