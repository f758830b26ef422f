"""`diffenhance ui`: the API (TestClient) and the page in a real headless Chromium (Playwright).

The UI runs the CLI's enhance path, so its output must be byte-identical to what
`diffenhance enhance IN OUT -m sr4` writes for the same image and settings (a preset too);
every bad upload must come back as a message, with the server still serving; no request can
tie it up (every knob bounded, jobs cancellable and time-limited)."""

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
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from diffenhance.cli import app as cli_app
from diffenhance.config import load_config
from diffenhance.io import read_image_info
from diffenhance.restoration import task_names
from diffenhance.ui import create_app
from diffenhance.ui.jobs import Limits
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
# the presets recorded in the tiny pmrf model (a detail knob), as `bench_knob.py` records them
PMRF_PRESETS = {"fidelity": {"steps": 1, "samples": 1, "detail": 0.0},
                "balanced": {"steps": 2, "samples": 1, "detail": 0.5},
                "detail": {"steps": 3, "samples": 2, "detail": 1.0}}  # fmt: skip
# the shipped sr4 (pmrf) at full detail, its knob at the UI's limits: 32 samples of 50 Euler
# steps of the flow, 1600 network calls (minutes of CPU, far past any wait here). Its default
# preset (fidelity, detail 0) is the posterior mean alone: one pass whatever steps and samples.
SLOW = {"detail": 1.0, "steps": 50, "samples": 32}


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


def no_trained_models(tmp: Path) -> list[str]:
    """Overrides that point enhance.model at an empty models folder (`tmp`/models): the page
    then lists and starts on the shipped models, as on a fresh clone, even in a checkout
    where `make run` trained models/sr4."""
    return [f"enhance.model={tmp / 'models' / 'sr4'}"]


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ui")
    cfg = load_config(PARAMS, no_trained_models(tmp))
    app = create_app(cfg, models_dir=tmp / "models", hosts=["testserver"],
                     max_upload_bytes=2_000_000)  # fmt: skip
    with TestClient(app) as c:
        yield c


def upload(client: TestClient, name: str, data: bytes) -> dict:
    r = client.post(f"/api/uploads?name={name}", content=data, headers=OCTET)
    assert r.status_code == 200, r.text
    return r.json()


def submit(client: TestClient, **req) -> dict:
    r = client.post("/api/jobs", json=req)
    assert r.status_code == 200, r.text
    return r.json()


def wait(client: TestClient, job_id: str, timeout: float = 60, until=("done", "failed",
         "cancelled", "timed_out")) -> dict:  # fmt: skip
    """Poll a job until its state is one of `until` (default: it ended); its last status."""
    t0 = time.monotonic()
    while (job := client.get(f"/api/jobs/{job_id}").json())["state"] not in until:
        assert time.monotonic() - t0 < timeout, job
        time.sleep(0.05)
    return job


def run(client: TestClient, timeout: float = 60, **req) -> dict:
    """Submit a job and wait for it to finish; its last status."""
    return wait(client, submit(client, **req)["id"], timeout)


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
        ("crop.png", encode(photo()), ["--preset", "balanced", "--steps", "3", "--samples", "2"],
         {"preset": "balanced", "steps": 3, "samples": 2}),
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
    assert job["tiles_done"] == job["tiles_total"] >= 1, job  # the engine counted its tiles
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
    if name == "crop.png":  # the knob reached the sampler: other settings give other bytes
        assert job["settings"] == {"preset": "balanced", "steps": 3, "samples": 2, "detail": 0.75}
        # sr4's default (fidelity: detail 0, the posterior mean), and balanced's own 4 steps
        others = [([], {}), (["--preset", "balanced"], {"preset": "balanced"})]
        for i, (args, kw) in enumerate(others):
            other = run(client, upload=up["id"], model="sr4", **kw)
            got_other = client.get(f"/api/jobs/{other['id']}/output").content
            assert got_other == cli_enhance(src, tmp_path / f"d{i}.png", *args)
            assert got_other != want


def test_previews_keep_the_colour_profile(client):
    """The upload's preview and a TIFF output's PNG preview carry the file's ICC profile, as
    the enhanced output does: without it a Display P3 or Adobe RGB photo showed other colours
    in the page than in the downloaded result."""
    from PIL import ImageCms

    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    for name, fmt in (("p3.png", "PNG"), ("p3.tif", "TIFF")):
        up = upload(client, name, encode(photo(16), fmt, icc_profile=icc))
        shown = Image.open(io.BytesIO(client.get(f"/api/uploads/{up['id']}/preview.png").content))
        assert shown.info.get("icc_profile") == icc, name
        job = run(client, upload=up["id"], model="sr4")
        assert job["state"] == "done", job
        out = Image.open(io.BytesIO(client.get(f"/api/jobs/{job['id']}/output").content))
        preview = Image.open(io.BytesIO(client.get(f"/api/jobs/{job['id']}/preview").content))
        assert out.info.get("icc_profile") == preview.info.get("icc_profile") == icc, name


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
    assert (job["tiles_done"], job["tiles_total"]) == (None, None)  # not counted: the page
    # shows the seconds
    r = client.get(f"/api/jobs/{job['id']}/output")
    assert r.status_code == 409 and "has no output (failed)" in r.json()["error"]


def test_uncertainty_map_is_the_clis(client, tmp_path):
    src = tmp_path / "crop.png"
    src.write_bytes(encode(photo(16)))
    # sr4's samples differ only with detail > 0 (balanced: 0.75)
    args = ("--preset", "balanced", "--samples", "2", "infer.uncertainty=true")
    want = cli_enhance(src, tmp_path / "cli.png", *args)
    want_map = (tmp_path / "cli.uncertainty.png").read_bytes()
    up = upload(client, "crop.png", src.read_bytes())
    job = run(client, upload=up["id"], model="sr4", preset="balanced", samples=2, uncertainty=True)
    assert job["state"] == "done" and job["uncertainty"] is True, job
    assert client.get(f"/api/jobs/{job['id']}/output").content == want
    assert client.get(f"/api/jobs/{job['id']}/uncertainty.png").content == want_map
    plain = run(client, upload=up["id"], model="sr4", preset="balanced", samples=2)
    assert plain["uncertainty"] is False
    r = client.get(f"/api/jobs/{plain['id']}/uncertainty.png")
    assert r.status_code == 404 and "no uncertainty map" in r.json()["error"]
    # at the default preset (detail 0: the posterior mean) the CLI's refusal, as a message
    mean = run(client, upload=up["id"], model="sr4", samples=2, uncertainty=True)
    assert mean["state"] == "failed" and "detail=0 is the posterior mean" in mean["message"]
    assert "output" not in mean, mean


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
        shipped = [f"{t} (shipped)" for t in task_names()
                   if (REPO / "models" / "pretrained" / t / "model.safetensors").is_file()]  # fmt: skip
        assert shipped == [f"{t} (shipped)" for t in task_names()]  # every task, in task order
        assert labels == [*shipped, str(tmp_path / "mine")]
        sr4 = next(m for m in models if m["value"] == "sr4")
        assert sr4 | {"label": None} == {
            "value": "sr4", "label": None, "task": "sr4", "scale": 4, "side_inputs": [],
            "formulation": "pmrf", "steps": 1, "samples": 1, "has_knob": True, "detail_knob": True,
            "presets": {"fidelity": {"steps": 1, "samples": 1, "detail": 0.0},
                        "balanced": {"steps": 4, "samples": 1, "detail": 0.75}},
            "preset": "fidelity"}  # fmt: skip
        inpaint = next(m for m in models if m["value"] == "inpaint")
        assert inpaint["side_inputs"] == ["mask"]  # the page shows the mask painter for it
        r = c.post("/api/model", json={"path": str(tmp_path / "broken")})
        assert r.status_code == 400 and "not a readable safetensors file" in r.json()["error"]
        assert c.post("/api/model", json={"path": str(tmp_path / "mine")}).json()["scale"] == 4


def test_the_default_model_is_the_one_enhance_runs(client):
    """The page starts on enhance.model (`diffenhance enhance` without -m), else on the main
    task (train.tasks[0]), else on the first model; never on sr2 because it is listed first."""
    from diffenhance.ui.jobs import default_model

    info = client.get("/api/info").json()
    assert info["models"][0]["task"] == "sr2" and info["default_model"] == "sr4"
    cfg = load_config(PARAMS)
    models = [{"value": t, "task": t} for t in task_names()]  # each task's shipped model

    def pick(model: str, tasks: tuple[str, ...], listed: list[dict] = models) -> str | None:
        c = replace(cfg, enhance=replace(cfg.enhance, model=model),
                    train=replace(cfg.train, tasks=tasks))  # fmt: skip
        return default_model(c, listed)

    assert pick("models/denoise", ("sr4",)) == "denoise"  # models/<task> untrained: the shipped
    assert pick("/nowhere", ("jpeg",)) == "jpeg"
    assert pick("/nowhere", ("sr4",), models[2:]) == "denoise"  # no sr4 listed: the first
    assert pick("sr4", ("sr4",), []) is None


def test_the_page_icon_is_served(client):
    page = client.get("/").text
    assert '<link rel="icon" href="/favicon.ico" type="image/svg+xml">' in page
    r = client.get("/favicon.ico")
    assert r.status_code == 200 and r.headers["content-type"] == "image/svg+xml"
    assert r.text.startswith("<svg ")


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


# --------------------------------------------------------------------------- limits, cancel


@pytest.mark.parametrize(
    ("req", "message"),
    [
        ({"samples": 100_000_000},
         "samples must be between 1 and 32 (the UI's limit), got 100000000"),
        ({"samples": 0}, "samples must be between 1 and 32 (the UI's limit), got 0"),
        ({"steps": 100_000_000}, "steps must be between 1 and 50 (the UI's limit), got 100000000"),
        ({"steps": 0}, "steps must be between 1 and 50 (the UI's limit), got 0"),
        ({"detail": 1.5}, "detail must be between 0 and 1, got 1.5"),
        ({"detail": -0.25}, "detail must be between 0 and 1, got -0.25"),
    ],
    ids=["samples-huge", "samples-0", "steps-huge", "steps-0", "detail-over", "detail-under"],
)  # fmt: skip
def test_every_knob_is_bounded(client, req, message):
    up = upload(client, "a.png", encode(photo(8)))
    r = client.post("/api/jobs", json={"upload": up["id"], "model": "sr4", **req})
    assert r.status_code == 400 and r.json() == {"error": message}
    limits = client.get("/api/info").json()["limits"]
    assert limits == {"steps": 50, "samples": 32, "pixels": 4096 * 4096, "job_seconds": 300.0}


def test_an_image_over_the_pixel_limit_is_refused_from_its_header(client):
    r = client.post("/api/uploads?name=big.png", content=bomb_png(4097), headers=OCTET)
    assert r.status_code == 400 and r.json()["error"] == (
        "big.png: 4097 x 4097 = 16785409 pixels, over the limit of 16777216 pixels per image; "
        "shrink it, or enhance it with `diffenhance enhance`"
    )


@pytest.fixture(scope="module")
def pmrf_model(tmp_path_factory):
    """A tiny pmrf sr2 model dir (a detail knob) with PMRF_PRESETS recorded: random weights,
    the zero-initialised output layers too (else the flow adds nothing to its mean and every
    detail gives the same image)."""
    import torch

    from diffenhance.model import read_checkpoint, save_weights, set_recommended
    from tests.enhance_helpers import random_checkpoint

    path = tmp_path_factory.mktemp("pmrf") / "pmrf-sr2" / "model.safetensors"
    overrides = ["diffusion.formulation=pmrf", "diffusion.options.pmrf.mean=regression"]
    tensors, meta = read_checkpoint(random_checkpoint(path, "sr2", overrides=overrides))
    g = torch.Generator().manual_seed(0)
    for t in tensors.values():
        if t.is_floating_point():
            t.add_(0.05 * torch.randn(t.shape, generator=g, dtype=t.dtype))
    save_weights(path, tensors, meta)
    set_recommended(path, 1, 1, "test", presets=PMRF_PRESETS)
    return path.parent


def test_presets_listed_and_an_unknown_one_refused(client, pmrf_model):
    info = client.post("/api/model", json={"path": str(pmrf_model)}).json()
    assert (info["presets"], info["preset"], info["detail_knob"]) == (
        PMRF_PRESETS,
        "fidelity",
        True,
    )
    assert list(info["presets"]) == ["fidelity", "balanced", "detail"]  # along the knob
    up = upload(client, "a.png", encode(photo(8)))
    r = client.post("/api/jobs", json={"upload": up["id"], "model": str(pmrf_model),
                                       "preset": "sharp"})  # fmt: skip
    assert r.status_code == 400
    assert "has no preset 'sharp'; it has fidelity, balanced, detail" in r.json()["error"]
    r = client.post("/api/jobs", json={"upload": up["id"], "model": "sr4", "preset": "detail"})
    assert r.status_code == 400
    assert "sr4 (pmrf) has no preset 'detail'; it has fidelity, balanced" in r.json()["error"]
    r = client.post("/api/jobs", json={"upload": up["id"], "model": "jpeg", "detail": 0.5})
    assert r.status_code == 400 and "indi model, which has no detail knob" in r.json()["error"]


def test_a_preset_job_runs_the_presets_settings_and_records_them(client, pmrf_model, tmp_path):
    src = tmp_path / "crop.png"
    src.write_bytes(encode(photo(16)))
    up = upload(client, "crop.png", src.read_bytes())
    cases = [
        ({}, [], {"preset": "fidelity", "steps": 1, "samples": 1, "detail": 0.0}),
        ({"preset": "balanced"}, ["--preset", "balanced"],
         {"preset": "balanced", "steps": 2, "samples": 1, "detail": 0.5}),
        ({"preset": "balanced", "steps": 3, "detail": 0.25},  # given values override the preset's
         ["--preset", "balanced", "--steps", "3", "--detail", "0.25"],
         {"preset": "balanced", "steps": 3, "samples": 1, "detail": 0.25}),
    ]  # fmt: skip
    outputs = set()
    for i, (req, args, settings) in enumerate(cases):
        job = run(client, upload=up["id"], model=str(pmrf_model), **req)
        assert job["state"] == "done" and job["settings"] == settings, job
        got = client.get(f"/api/jobs/{job['id']}/output").content
        assert got == cli_enhance(src, tmp_path / f"cli{i}.png", *args, model=str(pmrf_model))
        outputs.add(got)
    assert len(outputs) == len(cases)  # each setting reached the sampler


def test_cancel_a_queued_and_a_running_job(client):
    up = upload(client, "a.png", encode(photo(64)))
    slow, queued, last = (submit(client, upload=up["id"], model="sr4", **kw)
                          for kw in (SLOW, {}, {}))  # fmt: skip
    r = client.post(f"/api/jobs/{queued['id']}/cancel")  # a queued job: at once
    assert r.status_code == 200 and (r.json()["state"], r.json()["message"]) == ("cancelled",
                                                                                 "cancelled")  # fmt: skip
    assert client.get(f"/api/jobs/{last['id']}").json()["ahead"] == 1  # the slow one only
    wait(client, slow["id"], until=("running",))
    time.sleep(0.5)  # well inside its sampling loop
    t0 = time.monotonic()
    r = client.post(f"/api/jobs/{slow['id']}/cancel")  # a running job: at its next network call
    assert r.status_code == 200 and r.json()["state"] in ("running", "cancelled"), r.json()
    job = wait(client, slow["id"])
    assert (job["state"], job["message"]) == ("cancelled", "cancelled") and "output" not in job
    assert time.monotonic() - t0 < 5 and job["seconds"] < 10
    assert client.get(f"/api/jobs/{slow['id']}/output").status_code == 409
    assert wait(client, last["id"])["state"] == "done"  # the next queued job ran
    assert client.get(f"/api/jobs/{queued['id']}").json()["seconds"] == 0.0  # never started
    assert client.post(f"/api/jobs/{queued['id']}/cancel").json()["state"] == "cancelled"
    r = client.post(f"/api/jobs/{last['id']}/cancel")
    assert (
        r.status_code == 409 and r.json()["error"] == f"job {last['id']} has already ended (done)"
    )
    assert client.post("/api/jobs/nope/cancel").status_code == 404


def test_a_job_past_its_time_limit_stops_and_the_next_one_runs():
    limits = Limits(pixels=32 * 32, job_seconds=1.5)
    app = create_app(load_config(PARAMS), hosts=["testserver"], limits=limits)
    with TestClient(app) as c:
        assert c.get("/api/info").json()["limits"]["job_seconds"] == 1.5
        r = c.post("/api/uploads?name=b.png", content=encode(photo(33)), headers=OCTET)
        assert r.status_code == 400 and "33 x 33 = 1089 pixels, over the limit of 1024" in r.text
        up = upload(c, "a.png", encode(photo(32)))
        slow, quick = (submit(c, upload=up["id"], model="sr4", **kw) for kw in (SLOW, {}))
        job = wait(c, slow["id"])
        assert job["state"] == "timed_out" and "output" not in job, job
        assert job["message"].startswith("timed out after 1.5 s (the UI's limit per job)")
        assert 1.5 <= job["seconds"] < 5
        assert wait(c, quick["id"])["state"] == "done"
        # shutting down stops the running job (no waiting for it to end)
        wait(c, submit(c, upload=up["id"], model="sr4", **SLOW)["id"], until=("running",))
        root, t0 = app.state.workspace.root, time.monotonic()
    assert time.monotonic() - t0 < 5 and not root.exists()


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
def server(tmp_path_factory):
    """`diffenhance ui --port 0` in a subprocess; its URL (as it prints it)."""
    tmp = tmp_path_factory.mktemp("ui-server")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}
    cmd = [sys.executable, "-m", "diffenhance.cli", "ui", "--port", "0", "--params", str(PARAMS),
           "--models-dir", str(tmp / "models"), *no_trained_models(tmp)]  # fmt: skip
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
    # the model `diffenhance enhance` runs by default (models/sr4: the shipped sr4 untrained)
    assert (page.input_value("#task"), page.input_value("#model")) == ("sr4", "sr4")
    page.select_option("#task", "denoise")
    assert page.input_value("#model") == "denoise"
    page.select_option("#task", "sr4")
    assert page.input_value("#model") == "sr4"
    # the shipped sr4 (pmrf) records two presets along its detail knob, fidelity chosen
    assert page.locator("#presets label").all_inner_texts() == ["fidelity", "balanced"]
    assert page.is_checked("#preset-fidelity") and page.is_disabled("#steps")
    assert page.is_visible("#detail") and page.is_disabled("#detail")
    assert page.inner_text("#preset-note") == (
        "fidelity, the model's default: 1 step, 1 sample, detail 0"
    )
    page.set_input_files("#file", str(src))
    page.wait_for_selector("#run:enabled")
    page.click("#run")
    page.wait_for_selector("#after:visible", timeout=60_000)
    assert page.inner_text("#result-settings") == "preset fidelity: 1 step, 1 sample, detail 0"
    size = page.eval_on_selector("#after", "i => [i.naturalWidth, i.naturalHeight, i.complete]")
    assert size == [128, 128, True]
    assert page.eval_on_selector("#before", "i => [i.naturalWidth, i.naturalHeight]") == [32, 32]
    link = page.locator("#download")
    assert link.get_attribute("download") == "crop-enhanced.png"
    body = page.request.get(server.rstrip("/") + link.get_attribute("href")).body()
    assert body == cli_enhance(src, tmp_path / "cli.png")
    # the divider follows the pointer: the after image is clipped left of it (the stage in
    # view: clicking #run, below the knob's detail slider, may have scrolled the page)
    page.locator("#stage").scroll_into_view_if_needed()
    box = page.locator("#stage").bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.25, box["y"] + box["height"] / 2)
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
    # the knob set by hand from balanced's values (detail 0.75: samples differ), and the
    # uncertainty map shown
    page.click("label[for=preset-balanced]")
    page.uncheck("#auto")
    assert page.input_value("#detail") == "0.75" and page.is_enabled("#detail")
    page.fill("#samples", "2")
    page.check("#uncertainty")
    page.click("#run")
    page.wait_for_selector("#unc-figure:visible", timeout=60_000)
    page.wait_for_function("document.getElementById('unc').complete")
    assert page.eval_on_selector("#unc", "i => i.naturalWidth") == 128
    settings = "preset balanced: 4 steps, 2 samples, detail 0.75"
    assert page.inner_text("#result-settings") == settings
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
    # a tile given alone: the params' overlap while it fits, else a quarter of the tile
    assert cfg.infer.tile_overlap == 16
    overlap = lambda **infer: enhance_config(cfg, {}, infer).infer.tile_overlap  # noqa: E731
    assert (overlap(tile=32), overlap(tile=16), overlap(tile=16, tile_overlap=8)) == (16, 4, 8)
    with pytest.raises(ConfigError, match="tile_overlap' must be >= 0 and smaller"):
        overlap(tile=16, tile_overlap=16)  # given together: the user's own, so refused


def test_ui_command_names_a_busy_port():
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        r = CliRunner().invoke(cli_app, ["ui", "--port", str(port), "--params", str(PARAMS)])
    assert r.exit_code == 2 and f"cannot listen on 127.0.0.1:{port}" in r.output, r.output
    for bad in ("99999", "-1"):  # out of range: typer's usage error, not an OverflowError
        r = CliRunner().invoke(cli_app, ["ui", "--port", bad, "--params", str(PARAMS)])
        assert r.exit_code == 2 and "Invalid value for '--port'" in r.output, r.output


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
    # a message names the user's files, not this server's folders
    small = upload(client, "small.png", encode(np.zeros((16, 16), np.uint8)))
    job = run(client, upload=up["id"], model=str(model), mask=small["id"])
    assert job["state"] == "failed" and "/uploads/" not in job["message"], job
    assert job["message"].startswith("--mask small.png: mask is 16x16 but its image is 32x32")
    assert job["message"].endswith("(image a.png)")


def open_page(browser, server):
    """(the page loaded with its model list, the list its script errors are appended to)."""
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(server)
    page.wait_for_function("document.querySelectorAll('#model option').length > 0")
    return page, errors


def test_page_mask_brush_and_mask_file(browser, server, inpaint_case, tmp_path):
    model, img, mask = inpaint_case
    page, errors = open_page(browser, server)
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


def test_page_presets_and_cancel(browser, server, pmrf_model, tmp_path):
    src = tmp_path / "crop.png"
    src.write_bytes(encode(photo()))
    page, errors = open_page(browser, server)
    page.fill("#model-path", str(pmrf_model))
    page.press("#model-path", "Tab")  # a typed model is checked: its presets fill the selector
    page.wait_for_function("document.querySelectorAll('#presets label').length === 3")
    assert page.locator("#presets label").all_inner_texts() == ["fidelity", "balanced", "detail"]
    assert page.is_checked("#preset-fidelity") and page.is_visible("#detail")  # a detail knob
    page.click("label[for=preset-balanced]")
    assert page.is_checked("#preset-balanced")
    assert (page.input_value("#steps"), page.input_value("#samples")) == ("2", "1")
    assert page.input_value("#detail") == "0.5" and page.is_disabled("#detail")
    assert page.inner_text("#preset-note") == "balanced: 2 steps, 1 sample, detail 0.5"
    page.set_input_files("#file", str(src))
    page.wait_for_selector("#run:enabled")
    page.click("#run")
    page.wait_for_selector("#after:visible", timeout=60_000)
    assert page.inner_text("#result-settings") == "preset balanced: 2 steps, 1 sample, detail 0.5"
    body = page.request.get(server.rstrip("/") + page.get_attribute("#download", "href")).body()
    assert body == cli_enhance(src, tmp_path / "o.png", "--preset", "balanced",
                               model=str(pmrf_model))  # fmt: skip
    page.screenshot(path=str(tmp_path / "presets.png"), full_page=True)
    # by hand: the preset's values are the start; a long run is stopped with Cancel
    page.select_option("#task", "sr4")  # the shipped sr4 (the typed path cleared)
    page.fill("#model-path", "")
    page.select_option("#model", "sr4")
    page.uncheck("#auto")
    page.fill("#samples", "32")
    page.eval_on_selector("#steps", "e => { e.value = 50; e.dispatchEvent(new Event('input')); }")
    # full detail: the flow runs (at sr4's default detail 0 one mean pass ends the job at once)
    page.eval_on_selector("#detail", "e => { e.value = 1; e.dispatchEvent(new Event('input')); }")
    assert page.inner_text("#detail-out") == "1.00"
    page.click("#run")
    page.wait_for_selector("#cancel:visible")
    page.wait_for_function("document.getElementById('status-text').textContent.startsWith('Enh')")
    page.click("#cancel")
    page.wait_for_function(
        "document.getElementById('status-text').textContent === 'Cancelled.'", timeout=15_000
    )
    assert page.is_hidden("#cancel") and page.is_hidden("#error") and page.is_enabled("#run")
    page.screenshot(path=str(tmp_path / "cancelled.png"), full_page=True)
    assert not errors, errors


def big_result(status: dict, done: dict) -> dict:
    """Page routes that stand in for a job (`status` until done["now"], then a finished job
    with a 2000 x 1500 output): the layout of a large result without minutes of CPU."""
    png = encode(np.kron(np.indices((30, 40)).sum(0) % 2 * 255, np.ones((50, 50))).astype(np.uint8))
    finished = {**status, "state": "done", "seconds": 4.2, "tiles_done": 12,
                "output": {"name": "big-enhanced.png", "width": 2000, "height": 1500},
                "uncertainty": False}  # fmt: skip
    return {
        "**/api/jobs": lambda route: route.fulfill(json=status),
        "**/api/jobs/big": lambda route: route.fulfill(json=finished if done["now"] else status),
        "**/api/jobs/big/preview": lambda route: route.fulfill(body=png, content_type="image/png"),
    }


def assert_fits(page, width: int = 1280) -> None:
    """The page is no wider than the window, not scrolled sideways, its header all in view."""
    page_width, scroll_x, header = page.evaluate(
        "[document.documentElement.scrollWidth, window.scrollX,"
        " document.querySelector('header').getBoundingClientRect().toJSON()]"
    )
    assert page_width <= width and scroll_x == 0, (page_width, scroll_x)
    assert header["left"] >= 0 and header["right"] <= width and header["width"] > 0.9 * width


def test_page_fits_a_large_result_in_the_window(browser, server, tmp_path):
    """At 1280 x 800 a 2000 x 1500 result is drawn within the page (no sideways scrolling, the
    header in view); "100%" shows it pixel for pixel in a scroll box; progress counts tiles."""
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    failed, errors = [], []
    page.on("response", lambda r: r.status >= 400 and failed.append(f"{r.status} {r.url}"))
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(server)
    page.wait_for_function("document.querySelectorAll('#model option').length > 0")
    icon = page.eval_on_selector("link[rel=icon]", "l => l.href")
    assert page.request.get(icon).status == 200
    src = Image.fromarray(photo(64)).resize((500, 375))  # sr4: a 2000 x 1500 output
    page.set_input_files("#file", files=[{"name": "big.png", "mimeType": "image/png",
                                          "buffer": encode(src)}])  # fmt: skip
    page.wait_for_selector("#run:enabled")
    status = {"id": "big", "state": "running", "message": "", "ahead": 0, "seconds": 1.5,
              "tiles_done": 3, "tiles_total": 12,
              "settings": {"preset": "fidelity", "steps": 1, "samples": 1, "detail": 0.0}}  # fmt: skip
    done = {"now": False}
    for url, handler in big_result(status, done).items():
        page.route(url, handler)
    page.click("#run")
    page.wait_for_function(
        "document.getElementById('status-text').textContent === 'Enhancing... 3 / 12 tiles, 1.5 s'"
    )
    assert page.eval_on_selector("#tiles", "p => [p.hidden, p.value, p.max]") == [False, 3, 12]
    done["now"] = True
    page.wait_for_selector("#after:visible", timeout=10_000)
    assert page.inner_text("#status-text") == "Done in 4.2 s." and page.is_hidden("#tiles")
    assert page.eval_on_selector("#after", "i => [i.naturalWidth, i.complete]") == [2000, True]
    # fit: the image within the window, the page no wider than it, the header in full
    assert_fits(page)
    after = page.locator("#after").bounding_box()
    assert after["x"] >= 0 and after["x"] + after["width"] <= 1280 and after["height"] <= 800 - 120
    assert after["width"] / after["height"] == pytest.approx(2000 / 1500, rel=0.01)
    page.screenshot(path=str(tmp_path / "fit.png"))
    # 100%: one image pixel per CSS pixel, in a box that scrolls; the page still fits
    page.click("label:has(#zoom-actual)")
    after = page.locator("#after").bounding_box()
    assert (after["width"], after["height"]) == (2000, 1500)
    box = page.eval_on_selector("#stage-box", "b => [b.scrollWidth > b.clientWidth, "
                                "b.getBoundingClientRect().right, b.scrollLeft > 0]")  # fmt: skip
    assert box[0] and box[1] <= 1280 and box[2]  # centred on the image's middle
    assert_fits(page)
    page.screenshot(path=str(tmp_path / "actual.png"))
    # side by side at 100%: both at the output's size, scrolled together
    page.check("input[name=view][value=side]")
    sizes = "i => i.getBoundingClientRect().width"
    assert [page.eval_on_selector(i, sizes) for i in ("#before2", "#after2")] == [2000, 2000]
    page.eval_on_selector("#after2-box", "b => { b.scrollLeft = 300; }")
    page.wait_for_function("document.getElementById('before2-box').scrollLeft === 300")
    assert_fits(page)
    page.click("label:has(#zoom-fit)")
    assert page.eval_on_selector("#after2", sizes) < 1280 / 2
    assert_fits(page)
    assert not failed and not errors, (failed, errors)
