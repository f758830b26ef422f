"""What every benchmark records beside its figures: the CPU, the card and the commit."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def cpu_name() -> str:
    """'AMD EPYC ..., 2 cores' (the /proc/cpuinfo model name where there is one)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores"


def card_name(device=None, none: str = "none (CPU)") -> str:
    """The CUDA card's name (of `device`, or the current one), or `none` without CUDA."""
    import torch

    if device is not None and torch.device(device).type != "cuda":
        return none
    return torch.cuda.get_device_name(device) if torch.cuda.is_available() else none


def git_commit() -> str:
    """Short hash of HEAD ('' outside a git checkout)."""
    return subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
