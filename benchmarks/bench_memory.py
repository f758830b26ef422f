"""Peak memory of `diffenhance enhance` against the image size (issue 23): does it stay bounded?

Runs the real CLI, `diffenhance enhance in.png out.png -m sr4 --steps 1` (the shipped sr4
model at the params.yaml infer defaults), in a fresh subprocess per size on a synthetic photo-
like input (smooth colour waves plus grain, fixed seed), and records per size:

* peak RSS of that process (`os.wait4`'s rusage ru_maxrss: the child alone, whatever ran
  before it; `resource.getrusage(RUSAGE_CHILDREN)` would give the largest child so far);
* wall time of the process (start-up, decode, tiles, PNG encode: all of it);
* the output's sha256, so two runs (before/after a change) can be compared bit for bit.

    python benchmarks/bench_memory.py                                   # 750x500 .. 3000x2000
    python benchmarks/bench_memory.py --sizes 300x200 --out /tmp/bm     # a quick look
    python benchmarks/bench_memory.py --record                          # append to RESULTS.md

The 3000x2000 input makes a 12000x8000 (96 MP) output: 1.1 GB as float32 RGB, 288 MB as 8-bit.
About 4 minutes on a quiet 2-core CPU for the three default sizes. Writes bench_memory.json and
.md under --out; needs no prefect/dvc/boto3.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import cpu_name, git_commit, write_results  # benchmarks/_common.py

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

import numpy as np  # noqa: E402

from diffenhance.io import write_image  # noqa: E402

SIZES = "750x500,1500x1000,3000x2000"


def synthetic(w: int, h: int, seed: int = 0) -> np.ndarray:
    """HxWx3 float32 in [0, 1]: smooth colour waves plus grain (a photo's spectrum, roughly)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack(
        [0.5 + 0.4 * np.sin(x / (7 + 3 * c)) * np.cos(y / (11 + 2 * c)) for c in range(3)], -1
    )
    img += rng.normal(0.0, 0.03, img.shape).astype(np.float32)
    return img.clip(0, 1).astype(np.float32)


def cli() -> list[str]:
    """The `diffenhance` console script of this interpreter's environment."""
    exe = Path(sys.executable).with_name("diffenhance")
    found = str(exe) if exe.exists() else shutil.which("diffenhance")
    if found is None:
        raise SystemExit("no `diffenhance` command: pip install -e . first")
    return [found]


def measure(cmd: list[str]) -> tuple[float, float]:
    """(peak RSS in MiB, wall seconds) of `cmd` run to completion in a child process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{shlex.join(cmd)} exited with {proc.returncode}")
    return usage.ru_maxrss / 1024, wall  # Linux: KiB


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default=SIZES, help="WxH input sizes, comma-separated")
    p.add_argument("--model", default="sr4")
    p.add_argument("--steps", type=int, default=1)
    p.add_argument("--out", type=Path, default=None, help="results folder (default: a temp one)")
    p.add_argument("--record", action="store_true", help="append to benchmarks/RESULTS.md")
    p.add_argument("overrides", nargs="*", help="dotted overrides passed on, e.g. infer.tile=96")
    a = p.parse_args(argv)
    out = a.out or Path(tempfile.mkdtemp(prefix="bench-memory-"))
    out.mkdir(parents=True, exist_ok=True)
    rows, runs = [], []
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        for size in a.sizes.split(","):
            w, h = (int(v) for v in size.split("x"))
            src, dst = Path(tmp) / f"in{w}x{h}.png", Path(tmp) / f"out{w}x{h}.png"
            write_image(src, synthetic(w, h))
            cmd = [*cli(), "enhance", str(src), str(dst), "-m", a.model, "--steps", str(a.steps)]
            rss, wall = measure([*cmd, *a.overrides])
            out_mp = np.prod(_png_size(dst)) / 1e6
            run = {"input": [w, h], "output_mpix": round(out_mp, 2), "peak_rss_mib": round(rss),
                   "wall_s": round(wall, 1), "output_sha256": sha256(dst)}  # fmt: skip
            runs.append(run)
            rows.append(
                f"| {w}x{h} | {out_mp:.1f} | {rss:,.0f} | {wall:.0f} | "
                f"`{run['output_sha256'][:12]}` |"
            )
            print(rows[-1], flush=True)
            dst.unlink()
    cmd = "python benchmarks/bench_memory.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    md = "\n".join(
        [
            f"### Peak memory of `diffenhance enhance -m {a.model}`, {dt.date.today().isoformat()}",
            "",
            f"- machine: {cpu_name()}, commit {git_commit()}",
            f"- command: `{cmd.strip()}`",
            "",
            "| input | output MP | peak RSS MiB | wall s | output sha256 |",
            "|---|---|---|---|---|",
            *rows,
            "",
        ]
    )
    write_results(out, "bench_memory", {"command": cmd, "runs": runs}, md, a.record)
    return 0


def _png_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR, without decoding it."""
    with path.open("rb") as f:
        head = f.read(24)[16:24]
    return int.from_bytes(head[:4], "big"), int.from_bytes(head[4:], "big")


if __name__ == "__main__":
    raise SystemExit(main())
