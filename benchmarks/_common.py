"""What the benchmarks share: the CPU, card and commit they record beside their figures, the
timed training step, and writing their JSON/markdown results. Their data comes from the
library's stage functions (`prepare_dataset`, `pairs.degrade_stage`), not from copies here."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

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


def train_step(net, model, diffusion_cfg, dev, size: int, batch: int) -> Callable[[], Any]:
    """A closure running one SR3 v-prediction L1 training step on a fixed random batch
    (channels_last, bf16 autocast on CUDA, AdamW on `net`'s parameters); `model` is `net` or
    its torch.compile wrapper. Returns the loss tensor without syncing: time it with a sync."""
    import torch

    from diffenhance.diffusion import Schedule, training_loss

    sched = Schedule.from_config(diffusion_cfg).to(dev)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    g = torch.Generator(device=dev).manual_seed(0)
    x0 = (torch.rand(batch, 3, size, size, device=dev, generator=g) * 2 - 1).contiguous(
        memory_format=torch.channels_last
    )
    cond = x0.flip(-1).contiguous(memory_format=torch.channels_last)

    def step():
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            loss, _ = training_loss(model, sched, x0, cond, prediction="v", loss="l1", generator=g)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    return step


def write_results(out: Path, name: str, res: dict, md: str, record: bool) -> None:
    """<out>/<name>.json and <name>.md, the markdown printed, and appended to
    benchmarks/RESULTS.md when `record`."""
    (out / f"{name}.json").write_text(json.dumps(res, indent=2))
    (out / f"{name}.md").write_text(md)
    print(md)
    if record:
        with open(REPO / "benchmarks" / "RESULTS.md", "a") as f:
            f.write("\n" + md)
