"""`diffenhance ui`: the API (TestClient) and the page in a real headless Chromium (Playwright).

The UI runs the CLI's enhance path, so its output must be byte-identical to what
`diffenhance enhance IN OUT -m sr4` writes for the same image and settings; every bad upload
must come back as a message, with the server still serving."""

from __future__ import annotations

import io
import os
import re
import shutil
import struct
import subprocess
import sys
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from diffenhance.cli import app as cli_app
from diffenhance.config import TASKS, load_config
from diffenhance.io import read_image_info
from diffenhance.ui import create_app
from tests.conftest import REPO

with warnings.catch_warnings():  # starlette's note that its TestClient will move to httpx2
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient

PARAMS = REPO / "params.yaml"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]  # fmt: skip
OCTET = {"content-type": "application/octet-stream"}


def photo(size: int = 32) -> np.ndarray:
    """A crop of a real photo that ships with scikit-image (uint8 HxWx3)."""
    from skimage import data

    return data.astronaut()[100 : 100 + size, 180 : 180 + size]


def encode(img: np.ndarray | Image.Image, fmt: str = "PNG", **kw) -> bytes:
    """An image file's bytes (`img`: a uint8/uint16 array or a PIL image)."""
    buf = io.BytesIO()
    (img if isinstance(img, Image.Image) else Image.fromarray(img)).save(buf, format=fmt, **kw)
    return buf.getvalue()


def bomb_png(side: int) -> bytes:
    """A PNG whose header claims side x side RGB pixels (a decompression bomb's header)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))


@pytest.fixture(scope="module")
def client():
    cfg = load_config(PARAMS)
    with TestClient(create_app(cfg, hosts=["testserver"], max_upload_bytes=2_000_000)) as c:
        yield c


def upload(client: TestClient, name: str, data: bytes) -> dict:
    r = client.post(f"/api/uploads?name={name}", content=data, headers=OCTET)
    assert r.status_code == 200, r.text
    return r.json()


def run(client: TestClient, timeout: float = 60, **req) -> dict:
    """Submit a job and wait for it to finish; its last status."""
    r = client.post("/api/jobs", json=req)
    assert r.status_code == 200, r.text
    job = r.json()
    t0 = time.monotonic()
    while job["state"] in ("queued", "running"):
        assert time.monotonic() - t0 < timeout, job
        time.sleep(0.1)
        job = client.get(f"/api/jobs/{job['id']}").json()
    return job


def cli_enhance(src: Path, out: Path, *args: str, model: str = "sr4") -> bytes:
    """What `diffenhance enhance SRC OUT -m MODEL --params P ARGS...` writes."""
    r = CliRunner().invoke(
        cli_app, ["enhance", str(src), str(out), "-m", model, "--params", str(PARAMS), *args]
    )
    assert r.exit_code == 0, r.output
    return out.read_bytes()


# --------------------------------------------------------------------------- the API


@pytest.mark.parametrize(
    ("name", "data", "cli_args", "req"),
    [
        ("crop.png", encode(photo()), ["--steps", "2", "infer.samples=2"],
         {"steps": 2, "samples": 2}),
        ("deep.png", encode((photo(24).astype(np.uint16) * 257)[..., 0]), [], {}),
        ("cmyk.jpg", encode(Image.fromarray(photo(24)).convert("CMYK"), "JPEG", quality=90),
         [], {}),
        ("crop.tif", encode(photo(16), "TIFF"), [], {}),
    ],
    ids=["png-knob", "png-16bit-gray", "jpeg-cmyk", "tiff"],
)  # fmt: skip
def test_output_is_byte_identical_to_the_cli(client, tmp_path, name, data, cli_args, req):
    src = tmp_path / name
    src.write_bytes(data)
    want = cli_enhance(src, tmp_path / f"cli{src.suffix}", *cli_args)
    up = upload(client, name, data)
    job = run(client, upload=up["id"], model="sr4", **req)
    assert job["state"] == "done", job
    got = client.get(f"/api/jobs/{job['id']}/output?download=1")
    assert got.status_code == 200 and got.content == want
    disposition = got.headers["content-disposition"]
    assert disposition == f'attachment; filename="{src.stem}-enhanced{src.suffix}"'
    w, h = Image.open(src).size
    assert (job["output"]["width"], job["output"]["height"]) == (4 * w, 4 * h)
    preview = Image.open(io.BytesIO(client.get(f"/api/jobs/{job['id']}/preview").content))
    assert preview.size == (4 * w, 4 * h) and preview.format in ("PNG", "JPEG")
    if name == "deep.png":  # 16 bits stay 16 bits, as the CLI keeps them
        assert read_image_info(tmp_path / "cli.png")["bit_depth"] == 16
    if name == "crop.png":  # the knob reached the sampler: the default settings differ
        default = run(client, upload=up["id"], model="sr4")
        other = client.get(f"/api/jobs/{default['id']}/output").content
        assert other == cli_enhance(src, tmp_path / "d.png") and other != want


@pytest.mark.parametrize(
    ("name", "data", "status", "message"),
    [
        ("notes.png", b"just some text\n", 400, r"^notes\.png: not a recognised image file$"),
        ("notes.txt", b"just some text\n", 400, r"^notes\.txt: not a supported image type"),
        ("empty.png", b"", 400, r"^empty\.png: empty file"),
        ("cut.png", encode(photo())[:300], 400, r"^cut\.png: truncated file"),
        ("bomb.png", bomb_png(15_000), 400, r"bomb\.png: .*225000000 pixels.*limit"),
        ("big.png", b"\0" * 2_000_001, 413, "the upload is larger than"),
    ],
    ids=["text-as-png", "text", "empty", "truncated", "bomb", "too-large"],
)
def test_bad_uploads_give_a_message_and_the_app_goes_on(client, name, data, status, message):
    r = client.post(f"/api/uploads?name={name}", content=data, headers=OCTET)
    assert r.status_code == status and re.search(message, r.json()["error"]), r.text
    assert "Traceback" not in r.text
    assert client.get("/api/info").status_code == 200
    assert upload(client, "ok.png", encode(photo(8)))["width"] == 8


def test_requests_the_app_refuses(client):
    up = upload(client, "a.png", encode(photo(8)))
    r = client.post("/api/uploads?name=a.png", content=b"x", headers={"content-type": "text/plain"})
    assert r.status_code == 400 and "application/octet-stream" in r.json()["error"]
    r = client.post("/api/jobs", json={"upload": up["id"], "model": "sr4", "steps": "many"})
    assert r.status_code == 400 and r.json()["error"].startswith("bad request: steps:")
    r = client.post("/api/jobs", json={"upload": "nope", "model": "sr4"})
    assert r.status_code == 404 and "no upload 'nope'" in r.json()["error"]
    assert client.get("/api/jobs/nope").json() == {"error": "no job 'nope'"}
    assert client.get("/nowhere").json() == {"error": "Not Found"}
    # another host name (DNS rebinding) is refused
    assert client.get("/api/info", headers={"host": "evil.example"}).status_code == 400


def test_job_errors_are_messages(client, tmp_path):
    up = upload(client, "a.png", encode(photo(8)))
    job = run(client, upload=up["id"], model=str(tmp_path / "none"))
    assert job["state"] == "failed" and f"{tmp_path / 'none'}: no model here" in job["message"]
    job = run(client, upload=up["id"], model="sr4", steps=0)
    assert job["state"] == "failed" and "'infer.steps' must be >= 1" in job["message"]
    assert "/uploads/" not in job["message"] and "enhance.input='a.png'" in job["message"]
    r = client.get(f"/api/jobs/{job['id']}/output")
    assert r.status_code == 409 and "has no output (failed)" in r.json()["error"]


def test_uncertainty_map_is_the_clis(client, tmp_path):
    src = tmp_path / "crop.png"
    src.write_bytes(encode(photo(16)))
    want = cli_enhance(src, tmp_path / "cli.png", "infer.samples=2", "infer.uncertainty=true")
    want_map = (tmp_path / "cli.uncertainty.png").read_bytes()
    up = upload(client, "crop.png", src.read_bytes())
    job = run(client, upload=up["id"], model="sr4", samples=2, uncertainty=True)
    assert job["state"] == "done" and job["uncertainty"] is True, job
    assert client.get(f"/api/jobs/{job['id']}/output").content == want
    assert client.get(f"/api/jobs/{job['id']}/uncertainty.png").content == want_map
    plain = run(client, upload=up["id"], model="sr4", samples=2)
    assert plain["uncertainty"] is False
    r = client.get(f"/api/jobs/{plain['id']}/uncertainty.png")
    assert r.status_code == 404 and "no uncertainty map" in r.json()["error"]


def test_models_listed_and_checked(tmp_path):
    shipped = REPO / "models" / "pretrained" / "sr4" / "model.safetensors"
    (tmp_path / "mine").mkdir()
    shutil.copy(shipped, tmp_path / "mine" / "model.safetensors")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "model.safetensors").write_bytes(b"not a model")
    with TestClient(
        create_app(load_config(PARAMS), models_dir=tmp_path, hosts=["testserver"])
    ) as c:
        models = c.get("/api/info").json()["models"]
        labels = [m["label"] for m in models]
        shipped = [f"{t} (shipped)" for t in TASKS
                   if (REPO / "models" / "pretrained" / t / "model.safetensors").is_file()]  # fmt: skip
        assert shipped == [f"{t} (shipped)" for t in TASKS]  # every task ships, in task order
        assert labels == [*shipped, str(tmp_path / "mine")]
        sr4 = next(m for m in models if m["value"] == "sr4")
        assert sr4 | {"label": None} == {
            "value": "sr4", "label": None, "task": "sr4", "scale": 4, "formulation": "residual",
            "steps": 1, "samples": 1, "has_knob": True}  # fmt: skip
        r = c.post("/api/model", json={"path": str(tmp_path / "broken")})
        assert r.status_code == 400 and "not a readable safetensors file" in r.json()["error"]
        assert c.post("/api/model", json={"path": str(tmp_path / "mine")}).json()["scale"] == 4


def test_old_uploads_are_deleted_and_the_workspace_at_shutdown(monkeypatch):
    from diffenhance.ui import jobs

    monkeypatch.setattr(jobs, "KEEP", 2)
    app = create_app(load_config(PARAMS), hosts=["testserver"])
    with TestClient(app) as c:
        root = app.state.workspace.root
        ids = [upload(c, f"{i}.png", encode(photo(8)))["id"] for i in range(4)]
        kept = [c.get(f"/api/uploads/{i}/preview.png").status_code for i in ids]
        assert kept == [404, 404, 200, 200]
        assert sorted(p.name for p in (root / "uploads").iterdir()) == sorted(ids[2:])
    assert not root.exists()


# --------------------------------------------------------------------------- the browser


@pytest.fixture(scope="module")
def browser():
    missing = [] if CHROMIUM.exists() else ["/usr/bin/chromium (scripts/ensure_chromium.sh)"]
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing.append("the playwright package (pip install -e '.[dev]')")
    if missing:
        why = f"the browser test needs {' and '.join(missing)}"
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def server():
    """`diffenhance ui --port 0` in a subprocess; its URL (as it prints it)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}
    cmd = [sys.executable, "-m", "diffenhance.cli", "ui", "--port", "0", "--params", str(PARAMS)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)  # fmt: skip
    try:
        line = proc.stdout.readline()
        assert line.startswith("diffenhance ui: http://127.0.0.1:"), line + proc.stdout.read()
        yield line.split()[2]
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise


def test_page_enhances_compares_and_reports_errors(browser, server, tmp_path):
    src = tmp_path / "crop.png"
    src.write_bytes(encode(photo()))
    page = browser.new_page(viewport={"width": 1200, "height": 800})
    requests, errors = [], []
    page.on("request", lambda r: requests.append(r.url))
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(server)
    page.wait_for_function("document.querySelectorAll('#model option').length > 0")
    assert page.input_value("#task") == TASKS[0]  # the first task with a model
    page.select_option("#task", "sr4")
    assert page.input_value("#model") == "sr4"
    page.set_input_files("#file", str(src))
    page.wait_for_selector("#run:enabled")
    page.click("#run")
    page.wait_for_selector("#after:visible", timeout=60_000)
    size = page.eval_on_selector("#after", "i => [i.naturalWidth, i.naturalHeight, i.complete]")
    assert size == [128, 128, True]
    assert page.eval_on_selector("#before", "i => [i.naturalWidth, i.naturalHeight]") == [32, 32]
    link = page.locator("#download")
    assert link.get_attribute("download") == "crop-enhanced.png"
    body = page.request.get(server.rstrip("/") + link.get_attribute("href")).body()
    assert body == cli_enhance(src, tmp_path / "cli.png")
    # the divider follows the pointer: the after image is clipped left of it
    box = page.locator("#stage").bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.25, box["y"] + 10)
    page.mouse.down()
    page.mouse.up()
    assert page.eval_on_selector("#after", "i => i.style.clipPath") == "inset(0px 0px 0px 25%)"
    page.screenshot(path=str(tmp_path / "ui.png"), full_page=True)
    assert (tmp_path / "ui.png").stat().st_size > 10_000
    # a text file named .png: a message in the page, and the server still serves
    page.set_input_files(
        "#file", files=[{"name": "notes.png", "mimeType": "image/png", "buffer": b"hello\n"}]
    )
    page.wait_for_selector("#error:visible")
    assert page.inner_text("#error") == "notes.png: not a recognised image file"
    assert page.is_disabled("#run")
    page.set_input_files("#file", str(src))
    page.wait_for_selector("#run:enabled")
    assert page.is_hidden("#error")
    # the knob set by hand, and the uncertainty map shown
    page.uncheck("#auto")
    page.fill("#samples", "2")
    page.check("#uncertainty")
    page.click("#run")
    page.wait_for_selector("#unc-figure:visible", timeout=60_000)
    page.wait_for_function("document.getElementById('unc').complete")
    assert page.eval_on_selector("#unc", "i => i.naturalWidth") == 128
    # nothing fetched from anywhere else (offline), no script errors
    assert all(u.startswith(server) for u in requests), requests
    assert not errors, errors


def test_enhance_config_is_the_params_with_the_given_settings():
    """The resolution the CLI and the UI share: None is "not given", the rest is validated."""
    from diffenhance.config import ConfigError
    from diffenhance.enhance.settings import enhance_config

    cfg = load_config(PARAMS)
    assert enhance_config(cfg, {"model": None}, {"steps": None}) == cfg
    got = enhance_config(cfg, {"model": "sr4"}, {"steps": 3, "samples": 2})
    assert (got.enhance.model, got.infer.steps, got.infer.samples) == ("sr4", 3, 2)
    assert got.train == cfg.train and got.infer.tile == cfg.infer.tile
    with pytest.raises(ConfigError, match=r"with infer\.samples=0: 'infer\.samples' must be >= 1"):
        enhance_config(cfg, {}, {"samples": 0})


def test_ui_command_names_a_busy_port():
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        r = CliRunner().invoke(cli_app, ["ui", "--port", str(port), "--params", str(PARAMS)])
    assert r.exit_code == 2 and f"cannot listen on 127.0.0.1:{port}" in r.output, r.output


@pytest.fixture
def inpaint_case(tmp_path):
    """(untrained inpainting model dir, 32x32 photo, its mask PNG: a white box = fill)."""
    from tests.enhance_helpers import random_checkpoint

    ckpt = random_checkpoint(tmp_path / "inpaint" / "model.safetensors", "inpaint")
    img, mask = tmp_path / "a.png", tmp_path / "m.png"
    img.write_bytes(encode(photo()))
    box = np.zeros((32, 32), np.uint8)
    box[8:20, 10:24] = 255
    mask.write_bytes(encode(box))
    return ckpt.parent, img, mask


def test_mask_runs_as_the_clis(client, inpaint_case, tmp_path):
    model, img, mask = inpaint_case
    want = cli_enhance(img, tmp_path / "o.png", "--mask", str(mask), model=str(model))
    up, mu = upload(client, "a.png", img.read_bytes()), upload(client, "m.png", mask.read_bytes())
    job = run(client, upload=up["id"], model=str(model), mask=mu["id"])
    assert job["state"] == "done", job
    assert client.get(f"/api/jobs/{job['id']}/output").content == want
    job = run(client, upload=up["id"], model=str(model))  # enhance's own refusal, as a message
    assert job["state"] == "failed" and "is an inpainting model" in job["message"]


def test_page_mask_brush_and_mask_file(browser, server, inpaint_case, tmp_path):
    model, img, mask = inpaint_case
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(server)
    page.wait_for_function("document.querySelectorAll('#model option').length > 0")
    page.fill("#model-path", str(model))
    page.press("#model-path", "Tab")  # a typed model is checked: an inpainting one shows the mask
    page.wait_for_selector("#mask-section:visible")
    page.set_input_files("#file", str(img))
    page.wait_for_selector("#mask:visible")
    box = page.locator("#mask").bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.5)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.7, box["y"] + box["height"] * 0.5, steps=5)
    page.mouse.up()
    page.click("#run")
    page.wait_for_selector("#after:visible", timeout=60_000)
    assert page.eval_on_selector("#after", "i => i.naturalWidth") == 32
    # a mask file goes through the same canvas: the output is the CLI's with that file
    page.click("#mask-edit")
    page.set_input_files("#mask-file", str(mask))
    page.click("#run")
    page.wait_for_selector("#after:visible", timeout=60_000)
    body = page.request.get(server.rstrip("/") + page.get_attribute("#download", "href")).body()
    assert body == cli_enhance(img, tmp_path / "o.png", "--mask", str(mask), model=str(model))
    assert not errors, errors
