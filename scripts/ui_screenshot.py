"""Retake the screenshot of `diffenhance ui` on docs/ui.md (docs/ui.png) in headless Chromium.

Starts `diffenhance ui --port 0`, uploads a 96 px crop of scikit-image's astronaut photo, runs
the shipped sr4 model at 4 steps with 2 samples and the uncertainty map, and saves the page
(reduced to 256 colours to keep the file small). Needs Debian's /usr/bin/chromium and the
`playwright` package of the dev extra (no browser download).

    python scripts/ui_screenshot.py [--out docs/ui.png]
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "ui.png")
    args = ap.parse_args(argv)
    from PIL import Image
    from playwright.sync_api import sync_playwright
    from skimage import data

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}
    cmd = [sys.executable, "-m", "diffenhance.cli", "ui", "--port", "0"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
    try:
        url = proc.stdout.readline().split()[2]  # "diffenhance ui: http://127.0.0.1:PORT/"
        with tempfile.TemporaryDirectory() as tmp, sync_playwright() as p:
            crop = Path(tmp) / "astronaut.png"
            Image.fromarray(data.astronaut()[40:136, 180:276]).save(crop)
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.goto(url)
            page.wait_for_function("document.querySelectorAll('#model option').length > 0")
            page.set_input_files("#file", str(crop))
            page.wait_for_selector("#run:enabled")
            page.uncheck("#auto")
            page.fill("#steps", "4")
            page.fill("#samples", "2")
            page.check("#uncertainty")
            page.click("#run")
            page.wait_for_selector("#unc-figure:visible", timeout=300_000)
            page.wait_for_function("document.getElementById('unc').complete")
            png = page.screenshot(full_page=True)
            browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    img = Image.open(io.BytesIO(png)).convert("RGB").quantize(256)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    img.save(args.out, optimize=True)
    print(f"wrote {args.out} ({args.out.stat().st_size // 1024} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
