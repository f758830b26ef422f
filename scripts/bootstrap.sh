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
  # the environment takes ~6.5 GB (torch, prefect, dvc); fail early and say so rather than
  # let pip die halfway with "No space left on device"
  need_kb=$((8 * 1024 * 1024))
  free_kb=$(df -Pk . | awk 'NR==2 {print $4}')
  if [ "${free_kb:-0}" -lt "$need_kb" ]; then
    echo "bootstrap: only $((free_kb / 1024 / 1024)) GiB free on $(df -P . | awk 'NR==2 {print $6}');" \
      "the .venv needs about 8 GiB. Free some space and rerun." >&2
    exit 1
  fi
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
  .venv/bin/python -m pip install -q --disable-pip-version-check \
    -c constraints.txt -e '.[dev]' 2> >(grep -v "^WARNING: Location" >&2)
  rm -f .venv/.installed-*
  touch "$stamp"
fi
