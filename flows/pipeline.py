"""The README's main job: `dvc repro` of the whole pipeline with a local Prefect server.

DVC owns the DAG (dvc.yaml); this only starts one shared Prefect server on 127.0.0.1 (unless
PREFECT_API_URL points at one), runs `dvc repro` with it, and prints where the results are.
SIGINT and SIGTERM stop `dvc repro`, the stage it runs and then the server (as `flows.server`
does), with one line and exit 130 / 143.

Without a stage name the main job reproduces `report` and what it needs (prepare, degrade,
train, evaluate, report); the formulation comparison (`train_compare@*`, `compare`, about ten
CPU minutes) is opt-in:

    python -m flows.pipeline [extra dvc repro args, e.g. --force]   # the main job
    python -m flows.pipeline compare                                # the formulation comparison
    python -m flows.pipeline report compare                         # both

`compare` stands for compare/dvc.yaml's final stage (the comparison lives in its own dvc.yaml,
so that a bare `dvc repro` never runs it).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from diffenhance.signals import exit_code, interrupted, signum_of, stop_signals
from flows.server import local_prefect_server, run_command

MAIN_TARGETS = ["report"]  # the stages `make run` reproduces (with their ancestors)
TARGET_NAMES = {"compare": "compare/dvc.yaml:compare"}  # short names of the opt-in pipeline


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not any(not a.startswith("-") for a in argv):  # no stage named: the main job
        argv += MAIN_TARGETS
    argv = [TARGET_NAMES.get(a, a) for a in argv]
    bindir = Path(sys.executable).parent
    dvc = shutil.which("dvc", path=f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")
    if dvc is None:
        print("error: dvc is not installed; run `make run` to bootstrap .venv", file=sys.stderr)
        return 2
    if not Path(".dvc").is_dir():
        print("error: no .dvc/ here; run from the repository root", file=sys.stderr)
        return 2
    env_path = f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"
    stopped = "dvc repro" + ("" if os.environ.get("PREFECT_API_URL") else " and the Prefect server")
    try:  # SIGINT, SIGTERM: dvc and its stage first, then the server (flows.server)
        with stop_signals(), local_prefect_server() as api:
            print(f"pipeline: Prefect API {api}", flush=True)
            rc = run_command([dvc, "repro", *argv], env={**os.environ, "PATH": env_path})
    except KeyboardInterrupt as e:
        print(f"pipeline: {interrupted(signum_of(e), stopped)}", file=sys.stderr)
        return exit_code(signum_of(e))
    if rc != 0:
        print(f"pipeline: dvc repro failed with exit code {rc}", file=sys.stderr)
        return rc
    for p in sorted(Path("reports").glob("*/report.html")):
        print(f"pipeline: report {p.resolve()}")
    for p in ("data/prepared/manifest.csv", "data/degraded"):
        if Path(p).exists():
            print(f"pipeline: output {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
