"""Python packages the library needs that a GPU machine's image may lack, carried as wheels.

The lent GPU machines (an image with torch, numpy, pandas, pillow, scikit-image, but no package
registry) have no pydantic, which `diffenhance.config` validates params with. Fetch its wheels
here, where the registry is reachable, at the versions constraints.txt pins, for the Python
there (3.12 on the lent machines):

    python benchmarks/gpu_deps.py fetch                        # -> .whl/site/*.whl
    python benchmarks/gpu_deps.py fetch --python-version 3.11 --dest /tmp/w

and carry `.whl` to the machine (git-ignored; the `run` tool's carry=[".whl"]). There,
`gpu_check.py` calls `ensure()` before it imports the library: a package that does not import
is taken from the wheels, unpacked into a temporary folder put first on sys.path and on
PYTHONPATH (so the training subprocesses see it too). By hand, for any other script:

    python benchmarks/gpu_deps.py ensure -- python benchmarks/bench_knob.py ...

Standard library only: it runs before anything else can be imported.
"""

from __future__ import annotations

import argparse
import atexit
import importlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import typing
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WHEELS = REPO / ".whl" / "site"
# what `import pydantic` needs (their Requires-Dist, extras aside); the import name first
PACKAGES = {
    "pydantic": "pydantic",
    "pydantic_core": "pydantic_core",
    "annotated_types": "annotated-types",
    "typing_inspection": "typing-inspection",
    "typing_extensions": "typing_extensions",
}
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")


def pinned(dist: str, constraints: Path = REPO / "constraints.txt") -> str:
    """'name==version' as constraints.txt pins `dist` (names compared as pip does)."""
    norm = re.sub(r"[-_.]+", "-", dist).lower()
    for line in constraints.read_text().splitlines():
        name, sep, version = line.partition("==")
        if sep and re.sub(r"[-_.]+", "-", name.strip()).lower() == norm:
            return f"{dist}=={version.split()[0]}"
    _fail(f"{constraints} pins no {dist}")


def fetch(dest: Path, python_version: str) -> list[Path]:
    """Download the pinned wheels of PACKAGES for CPython `python_version` on x86-64 Linux."""
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--python-version", python_version, "--implementation", "cp", "-d", str(dest)]  # fmt: skip
    for p in PLATFORMS:
        cmd += ["--platform", p]
    subprocess.run([*cmd, *(pinned(d) for d in PACKAGES.values())], check=True)
    return sorted(dest.glob("*.whl"))


def ensure(modules: tuple[str, ...] = ("pydantic",), wheels: Path = WHEELS) -> list[str]:
    """Make `modules` importable: those that do not import are taken from `wheels` (every wheel
    there unpacked into one temporary folder, removed at exit, first on sys.path and on
    PYTHONPATH). The modules that came from the wheels; SystemExit(2) saying how to fetch
    them when there are none."""
    missing = [m for m in modules if not _imports(m)]
    if not missing:
        return []
    found = sorted(wheels.glob("*.whl"))
    if not found:
        _fail(
            f"{', '.join(missing)} cannot be imported and {wheels} holds no wheels: run "
            "`python benchmarks/gpu_deps.py fetch` where the package registry is reachable and "
            "carry .whl along"
        )
    site = tempfile.mkdtemp(prefix="diffenhance-wheels-")
    atexit.register(shutil.rmtree, site, ignore_errors=True)
    for whl in found:  # a wheel is a zip laid out as site-packages
        with zipfile.ZipFile(whl) as z:
            z.extractall(site)
    sys.path.insert(0, site)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [site, os.environ.get("PYTHONPATH")]))
    importlib.invalidate_caches()
    still = [m for m in missing if not _imports(m)]
    if still:
        _fail(f"{', '.join(still)} cannot be imported from the wheels in {wheels}")
    return missing


def _fail(why: str) -> typing.NoReturn:
    print(f"error: {why}", file=sys.stderr)
    raise SystemExit(2)


def _imports(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fetch", help="download the wheels (needs the package registry)")
    f.add_argument("--dest", type=Path, default=WHEELS)
    f.add_argument("--python-version", default="3.12", help="of the machine they are for")
    e = sub.add_parser("ensure", help="make them importable, then run a command")
    e.add_argument("--wheels", type=Path, default=WHEELS)
    e.add_argument("command", nargs=argparse.REMAINDER)
    args = ap.parse_args()
    if args.cmd == "fetch":
        for whl in fetch(args.dest, args.python_version):
            print(whl)
        return 0
    came = ensure(wheels=args.wheels)
    print(f"gpu_deps: {', '.join(came) or 'nothing'} taken from {args.wheels}", flush=True)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    return subprocess.run(command).returncode if command else 0


if __name__ == "__main__":
    sys.exit(main())
