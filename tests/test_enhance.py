"""Batch enhancement without Prefect: crash and resume, bad files, formats, skip-done, the
CLI's exit codes, and s3:// input and output on the real SeaweedFS server."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import imagecodecs
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from diffenhance.cli import app
from diffenhance.config import ConfigError, load_config
from diffenhance.degrade import resize
from diffenhance.enhance import MANIFEST_DIR, SUMMARY_KEY, plan_job, run_job, run_shard
from diffenhance.enhance.job import SCRATCH_DIR
from diffenhance.io import (
    read_icc_profile,
    read_image,
    read_image_alpha,
    read_image_info,
    temp_name,
    to_uint8,
    write_image,
)
from diffenhance.storage import open_storage
from tests.conftest import REPO
from tests.enhance_helpers import IdentityTiles, gradient, random_checkpoint, write_inputs
from tests.tiny import smooth_image

JOB = ["enhance.shard_size=3", "infer.tile=16", "infer.tile_overlap=4", "infer.steps=2"]
JOB += ["infer.tile_batch=4", "infer.precision=fp32"]


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Several test processes share 2 cores: OpenMP threads spinning against each other make
    tiny forward passes 10x slower. Subprocesses get OMP_NUM_THREADS=1 to match."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return random_checkpoint(tmp_path_factory.mktemp("model") / "sr2.safetensors")


@pytest.fixture
def params(tmp_path) -> Path:
    p = tmp_path / "params.yaml"
    p.write_text("{}\n")  # built-in defaults: independent of the repo's params.yaml
    return p


def config(params: Path, inp, out, model, *extra: str):
    return load_config(
        params, [f"enhance.input={inp}", f"enhance.output={out}", f"enhance.model={model}"]
        + JOB + list(extra)
    )  # fmt: skip


def files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def images(root: Path) -> dict[str, bytes]:
    return {k: v for k, v in files(root).items() if not k.startswith("_diffenhance/")}


def records(out: Path) -> dict[str, dict]:
    """The manifest record of each image, by input key."""
    ms = [json.loads(p.read_text()) for p in (out / MANIFEST_DIR).glob("*.json")]
    return {r["input_key"]: r for m in ms for r in m["images"]}


def recorded(out: Path) -> set[str]:
    keys: set[str] = set()
    for m in (out / MANIFEST_DIR).glob("*.json"):
        with contextlib.suppress(json.JSONDecodeError, OSError):  # replaced while reading
            keys |= {r["input_key"] for r in json.loads(m.read_text())["images"]}
    return keys


# ----------------------------------------------------------------------------- crash + resume


def test_killed_run_leaves_no_partial_outputs_and_rerun_finishes_only_the_rest(
    tmp_path, ckpt, params
):
    inp = tmp_path / "in"
    write_inputs(inp, [(64, 64)] * 8)
    ref_out, out = tmp_path / "ref", tmp_path / "out"
    ref = run_job(config(params, inp, ref_out, ckpt))
    assert ref["enhanced"] == 8 and ref["failed"] == 0
    expected = images(ref_out)
    assert len(expected) == 8

    # A real run in a subprocess, SIGKILLed once the second shard has recorded an image.
    cmd = [sys.executable, "-m", "diffenhance.cli", "enhance", str(inp), str(out)]
    cmd += ["--model", str(ckpt), "--params", str(params), *JOB]
    # TMPDIR: where a job's scratch would be (local input and output need none: N8)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp_path)}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while len(recorded(out)) < 4 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"

    done_before = recorded(out)
    assert 4 <= len(done_before) < 8
    partial = images(out)
    visible = {k: v for k, v in partial.items() if not Path(k).name.startswith(".")}
    # every visible output is complete (it is byte-identical to the uninterrupted run's)
    assert visible and all(expected[k] == v for k, v in visible.items())
    assert {k.replace(".png", "") for k in visible} >= {k.replace(".png", "") for k in done_before}

    summary = run_job(config(params, inp, out, ckpt))
    assert summary["enhanced"] == 8 - len(done_before)  # only the missing work
    assert summary["skipped_done"] == len(done_before) and summary["failed"] == 0
    assert images(out) == expected  # no temp files left, outputs identical
    assert not list(tmp_path.glob("diffenhance-enhance-*"))  # local in and out: no scratch
    manifests = sorted(p.name for p in (out / MANIFEST_DIR).iterdir())
    assert len(manifests) == 3 and not any("partial" in m for m in manifests)
    again = run_job(config(params, inp, out, ckpt))
    assert again["enhanced"] == 0 and again["skipped_done"] == 8 and again["shards_run"] == 0


# ----------------------------------------------------------------------------- bad files


def test_folder_with_corrupt_and_non_image_files_completes_and_names_each(tmp_path, ckpt, params):
    inp, out = tmp_path / "in", tmp_path / "out"
    write_inputs(inp, [(20, 30), (17, 33), (1, 40)])
    write_image(inp / "photo.jpg", smooth_image(np.random.default_rng(1), 24, 24))
    (inp / "bad.png").write_text("this is not a PNG")
    (inp / "trunc.jpg").write_bytes((inp / "photo.jpg").read_bytes()[:300])
    (inp / "empty.webp").write_bytes(b"")
    (inp / "notes.txt").write_text("hello")
    (inp / "sub0" / "README").write_text("hello")
    (inp / ".hidden.png").write_text("editor swap file")
    (inp / "gone.png").symlink_to(tmp_path / "nowhere.png")  # a broken link: one failure
    os.mkfifo(inp / "pipe.png")  # a FIFO: a failure, never a reader blocked for ever
    res = CliRunner().invoke(
        app,
        ["enhance", str(inp), str(out), "--model", str(ckpt), "--params", str(params), *JOB],
    )
    assert res.exit_code == 1, res.output  # some images failed
    for name in ("bad.png", "trunc.jpg", "empty.webp", "gone.png", "pipe.png"):
        assert f"error: {name}: " in res.output
    summary = json.loads((out / SUMMARY_KEY).read_text())
    reasons = {f["key"]: f["reason"] for f in summary["failures"]}
    assert reasons.keys() == {"bad.png", "trunc.jpg", "empty.webp", "gone.png", "pipe.png"}
    assert "not a recognised image" in reasons["bad.png"]
    assert "truncated" in reasons["trunc.jpg"].lower() and "empty" in reasons["empty.webp"]
    assert reasons["gone.png"] == f"broken symbolic link (to {tmp_path / 'nowhere.png'})"
    assert reasons["pipe.png"] == "not a regular file"
    assert {i["key"] for i in summary["ignored"]} == {"notes.txt", "sub0/README"}
    for ig in summary["ignored"]:  # named on the console too, with why (issue 24 N7)
        assert f"ignored {ig['key']}: {ig['reason']}" in res.output
    assert summary["enhanced"] == 4 and summary["images"] == 9
    assert summary["images_per_s"] > 0 and summary["megapixels_per_s"] > 0
    assert sorted(images(out)) == ["photo.jpg", "sub0/img0.png", "sub0/img2.png", "sub1/img1.png"]
    assert read_image(out / "sub0/img2.png").shape == (2, 80, 3)  # 1-pixel strip, x2


def test_a_corrupt_input_is_a_failed_image_exit_1_as_the_docs_say(tmp_path, ckpt, params):
    """docs/enhancing.md: a corrupt file is the line `[i/n] error: <key>: <reason>` and exit 1,
    in a folder and as the only image named (read by the job, not while planning)."""
    inp = tmp_path / "in"
    write_inputs(inp, [(16, 16)])
    (inp / "sub" / "b.png").parent.mkdir()
    (inp / "sub" / "b.png").write_text("not a PNG")
    docs = " ".join((REPO / "docs" / "enhancing.md").read_text().split())
    for src in (inp, inp / "sub" / "b.png"):
        r = enhance_cli(src, tmp_path / ("out" if src == inp else "o.png"), ckpt, params)
        assert r.exit_code == 1, r.output
        (line,) = [x for x in r.output.splitlines() if "error:" in x]
        key = "sub/b.png" if src == inp else "b.png"
        assert re.fullmatch(rf"\[\d/\d\] error: {key}: not a recognised image file", line), line
    assert "`[4/40] error: sub/b.png: not a recognised image file`" in docs
    assert "exit code 1, also when that file was the only image named" in docs


def test_outputs_manifests_and_summary_get_the_umask_mode(
    tmp_path, ckpt, params, umask_022
) -> None:
    """Everything a run writes is 0644 at umask 022 (not the 0600 of a private temp file), and
    the temp files a killed writer left beside an output it redoes are swept."""
    inp, out = tmp_path / "in", tmp_path / "out"
    write_inputs(inp, [(12, 12)] * 4)
    stale = out / "sub0" / temp_name("img0.png")  # a killed writer's; img0 is still to do
    kept = out / "sub0" / temp_name("notes.txt")  # not an output of this run: left alone
    for p in (stale, kept):
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"half")
    summary = run_job(config(params, inp, out, ckpt), model=IdentityTiles(scale=2))
    assert summary["enhanced"] == 4 and summary["shards"] == 2
    assert not stale.exists() and kept.exists()
    made = [p for p in out.rglob("*") if p.is_file() and p != kept]
    assert {p.relative_to(out).as_posix() for p in made} >= {SUMMARY_KEY, "sub0/img0.png"}
    assert len(list((out / MANIFEST_DIR).glob("*.json"))) == 2
    assert {p: stat.S_IMODE(p.stat().st_mode) for p in made} == dict.fromkeys(made, 0o644)


def test_cli_enhances_a_one_pixel_image(tmp_path, ckpt, params):
    """1x1 x2 reaches the U-Net's innermost level as 1x1, where GroupNorm has one value per
    group and raised: the engine pads it."""
    (src,) = write_inputs(tmp_path / "in", [(1, 1)])
    res = CliRunner().invoke(
        app, ["enhance", str(src), str(tmp_path / "x.png"), "-m", str(ckpt), "--params",
              str(params), *JOB],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert read_image(tmp_path / "x.png").shape == (2, 2, 3)


# ----------------------------------------------------------------------------- formats


def test_output_format_and_bit_depth_follow_the_input_unless_set(tmp_path, ckpt, params):
    inp = tmp_path / "in"
    img = smooth_image(np.random.default_rng(0), 12, 10)
    write_image(inp / "deep.png", img, bit_depth=16)
    write_image(inp / "a.jpg", img)
    write_image(inp / "a.png", img)
    from PIL import Image

    Image.fromarray((img * 255).astype(np.uint8)).save(inp / "anim.gif")
    ident = IdentityTiles(scale=2)
    exts = "enhance.extensions=[.png,.jpg,.gif]"
    same = run_job(config(params, inp, tmp_path / "same", ckpt, exts), model=ident)
    assert same["enhanced"] == 4
    assert sorted(images(tmp_path / "same")) == ["a.jpg", "a.png", "anim.png", "deep.png"]
    assert read_image_info(tmp_path / "same/deep.png")["bit_depth"] == 16
    assert read_image_info(tmp_path / "same/a.jpg")["format"] == "JPEG"
    assert read_image(tmp_path / "same/anim.png").shape == (24, 20, 3)

    forced = config(params, inp, tmp_path / "png8", ckpt, exts, "enhance.output_format=png")
    forced = run_job(forced, model=ident)
    assert {i["key"] for i in forced["ignored"]} == {"a.png"}  # a.jpg -> a.png comes first
    assert "also the output of a.jpg" in forced["ignored"][0]["reason"]
    out8 = config(params, inp, tmp_path / "b8", ckpt, exts, "enhance.bit_depth=8")
    run_job(out8, model=ident)
    assert read_image_info(tmp_path / "b8/deep.png")["bit_depth"] == 8


def test_gray_inputs_give_gray_outputs_the_mean_of_the_models_channels(tmp_path, ckpt, params):
    """A gray input (8 or 16 bits) comes out gray, not as RGB with the few-code tint the
    model's channels differ by: exactly the rounded channel mean of the same input's RGB run."""
    inp, out = tmp_path / "in", tmp_path / "out"
    g = smooth_image(np.random.default_rng(3), 12, 10)[..., 0]
    write_image(inp / "g8.png", g)
    write_image(inp / "g16.png", g, bit_depth=16)
    write_image(inp / "rgb.png", np.repeat(g[..., None], 3, axis=2))  # the same pixels, RGB
    g16 = np.round(g * 65535).astype(np.uint16)  # 16-bit gray + alpha (Pillow: 8-bit RGBA)
    (inp / "la16.png").write_bytes(imagecodecs.png_encode(np.stack([g16, g16 // 2], -1)))
    summary = run_job(config(params, inp, out, ckpt))
    assert summary["enhanced"] == 4 and summary["failed"] == 0
    assert read_image_info(out / "g8.png")["mode"] == "L"
    assert read_image_info(out / "g16.png")["bit_depth"] == 16
    assert read_image_info(out / "g16.png")["mode"] in ("I;16", "I;16B", "I;16L", "I")
    assert read_image_info(out / "la16.png") == {**read_image_info(inp / "la16.png"),
                                                 "size": (20, 24)}  # fmt: skip
    la = imagecodecs.png_decode((out / "la16.png").read_bytes())
    assert la.dtype == np.uint16 and la.shape == (24, 20, 2)
    g16_out = np.round(read_image(out / "g16.png") * 65535)[..., 0]
    np.testing.assert_array_equal(la[..., 0], g16_out)  # the gray of the same pixels
    codes = np.round(read_image(out / "rgb.png") * 255).astype(np.uint32)
    assert np.abs(np.diff(codes, axis=2)).max() > 0  # the random model tints: a real check
    gray = np.round(read_image(out / "g8.png") * 255).astype(np.uint32)
    np.testing.assert_array_equal(gray[..., 0], (codes.sum(axis=2) + 1) // 3)


def test_the_inputs_colour_profile_goes_into_its_output(tmp_path, ckpt, params):
    """An ICC profile (a Display P3 phone photo's) is carried from input to output, PNG and
    JPEG alike; an input without one gives an output without one (not an sRGB tag)."""
    from PIL import Image, ImageCms

    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    rgb = np.round(smooth_image(np.random.default_rng(5), 12, 10) * 255).astype(np.uint8)
    Image.fromarray(rgb).save(inp / "p3.png", icc_profile=icc)
    Image.fromarray(rgb).save(inp / "p3.jpg", icc_profile=icc, quality=95)
    Image.fromarray(rgb).save(inp / "plain.png")
    summary = run_job(config(params, inp, out, ckpt))
    assert summary["enhanced"] == 3 and summary["failed"] == 0
    assert read_icc_profile(out / "p3.png") == icc and read_icc_profile(out / "p3.jpg") == icc
    assert read_icc_profile(out / "plain.png") is None


def test_gif_is_enhanced_by_default_to_png_and_clash_advice_is_right(tmp_path, ckpt, params):
    """GIF is in the default enhance.extensions (docs/enhancing.md: GIF becomes PNG); an animated GIF gives
    its first frame, with a note. a.gif and a.png both map to a.png: renaming resolves that,
    not output_format=same (the default already)."""
    from PIL import Image

    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    red, blue = Image.new("RGB", (8, 6), (255, 0, 0)), Image.new("RGB", (8, 6), (0, 0, 255))
    red.save(inp / "anim.gif", save_all=True, append_images=[blue], duration=100, loop=0)
    blue.save(inp / "still.gif")
    ident = IdentityTiles(scale=2)
    summary = run_job(config(params, inp, out, ckpt), model=ident)
    assert summary["enhanced"] == 2 and summary["ignored"] == [] and summary["failed"] == 0
    assert sorted(images(out)) == ["anim.png", "still.png"]
    assert read_image_info(out / "anim.png")["format"] == "PNG"
    first = read_image(out / "anim.png")
    assert first.shape == (12, 16, 3) and first[..., 0].min() > 0.99 and first[..., 2].max() < 0.01
    (m,) = [json.loads(p.read_text()) for p in (out / MANIFEST_DIR).glob("*.json")]
    notes = {r["input_key"]: r.get("note") for r in m["images"]}
    assert notes == {"anim.gif": "animated (2 frames): only the first frame is enhanced",
                     "still.gif": None}  # fmt: skip

    red.save(inp / "still.png")  # still.gif and still.png -> still.png
    job = plan_job(config(params, inp, tmp_path / "o2", ckpt))
    (ig,) = job.ignored
    assert ig["key"] == "still.png" and "also the output of still.gif" in ig["reason"]
    assert "rename one of them" in ig["reason"] and "output_format=same" not in ig["reason"]
    write_image(inp / "c.jpg", smooth_image(np.random.default_rng(0), 8, 8))
    write_image(inp / "c.png", smooth_image(np.random.default_rng(0), 8, 8))
    job = plan_job(config(params, inp, tmp_path / "o3", ckpt, "enhance.output_format=png"))
    reasons = {i["key"]: i["reason"] for i in job.ignored}
    assert "set enhance.output_format=same" in reasons["c.png"]  # c.jpg stays c.jpg with same
    assert "output_format=same" not in reasons["still.png"]  # with same: both -> still.png


def test_alpha_is_kept_where_the_output_format_has_it_else_composited_and_said(
    tmp_path, ckpt, params, caplog
):
    """RGBA (8 and 16 bits) and LA inputs keep their alpha in PNG outputs: the colour goes
    through the model, the alpha is resized bicubic (the filter of --outscale); a JPEG output
    composites over white as before. Each record and the log say which."""
    from PIL import Image

    inp = tmp_path / "in"
    rgb = smooth_image(np.random.default_rng(0), 12, 10)
    alpha = gradient(12, 10)[..., 0]  # 0 (transparent) at the left .. 0.9 at the right
    write_image(inp / "rgba.png", rgb, alpha=alpha)
    write_image(inp / "deep.png", rgb, alpha=alpha, bit_depth=16)
    write_image(inp / "la.png", rgb[..., 0], alpha=alpha)
    write_image(inp / "plain.png", rgb)
    ident = IdentityTiles(scale=2)
    caplog.set_level(logging.INFO, logger="diffenhance.enhance.shard")
    out = tmp_path / "out"
    assert run_job(config(params, inp, out, ckpt), model=ident)["enhanced"] == 4
    recs = records(out)
    assert {k: r.get("alpha") for k, r in recs.items()} == {
        "rgba.png": "kept", "deep.png": "kept", "la.png": "kept", "plain.png": None
    }  # fmt: skip
    assert f"{inp / 'rgba.png'}: alpha kept" in caplog.text
    in_alpha = read_image_alpha(inp / "rgba.png")[1]
    want = resize(in_alpha[..., None], scale=2)[..., 0]
    for name in ("rgba.png", "deep.png", "la.png"):
        with Image.open(out / name) as im:
            # gray + alpha stays gray + alpha
            assert im.mode == ("LA" if name == "la.png" else "RGBA") and im.size == (20, 24)
        colour, kept = read_image_alpha(out / name)
        np.testing.assert_allclose(kept, want, atol=1 / 255)
        assert colour[:, :2].min() < 0.9  # under the transparent edge: not composited white
    assert read_image_info(out / "deep.png")["bit_depth"] == 16
    deep_alpha = read_image_alpha(out / "deep.png")[1]
    assert np.abs(deep_alpha * 255 - np.round(deep_alpha * 255)).max() > 1e-3  # 16-bit alpha
    assert read_image_alpha(out / "plain.png")[1] is None

    caplog.clear()
    jpg = tmp_path / "jpg"
    run_job(config(params, inp, jpg, ckpt, "enhance.output_format=jpg"), model=ident)
    why = records(jpg)["rgba.png"]["alpha"]
    assert why.startswith("composited over white: .jpg has no alpha channel"), why
    assert ".png" in why and records(jpg)["plain.png"].get("alpha") is None
    assert any(
        r.levelno == logging.WARNING and "rgba.png: alpha composited" in r.getMessage()
        for r in caplog.records
    )
    with Image.open(jpg / "rgba.jpg") as im:
        assert im.mode == "RGB"
    assert to_uint8(read_image(jpg / "rgba.jpg")[:, 0]).min() > 240  # transparent -> white


# ----------------------------------------------------------------------------- skip-done


def test_rerun_skips_same_model_and_params_and_redoes_on_change(tmp_path, ckpt, params):
    inp, out = tmp_path / "in", tmp_path / "out"
    write_inputs(inp, [(12, 12)] * 5)
    ident = IdentityTiles(scale=2)
    first = run_job(config(params, inp, out, ckpt), model=ident)
    assert first["enhanced"] == 5 and first["shards"] == 2
    (inp / "sub0/img0.png").touch()  # new mtime, same content: verified by sha256, not redone
    write_inputs(inp / "new", [(12, 12)])  # a new image shifts the shard boundaries
    job = plan_job(config(params, inp, out, ckpt))
    assert job.n_todo == 2 and [s.id for s in job.shards] == sorted(s.id for s in job.shards)
    second = run_job(config(params, inp, out, ckpt), model=ident)
    assert second["enhanced"] == 1 and second["reused"] == 1 and second["skipped_done"] == 5
    assert len(list((out / MANIFEST_DIR).iterdir())) == 2  # old shards' manifests merged
    third = run_job(config(params, inp, out, ckpt, "infer.steps=3"), model=ident)
    assert third["enhanced"] == 6  # other params: everything again
    assert (
        run_job(config(params, inp, out, ckpt, "infer.steps=3", "infer.tile_batch=2"), model=ident)[
            "enhanced"
        ]
        == 0
    )  # tile_batch does not change outputs


# ----------------------------------------------------------------------------- CLI


def test_cli_usage_errors_dry_run_and_single_file(tmp_path, ckpt, params):
    cli = CliRunner()
    inp = tmp_path / "in"
    (src,) = write_inputs(inp, [(16, 16)])
    base = ["--params", str(params), *JOB]
    r = cli.invoke(
        app, ["enhance", str(tmp_path / "nope"), str(tmp_path / "o"), "-m", str(ckpt), *base]
    )
    assert r.exit_code == 2 and "nope: input not found" in r.output
    r = cli.invoke(app, ["enhance", str(inp), str(tmp_path / "o"), "-m", str(tmp_path), *base])
    assert r.exit_code == 2 and f"{tmp_path}: no model here" in r.output
    assert "a shipped one: " in r.output and "sr4" in r.output.rsplit("shipped one: ", 1)[1]
    r = cli.invoke(app, ["enhance", str(inp), str(inp), "-m", str(ckpt), *base])
    assert r.exit_code == 2 and "is the input folder" in r.output
    r = cli.invoke(
        app, ["enhance", str(inp), str(tmp_path / "o"), "-m", str(ckpt), "--tile", "2", *base]
    )
    assert r.exit_code == 2 and "--tile 2: must be >= 4" in r.output, r.output
    # the documented `--tile 16` beside an overlap of 16: the overlap becomes a quarter tile
    r = cli.invoke(app, ["enhance", str(inp), str(tmp_path / "o"), "-m", str(ckpt),
                         "--tile", "16", "--dry-run", "--params", str(params)])  # fmt: skip
    assert r.exit_code == 0, r.output
    r = cli.invoke(
        app, ["enhance", str(inp), str(tmp_path / "o"), "-m", str(ckpt), "--dry-run", *base]
    )
    assert (
        r.exit_code == 0
        and "1 to enhance" in r.output
        and "sub0/img0.png -> sub0/img0.png" in r.output
    )
    assert not (tmp_path / "o").exists()
    r = cli.invoke(
        app, ["enhance", str(src), str(tmp_path / "x.jpg"), "-m", str(ckpt), "--steps", "1", *base]
    )
    assert r.exit_code == 0, r.output
    assert read_image(tmp_path / "x.jpg").shape == (32, 32, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "in",
        "params.yaml",
        "x.jpg",
    ]  # no manifests
    # one image onto itself (the same path, spelt another way too) or onto a format that is
    # read but never written: refused before anything runs, the original untouched
    before = src.read_bytes()
    for out in (src, src.parent / ".." / src.parent.name / src.name, tmp_path / "x.gif"):
        r = cli.invoke(app, ["enhance", str(src), str(out), "-m", str(ckpt), *base])
        assert r.exit_code == 2, r.output
        why = "read but not written" if out.suffix == ".gif" else "is the input image"
        assert f"enhance.output '{out}'" in r.output and why in r.output
    assert src.read_bytes() == before and not (tmp_path / "x.gif").exists()
    # --ext that contradicts the output file named, and a folder of inputs onto a file
    r = cli.invoke(app, ["enhance", str(src), str(tmp_path / "y.png"), "-m", str(ckpt),
                         "--ext", "jpg", *base])  # fmt: skip
    assert r.exit_code == 2 and "is a .png file but --ext" in " ".join(r.output.split()), r.output
    r = cli.invoke(app, ["enhance", str(src), str(tmp_path / "y.jpeg"), "-m", str(ckpt),
                         "--ext", "jpg", "--dry-run", *base])  # fmt: skip
    assert r.exit_code == 0, r.output  # .jpeg is jpg
    r = cli.invoke(app, ["enhance", str(inp), str(tmp_path / "x.jpg"), "-m", str(ckpt), *base])
    assert r.exit_code == 2 and "is a file, but the input" in " ".join(r.output.split()), r.output
    # one image named with an extension enhance does not read: exit 2, not exit 0 'ignored'
    for name, what in (("photo.heic", "a .heic file"), ("photo", "a file without an extension")):
        (tmp_path / name).write_bytes(src.read_bytes())
        r = cli.invoke(app, ["enhance", str(tmp_path / name), str(tmp_path / "y.png"),
                             "-m", str(ckpt), *base])  # fmt: skip
        assert r.exit_code == 2 and f"{tmp_path / name}: {what} is not read" in r.output, r.output
        assert ".png" in r.output and not (tmp_path / "y.png").exists()


@pytest.mark.parametrize(
    "option, line",
    [
        (["--detail", "1.5"], "--detail 1.5: must be in [0, 1]"),
        (["--steps", "0"], "--steps 0: must be >= 1"),
        (["--samples", "0"], "--samples 0: must be >= 1"),
        (["--outscale", "-1"], "--outscale -1: must be a finite number > 0"),
        (["--suffix", "a/b"], "--suffix a/b: must be a plain name fragment (no '/', '\\' or"),
        (["--suffix", "a b/"], "--suffix 'a b/': must be a plain name fragment"),
        (["--tile", "2"], "--tile 2: must be >= 4 (input pixels per tile side"),
        (["--device", "gpu"], "--device gpu: must be one of auto, cpu, cuda, cuda:N or mps"),
    ],
)
def test_an_option_out_of_range_is_named_as_typed_in_one_short_line(tmp_path, option, line):
    """The option and the value as typed, then what is allowed: not the params key, not every
    setting given ("the params with enhance.input=..."), not what null means in a params file."""
    r = CliRunner().invoke(app, ["enhance", "a.png", "b.png", *option])
    assert r.exit_code == 2 and r.output.count("\n") == 1, r.output
    assert r.output.startswith(f"error: {line}"), r.output
    assert "params" not in r.output and "null" not in r.output and "infer." not in r.output


def test_a_folder_without_images_says_so_and_exits_0(tmp_path, ckpt, params):
    """An empty folder, or one without an image, is not an error (a scheduled job often finds
    nothing new: exit 0), but one line says that nothing was found where and what was looked
    for, so a wrong folder or extension does not pass unnoticed."""
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("x")
    for folder in ("empty", "notes"):
        for dry in ([], ["--dry-run"]):
            r = enhance_cli(tmp_path / folder, tmp_path / "out", ckpt, params, *dry)
            assert r.exit_code == 0, r.output
            said = [line for line in r.output.splitlines() if "no image files found" in line]
            assert said == [
                f"no image files found in {tmp_path / folder} (looked for .png .jpg .jpeg .webp "
                ".tif .tiff .bmp .gif, in subfolders too; enhance.extensions sets them)"
            ], r.output
    write_inputs(tmp_path / "photos", [(16, 16)])
    r = enhance_cli(tmp_path / "photos", tmp_path / "out2", ckpt, params)
    assert r.exit_code == 0 and "no image files" not in r.output, r.output


def test_detail_on_a_model_without_the_knob_is_refused_in_plain_words(tmp_path):
    """The shipped jpeg model is indi (no detail knob): refused while planning, in one line."""
    write_image(tmp_path / "a.png", smooth_image(np.random.default_rng(0), 16, 16))
    r = CliRunner().invoke(
        app, ["enhance", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "-m", "jpeg",
              "--detail", "0.5"],
    )  # fmt: skip
    assert r.exit_code == 2 and r.output.count("\n") == 1, r.output
    assert "detail=0.5 asked of an indi model, which has no detail knob" in r.output, r.output
    assert not (tmp_path / "b.png").exists()


def test_a_folder_onto_a_new_image_name_is_refused_not_made_a_folder(tmp_path, ckpt, params):
    """`enhance photos c.png`: an output named like an image file for a folder of inputs is a
    slip, refused in one line (exit 2) with nothing made; a folder of that name that is there,
    or the name with a trailing '/', is a folder. One image onto a name without a suffix is
    still a folder."""
    inp = tmp_path / "photos"
    (src,) = write_inputs(inp, [(16, 16)])
    for name in ("c.png", "c.JPEG", "c.tif"):
        r = enhance_cli(inp, tmp_path / name, ckpt, params)
        assert r.exit_code == 2 and r.output.count("\n") == 1, r.output
        said = f"enhance.output '{tmp_path / name}' names a {Path(name).suffix.lower()} image file"
        assert said in r.output and "give an output folder" in r.output, r.output
        assert not (tmp_path / name).exists()
    (tmp_path / "d.png").mkdir()  # already a folder: used as one
    assert enhance_cli(inp, tmp_path / "d.png", ckpt, params).exit_code == 0
    assert images(tmp_path / "d.png").keys() == {"sub0/img0.png"}
    r = CliRunner().invoke(app, ["enhance", str(inp), f"{tmp_path / 'e.png'}/", "-m", str(ckpt),
                                 "--params", str(params), *JOB])  # fmt: skip
    assert r.exit_code == 0 and images(tmp_path / "e.png").keys() == {"sub0/img0.png"}, r.output
    assert enhance_cli(inp, tmp_path / "f.gif", ckpt, params).exit_code == 0  # never written
    r = enhance_cli(src, tmp_path / "outdir", ckpt, params)  # one image, no suffix: a folder
    assert r.exit_code == 0 and images(tmp_path / "outdir").keys() == {"img0.png"}, r.output


def test_one_image_onto_a_folder_named_like_an_image_goes_into_it(tmp_path, ckpt, params):
    """A folder named x.png that exists is a folder for one input image too (as for a folder
    of inputs), not a file to write over (IsADirectoryError: a failed image, exit 1)."""
    (src,) = write_inputs(tmp_path / "photos", [(16, 16)])
    (tmp_path / "x.png").mkdir()
    r = enhance_cli(src, tmp_path / "x.png", ckpt, params)
    assert r.exit_code == 0, r.output
    assert images(tmp_path / "x.png").keys() == {"img0.png"}


def test_a_file_in_the_way_of_the_output_is_refused_naming_it(tmp_path, ckpt, params):
    """`enhance small.png notes.txt/out.png` with notes.txt a file: refused while planning
    (exit 2, one line naming the output and the file), not a failed image blamed on the
    input (exit 1); so for a folder of inputs, and for a file further up."""
    inp = tmp_path / "photos"
    (src,) = write_inputs(inp, [(16, 16)])
    notes = tmp_path / "notes.txt"
    notes.write_text("x")
    for i, out in ((src, "notes.txt/out.png"), (inp, "notes.txt/out"), (src, "notes.txt/a/b.png")):
        r = enhance_cli(i, tmp_path / out, ckpt, params)
        assert r.exit_code == 2 and r.output.count("\n") == 1, r.output
        assert f"error: enhance.output '{tmp_path / out}': {notes} is a file in the way" in (
            r.output
        ), r.output
    assert notes.read_text() == "x" and sorted(p.name for p in tmp_path.iterdir()) == [
        "notes.txt", "params.yaml", "photos"
    ]  # fmt: skip


def test_a_folder_onto_a_new_s3_prefix_named_like_an_image_is_refused(s3_prefix, tmp_path, ckpt,
                                                                      params):  # fmt: skip
    inp = tmp_path / "photos"
    write_inputs(inp, [(16, 16)])
    r = enhance_cli(inp, f"{s3_prefix}/c.png", ckpt, params)
    assert r.exit_code == 2 and "names a .png image file" in r.output, r.output
    assert not list(open_storage(s3_prefix).list())
    open_storage(f"{s3_prefix}/d.png").write_bytes("old.png", b"x")  # a prefix in use
    assert enhance_cli(inp, f"{s3_prefix}/d.png", ckpt, params).exit_code == 0


# ----------------------------------------------------------------------------- Real-ESRGAN's


@pytest.fixture(scope="module")
def ckpt4(tmp_path_factory) -> Path:
    return random_checkpoint(tmp_path_factory.mktemp("model4") / "sr4.safetensors", task="sr4")


def enhance_cli(inp: Path, out: Path, model: Path, params: Path, *args: str):
    """`diffenhance enhance` in CliRunner (stderr is not a terminal) with the tiny job."""
    cmd = ["enhance", str(inp), str(out), "-m", str(model), "--params", str(params), *args]
    return CliRunner().invoke(app, [*cmd, *JOB])


def test_outscale_resizes_the_x4_output_and_its_alpha_and_another_outscale_redoes(
    tmp_path, ckpt4, params
):
    """--outscale 2 on an x4 model: the x4 output resized to half its size (the alpha by the
    same filter, from the input's), nothing else; 4 changes nothing; 3 redoes every image."""
    inp = tmp_path / "in"
    rgb = smooth_image(np.random.default_rng(0), 12, 10)
    alpha = gradient(12, 10)[..., 0]
    write_image(inp / "a.png", rgb)
    write_image(inp / "rgba.png", rgb, alpha=alpha)
    x4, x2, same = tmp_path / "x4", tmp_path / "x2", tmp_path / "same"
    assert enhance_cli(inp, x4, ckpt4, params).exit_code == 0
    r = enhance_cli(inp, x2, ckpt4, params, "--outscale", "2")
    assert r.exit_code == 0, r.output
    for name in ("a.png", "rgba.png"):
        native, _ = read_image_alpha(x4 / name)
        got, got_alpha = read_image_alpha(x2 / name)
        assert native.shape == (48, 40, 3) and got.shape == (24, 20, 3)
        # the job resizes the float output; here its 8-bit file: 1/255 apart at most
        np.testing.assert_allclose(got, resize(native, size=(24, 20)), atol=1.5 / 255)
    want_alpha = resize(read_image_alpha(inp / "rgba.png")[1][..., None], size=(24, 20))
    np.testing.assert_allclose(got_alpha, want_alpha[..., 0], atol=1 / 255)
    assert records(x2)["a.png"]["output_size"] == [20, 24]
    assert enhance_cli(inp, same, ckpt4, params, "--outscale", "4").exit_code == 0
    assert images(same) == images(x4)  # the model's own scale: no resize

    r = enhance_cli(inp, x2, ckpt4, params, "--outscale", "3")
    assert "2 enhanced, 0 already done" in r.output, r.output  # not skipped as done
    assert read_image(x2 / "a.png").shape == (36, 30, 3)
    assert (
        "0 enhanced, 2 already done"
        in enhance_cli(inp, x2, ckpt4, params, "--outscale", "3").output
    )


def test_outscale_refuses_zero_and_a_result_under_one_pixel_in_one_line(tmp_path, ckpt, params):
    inp, out = tmp_path / "in", tmp_path / "out"
    write_inputs(inp, [(16, 16), (1, 40)])  # sub0/img0.png, sub1/img1.png (a 1-pixel strip)
    r = enhance_cli(inp, out, ckpt, params, "--outscale", "0")
    assert r.exit_code == 2 and r.output.count("\n") == 1, r.output
    assert "error: --outscale 0: must be a finite number > 0" in r.output
    r = enhance_cli(inp, out, ckpt, params, "--outscale", "0.4")
    assert r.exit_code == 1, r.output
    assert "error: sub1/img1.png: ValueError: --outscale 0.4 (enhance.outscale) makes this " in (
        r.output
    )
    assert "40x1 image 16x0 (width x height): under 1 px" in r.output
    assert read_image(out / "sub0/img0.png").shape == (6, 6, 3)  # round(16 * 0.4)


@pytest.mark.parametrize(
    "override, message",
    [
        ("enhance.outscale=-1", "'enhance.outscale' = -1.0 must be a finite number > 0"),
        ("enhance.outscale=.nan", "'enhance.outscale' = nan must be a finite number > 0"),
        ("enhance.suffix=a/b", "'enhance.suffix' = 'a/b' must be a plain name fragment"),
        ("enhance.suffix=a\\b", "must be a plain name fragment"),
        ("enhance.suffix=.x", "'enhance.suffix' = '.x' must be a plain name fragment"),
    ],
)
def test_outscale_and_suffix_ranges(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(None, [override])


def test_outscale_and_suffix_join_the_params_hash_only_when_set(tmp_path, ckpt, params):
    """Unset, they are left out of the params (a job's hash is the one it had before they
    existed, so its outputs are not redone); set, each value is another hash."""
    inp, out = tmp_path / "in", tmp_path / "out"
    write_inputs(inp, [(8, 8)])
    plain = plan_job(config(params, inp, out, ckpt))
    assert set(plain.params["output"]) == {"output_format", "bit_depth", "quality"}
    extras = ["enhance.outscale=2", "enhance.outscale=3", "enhance.suffix=out"]
    hashes = {plan_job(config(params, inp, out, ckpt, x)).params_hash for x in extras}
    assert len(hashes | {plain.params_hash}) == 4


def test_suffix_names_outputs_and_ext_picks_their_format(tmp_path, ckpt, params):
    inp = tmp_path / "in"
    write_inputs(inp, [(8, 8)] * 2)
    write_image(inp / "photo.jpg", smooth_image(np.random.default_rng(1), 8, 8))
    run_job(config(params, inp, tmp_path / "o1", ckpt, "enhance.suffix=out"), model=IdentityTiles())
    assert sorted(images(tmp_path / "o1")) == [
        "photo_out.jpg", "sub0/img0_out.png", "sub1/img1_out.png"
    ]  # fmt: skip
    r = enhance_cli(inp, tmp_path / "o2", ckpt, params, "--suffix", "x2", "--ext", "jpg")
    assert r.exit_code == 0, r.output
    made = images(tmp_path / "o2")
    assert sorted(made) == ["photo_x2.jpg", "sub0/img0_x2.jpg", "sub1/img1_x2.jpg"]
    assert {read_image_info(tmp_path / "o2" / k)["format"] for k in made} == {"JPEG"}
    r = enhance_cli(inp, tmp_path / "o3", ckpt, params, "--ext", "auto", "--dry-run")
    assert "photo.jpg -> photo.jpg" in r.output and "sub0/img0.png -> sub0/img0.png" in r.output
    # an output file named on the command line is used as named
    r = enhance_cli(inp / "photo.jpg", tmp_path / "named.png", ckpt, params, "--suffix", "out")
    assert r.exit_code == 0 and (tmp_path / "named.png").is_file()
    r = enhance_cli(inp, tmp_path / "o4", ckpt, params, "--suffix", "../up")
    assert r.exit_code == 2 and r.output.count("\n") == 1
    assert "error: --suffix ../up: must be a plain name fragment" in r.output
    r = enhance_cli(inp, tmp_path / "o4", ckpt, params, "--ext", "gif")
    assert r.exit_code == 2 and "'gif' is not one of" in r.output


def test_an_artifact_remover_writes_its_jpeg_inputs_as_png_unless_told(tmp_path, params):
    """-m jpeg on a .jpg: PNG by default (a JPEG output would add artifacts back), said on the
    console and recorded in the params; --ext jpg, or an output file named .jpg, writes JPEG."""
    jpeg = random_checkpoint(tmp_path / "jpeg.safetensors", task="jpeg")
    inp, out = tmp_path / "in", tmp_path / "out"
    img = smooth_image(np.random.default_rng(0), 8, 8)
    for name in ("photo.jpg", "scan.JPEG", "drawing.png", "sheet.webp"):
        write_image(inp / name, img)
    r = enhance_cli(inp, out, jpeg, params)
    assert r.exit_code == 0, r.output
    assert "2 JPEG inputs written as PNG: the model removes JPEG artifacts" in r.output
    assert sorted(images(out)) == ["drawing.png", "photo.png", "scan.png", "sheet.webp"]
    assert read_image_info(out / "photo.png")["format"] == "PNG"
    ms = [json.loads(p.read_text()) for p in (out / MANIFEST_DIR).glob("*.json")]
    assert {m["params"]["output"].get("jpeg_inputs") for m in ms} == {"png"}

    r = enhance_cli(inp, tmp_path / "jpg", jpeg, params, "--ext", "jpg")
    assert r.exit_code == 0 and "written as PNG" not in r.output
    assert read_image_info(tmp_path / "jpg/photo.jpg")["format"] == "JPEG"
    r = enhance_cli(inp / "photo.jpg", tmp_path / "x.jpg", jpeg, params)
    assert r.exit_code == 0 and "written as PNG" not in r.output
    assert read_image_info(tmp_path / "x.jpg")["format"] == "JPEG"


def test_without_a_terminal_each_finished_image_is_one_plain_line(tmp_path, ckpt, params):
    """Cron and CI logs get `[i/n] key -> output (seconds)` per image, or its error, instead
    of a progress bar (CliRunner's stderr is not a terminal)."""
    inp, out = tmp_path / "in", tmp_path / "out"
    write_inputs(inp, [(8, 8)] * 2)
    (inp / "bad.png").write_text("not a PNG")
    r = enhance_cli(inp, out, ckpt, params)
    assert r.exit_code == 1, r.output
    lines = [line for line in r.output.splitlines() if line.startswith("[")]
    assert [line[:5] for line in lines] == ["[1/3]", "[2/3]", "[3/3]"], r.output
    assert lines[0].startswith("[1/3] error: bad.png: ")
    for line, key in zip(lines[1:], ["sub0/img0.png", "sub1/img1.png"], strict=True):
        assert re.fullmatch(rf"\[\d/3\] {key} -> {re.escape(str(out))}/{key} \(\d+\.\d s\)", line)
    assert "enhance:" not in r.output and "img/s" not in r.output  # no progress bar


# ----------------------------------------------------------------------------- S3


def test_s3_input_and_output(s3_prefix, tmp_path, ckpt, params):
    local = tmp_path / "in"
    write_inputs(local, [(16, 16), (10, 22)])
    (local / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    src = open_storage(f"{s3_prefix}/in")
    for p in sorted(local.rglob("*.png")):
        src.write_bytes(p.relative_to(local).as_posix(), p.read_bytes())
    cfg = config(params, f"{s3_prefix}/in", f"{s3_prefix}/out", ckpt)
    summary = run_job(cfg)
    assert summary["enhanced"] == 2 and [f["key"] for f in summary["failures"]] == ["broken.png"]
    out = open_storage(f"{s3_prefix}/out")
    keys = sorted(o.key for o in out.list())
    assert [k for k in keys if not k.startswith("_diffenhance/")] == [
        "sub0/img0.png",
        "sub1/img1.png",
    ]
    assert SUMMARY_KEY in keys and any(k.startswith(MANIFEST_DIR) for k in keys)
    got = tmp_path / "got.png"
    out.download_file("sub1/img1.png", got)
    assert read_image(got).shape == (20, 44, 3)
    # the same run on local files gives byte-identical outputs
    run_job(config(params, local, tmp_path / "local", ckpt))
    assert got.read_bytes() == (tmp_path / "local/sub1/img1.png").read_bytes()
    again = run_job(cfg)
    assert again["enhanced"] == 0 and again["skipped_done"] == 2


def _dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    return int(proc.stdout)


def test_s3_scratch_stays_local_and_what_a_killed_run_left_is_swept(
    s3_prefix, tmp_path, ckpt, params, monkeypatch
):
    """S3 input, local output: scratch under the output's _diffenhance/tmp/; S3 output: in the
    system temp folder. Each run removes its own and sweeps those of dead processes (a kill
    -9 leaves one), never a live process's."""
    local = tmp_path / "in"
    write_inputs(local, [(8, 8), (8, 8)])
    src = open_storage(f"{s3_prefix}/in")
    for p in sorted(local.rglob("*.png")):
        src.write_bytes(p.relative_to(local).as_posix(), p.read_bytes())
    host, dead = socket.gethostname(), _dead_pid()
    systmp = tmp_path / "systmp"
    monkeypatch.setattr(tempfile, "tempdir", str(systmp))
    out = tmp_path / "out"
    stale, live, stale_sys = (
        d / f"diffenhance-enhance-{pid}-0123abcd@{host}"
        for d, pid in ((out / SCRATCH_DIR, dead), (out / SCRATCH_DIR, os.getppid()), (systmp, dead))
    )
    for d in (stale, live, stale_sys):
        d.mkdir(parents=True)
    (stale / "in").write_bytes(b"half a download")
    ident = IdentityTiles(scale=2)
    assert run_job(config(params, f"{s3_prefix}/in", out, ckpt), model=ident)["enhanced"] == 2
    assert list((out / SCRATCH_DIR).iterdir()) == [live] and stale_sys.exists()
    assert sorted(images(out)) == ["sub0/img0.png", "sub1/img1.png"]

    summary = run_job(config(params, local, f"{s3_prefix}/out", ckpt), model=ident)
    assert summary["enhanced"] == 2 and list(systmp.iterdir()) == []


HOSTILE = ["../evil.png", "/abs.png", "a\\..\\..\\b.png", "sub/../../x.png", "./dot.png"]


@pytest.mark.parametrize("where", ["s3", "local"])
def test_hostile_listed_keys_fail_and_never_write_outside_the_output(
    where, tmp_path, ckpt, params, monkeypatch, request
):
    """Keys with '..', a leading '/' or backslashes in a listing (an S3 server that stores them
    verbatim, as AWS does; SeaweedFS refuses them, so the listing is replayed) are each a named
    failure; the other images are enhanced and nothing is read or written outside the roots."""
    from datetime import UTC, datetime

    from diffenhance.storage import LocalStorage, ObjectInfo, S3Storage

    local, out = tmp_path / "in", tmp_path / "out"
    write_inputs(local, [(8, 8)])
    victim = tmp_path / "victim.png"  # an absolute key naming a real image outside
    write_image(victim, smooth_image(np.random.default_rng(3), 8, 8))
    for rel in ("evil.png", "x.png"):  # where the '..' keys would point
        (tmp_path / rel).write_bytes(victim.read_bytes())
    hostile = [*HOSTILE, str(victim)]
    cls: type = LocalStorage
    inp: str = str(local)
    if where == "s3":
        cls, inp = S3Storage, f"{request.getfixturevalue('s3_prefix')}/in"
        open_storage(inp).write_bytes("sub0/img0.png", (local / "sub0/img0.png").read_bytes())
    real_list = cls.list

    def replayed(self, prefix=""):
        yield from real_list(self, prefix)
        if prefix == "" and self.url_for() == inp:
            for k in hostile:
                yield ObjectInfo(k, victim.stat().st_size, None, None, datetime.now(UTC))

    monkeypatch.setattr(cls, "list", replayed)
    outside = {k: v for k, v in files(tmp_path).items() if not k.startswith("out/")}
    summary = run_job(config(params, inp, out, ckpt), model=IdentityTiles(scale=2))
    assert summary["enhanced"] == 1 and sorted(images(out)) == ["sub0/img0.png"]
    reasons = {f["key"]: f["reason"] for f in summary["failures"]}
    assert reasons.keys() == set(hostile)
    for k, why in reasons.items():
        assert f"unsafe key {k!r}" in why, why
    assert {k: v for k, v in files(tmp_path).items() if not k.startswith("out/")} == outside
    assert not Path("/abs.png").exists() and not (tmp_path / "b.png").exists()


def test_retried_shard_keeps_what_the_failed_attempt_recorded(tmp_path, ckpt, params):
    """A shard task that crashes after 2 images (an exception escaping the shard, as when
    storage fails) and is retried with the same arguments redoes only the other images."""
    inp, out = tmp_path / "in", tmp_path / "out"
    write_inputs(inp, [(12, 12)] * 3)
    cfg = config(params, inp, out, ckpt)
    job = plan_job(cfg)
    shard = job.shards[0]
    seen: list[str] = []

    def crash_after_two(ev):
        seen.append(ev["key"])
        if len(seen) == 2:
            raise ConnectionError("storage went away")

    with pytest.raises(ConnectionError):
        run_shard(job, shard, cfg, on_image=crash_after_two, model=IdentityTiles(scale=2))
    assert len(recorded(out)) == 2 and len(images(out)) == 2  # in the partial manifest
    manifest = run_shard(job, shard, cfg, model=IdentityTiles(scale=2))  # the retry
    assert manifest["run"]["processed"] == 1 and len(manifest["images"]) == 3
    assert not list((out / MANIFEST_DIR).glob("*.partial.json"))


def test_many_ignored_files_are_named_up_to_ten_then_counted(tmp_path, ckpt, params):
    inp, out = tmp_path / "in", tmp_path / "out"
    write_inputs(inp, [(20, 30)])
    for i in range(12):
        (inp / f"note{i:02d}.txt").write_text("hello")
    res = CliRunner().invoke(
        app,
        ["enhance", str(inp), str(out), "--model", str(ckpt), "--params", str(params), *JOB],
    )
    assert res.exit_code == 0, res.output
    named = [line for line in res.output.splitlines() if line.startswith("ignored note")]
    assert len(named) == 10 and all(": " in line for line in named)  # the name, then why
    assert "... and 2 more ignored" in res.output


@pytest.mark.parametrize(
    "params_text, override, fix",
    [
        ("{}", "enhance.dask_address=tcp://127.0.0.1:8786", "drop enhance.dask_address=tcp://"),
        ("{}", "enhance.workers=4", "(drop enhance.workers=4)"),
        ("enhance: {dask_address: local}", None, "set enhance.dask_address: null in {params}"),
    ],
)
def test_cli_refuses_the_flows_scale_out_settings(tmp_path, params_text, override, fix):
    """The CLI restores in its own process: a Dask address or a worker count is the flow's and
    is refused in one line rather than silently ignored, with the advice that fits where it
    was set (an override to drop, or the params file)."""
    params = tmp_path / "p.yaml"
    params.write_text(params_text + "\n")
    cmd = ["enhance", str(tmp_path), str(tmp_path / "out"), "--params", str(params)]
    res = CliRunner().invoke(app, cmd + ([override] if override else []))
    assert res.exit_code == 2, res.output
    assert res.stderr.count("\n") == 1 and "python -m flows.enhance" in res.stderr
    assert fix.format(params=params) in res.stderr, res.stderr
    if override:  # nothing to set in a params file that has it null already
        assert "in the params file" not in res.stderr and "null" not in res.stderr


def test_a_tile_with_no_room_for_its_overlap_is_refused_before_any_work(tmp_path):
    """The shipped jpeg model works on 8 px steps: `--tile 12` rounds down to one step and
    its derived overlap (3) up to 8, so tiles could not cross-fade. Refused while planning, in
    one line (exit 2) that says what tile works, not as a crashed shard (exit 1)."""
    write_image(tmp_path / "small.png", smooth_image(np.random.default_rng(0), 24, 24))
    res = CliRunner().invoke(
        app, ["enhance", str(tmp_path / "small.png"), str(tmp_path / "out.png"), "-m", "jpeg",
              "--tile", "12"],
    )  # fmt: skip
    assert res.exit_code == 2, res.output
    assert "infer.tile=12 rounds down to 8" in res.output and "use infer.tile >= 16" in res.output
    assert "shard" not in res.output and not (tmp_path / "out.png").exists()
    ok = CliRunner().invoke(
        app, ["enhance", str(tmp_path / "small.png"), str(tmp_path / "out.png"), "-m", "jpeg",
              "--tile", "16"],
    )  # fmt: skip
    assert ok.exit_code == 0, ok.output
