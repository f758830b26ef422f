"""Headless Chromium for the tests that check a page really draws (report, `dvc plots show`)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--enable-logging=stderr", "--v=0",
]  # fmt: skip
needs_chromium = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="needs /usr/bin/chromium: run scripts/ensure_chromium.sh"
)


def chromium(html: Path, tmp: Path, *args: str) -> subprocess.CompletedProcess:
    """Open `html` (a file) in headless Chromium with `args` (--dump-dom, --screenshot=...)."""
    return subprocess.run(
        [str(CHROMIUM), *CHROMIUM_FLAGS, f"--user-data-dir={tmp / 'profile'}", *args,
         html.resolve().as_uri()],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def console_lines(stderr: str) -> list[str]:
    """The page's console messages (errors, warnings, logs) in Chromium's stderr."""
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]
