#!/usr/bin/env bash
# Create/refresh the project's virtual environment (.venv) from the pinned lock.
# Idempotent: reinstalls only when pyproject.toml or constraints.txt changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null || PY=python3
key=$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)
stamp=".venv/.installed-$key"
if [ ! -f "$stamp" ]; then
  echo "bootstrap: installing pinned dependencies into .venv (first run takes ~2-3 minutes)" >&2
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
  .venv/bin/python -m pip install -q --disable-pip-version-check \
    -c constraints.txt -e '.[dev]' 2> >(grep -v "^WARNING: Location" >&2)
  rm -f .venv/.installed-*
  touch "$stamp"
fi
