"""Layering: flows compose tasks, tasks call the library; nothing lower imports anything higher."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO

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
