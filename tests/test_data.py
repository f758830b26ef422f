"""diffenhance.data: bundled samples, folder scanning, DIV2K download/extract, crop preparation.

The DIV2K tests run against a local HTTP server on 127.0.0.1 (Range support, an optional
dropped connection); nothing touches the real network.
"""

from __future__ import annotations

import hashlib
import http.server
import io as _io
import logging
import os
import re
import socket
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from diffenhance.config import DataConfig
from diffenhance.data import div2k, folder, prepare, samples
from diffenhance.io import read_image
from tests.test_flow_errors import run_module


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _png_bytes(w: int, h: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = _io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _save(path: Path, w: int, h: int, seed: int, fmt: str) -> bytes:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path, format=fmt)
    return path.read_bytes()


# ------------------------------------------------------------------------------------ samples
def test_materialize_samples_split_and_idempotence(tmp_path: Path) -> None:
    paths = samples.materialize_samples(tmp_path)
    train = sorted(p.stem for p in (tmp_path / "train").glob("*.png"))
    val = sorted(p.stem for p in (tmp_path / "val").glob("*.png"))
    assert val == ["chelsea", "rocket"] == sorted(samples.VALIDATION)
    assert train == sorted(samples.TRAIN) and len(train) == 7
    assert {"motorcycle_left", "motorcycle_right"} <= set(train)
    assert len(paths) == 9 and all(samples.SAMPLE_SPLIT[p.stem] == p.parent.name for p in paths)
    for p in paths:
        img = read_image(p)
        assert img.ndim == 3 and img.shape[2] == 3 and img.dtype == np.float32
    # JPEG sources are stored losslessly: same pixels as decoding the original JPEG.
    src = samples.sample_source_dir() / "rocket.jpg"
    np.testing.assert_array_equal(read_image(tmp_path / "val" / "rocket.png"), read_image(src))
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in paths}
    assert samples.materialize_samples(tmp_path) == paths
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in paths} == before


# ------------------------------------------------------------------------------------- folder
def test_scan_folder_filters_dedupes_and_reports(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    good1 = _save(root / "a" / "img1.PNG", 80, 72, 1, "PNG")
    _save(root / "b" / "c" / "img2.jpg", 96, 64, 2, "JPEG")
    _save(root / "img3.webp", 70, 90, 3, "WEBP")
    (root / "z_copy.png").write_bytes(good1)  # duplicate of a/img1.PNG, sorts after it
    (root / "corrupt.png").write_bytes(_png_bytes(120, 120, 4)[:900])  # truncated
    (root / "x.jpg").write_text("this is not a JPEG\n")
    (root / "empty.png").write_bytes(b"")
    _save(root / "small.png", 16, 40, 5, "PNG")
    _save(root / ".hidden.png", 80, 80, 6, "PNG")
    _save(root / ".cache" / "h.png", 80, 80, 7, "PNG")
    (root / "notes.txt").write_text("ignored\n")

    res = folder.scan_folder(root, min_size=32)
    rel = [p.path.relative_to(root).as_posix() for p in res.images]
    assert rel == ["a/img1.PNG", "b/c/img2.jpg", "img3.webp"]
    assert [(i.width, i.height) for i in res.images] == [(80, 72), (96, 64), (70, 90)]
    assert res.images[0].sha256 == _sha(good1)
    reasons = {s.path.relative_to(root).as_posix(): s.reason for s in res.skipped}
    assert sorted(reasons) == ["corrupt.png", "empty.png", "small.png", "x.jpg", "z_copy.png"]
    assert re.search("truncat|corrupt", reasons["corrupt.png"])
    assert "empty" in reasons["empty.png"]
    assert "too small" in reasons["small.png"] and "16x40" in reasons["small.png"]
    assert "not a recognised image" in reasons["x.jpg"]
    assert "duplicate" in reasons["z_copy.png"] and "a/img1.PNG" in reasons["z_copy.png"]

    report = folder.write_skip_report(res, tmp_path / "skipped.csv")
    df = pd.read_csv(report)
    assert list(df.columns) == ["path", "reason"] and len(df) == 5


def test_scan_folder_max_pixels_and_missing_root(tmp_path: Path) -> None:
    _save(tmp_path / "big.png", 100, 100, 0, "PNG")
    res = folder.scan_folder(tmp_path, max_pixels=5000, min_size=8)
    assert not res.images and "over the limit" in res.skipped[0].reason
    with pytest.raises(NotADirectoryError):
        folder.scan_folder(tmp_path / "nope")


def test_scan_folder_follows_linked_folders_and_reports_broken_links(tmp_path: Path) -> None:
    """A dataset linked in as a folder is scanned (os.walk skipped it); a link loop is not
    followed (the scan ends); a link whose target is gone is listed as skipped, with why."""
    root = tmp_path / "photos"
    _save(root / "a.png", 40, 40, 1, "PNG")
    _save(tmp_path / "elsewhere" / "b.png", 40, 40, 2, "PNG")
    (root / "linked").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (root / "loop").symlink_to(root, target_is_directory=True)
    (root / "gone.png").symlink_to(tmp_path / "deleted.png")

    res = folder.scan_folder(root, min_size=8)
    assert [i.path.relative_to(root).as_posix() for i in res.images] == ["a.png", "linked/b.png"]
    assert [(s.path.name, s.reason) for s in res.skipped] == [
        ("gone.png", f"broken symbolic link (to {tmp_path / 'deleted.png'})")
    ]
    assert folder.iter_image_files(root) == [root / "a.png", root / "linked" / "b.png"]


def test_a_fifo_named_like_an_image_is_a_skipped_row_and_never_read(tmp_path: Path) -> None:
    """A FIFO called photo.png (or a socket, a device) was dropped without a word: now it is a
    row of skipped.csv saying what it is, and the scan never opens it (a read would block)."""
    root = tmp_path / "photos"
    _save(root / "a.png", 72, 70, 1, "PNG")
    os.mkfifo(root / "photo.png")
    os.mkfifo(root / "notes.txt")  # not an image name: ignored, as any other such file
    cfg = DataConfig(
        source="folder", folder=str(root), prepared_dir=str(tmp_path / "prep"), min_size=32
    )
    assert [s.path for s in prepare.list_sources(cfg)] == [root / "a.png"]
    skipped = pd.read_csv(tmp_path / "prep" / "skipped.csv")
    assert skipped.to_dict("list") == {
        "path": [(root / "photo.png").as_posix()],
        "reason": ["not a regular file"],
    }


def test_a_subfolder_that_cannot_be_listed_is_a_dataset_error(tmp_path: Path) -> None:
    """An unreadable subfolder of data.folder stops the scan naming it, as a dataset error
    (exit 2: fix the folder), not as failed storage (exit 1). Root reads every folder, so the
    scan runs as nobody (setpriv) in a world-readable temp folder."""
    import shutil
    import subprocess
    import sys
    import tempfile

    from diffenhance.exitcodes import user_error_code

    assert user_error_code(folder.UnreadableFolderError("x")) == 2
    base = Path(tempfile.mkdtemp(prefix="unreadable-"))
    locked = base / "photos" / "locked"
    try:
        base.chmod(0o755)
        _save(base / "photos" / "a.png", 40, 40, 1, "PNG")
        _save(locked / "b.png", 40, 40, 2, "PNG")
        locked.chmod(0)
        code = (
            "import sys; from diffenhance.data.folder import scan_folder; scan_folder(sys.argv[1])"
        )
        if os.geteuid() == 0 and shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: every folder is readable")
        who = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
        res = subprocess.run(
            [*(who if os.geteuid() == 0 else []), sys.executable, "-c", code, str(base / "photos")],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert res.returncode == 1 and "UnreadableFolderError" in res.stderr, res.stderr[-2000:]
        assert f"cannot list the folder {locked}: Permission denied" in res.stderr
    finally:
        locked.chmod(0o755)
        shutil.rmtree(base, ignore_errors=True)


def test_split_for_hash() -> None:
    assert folder.split_for_hash("0" * 64, 0.2) == "val"
    assert folder.split_for_hash("f" * 64, 0.2) == "train"
    assert folder.split_for_hash("33333333" + "0" * 56, 0.2) == "val"  # 0.19999...
    assert folder.split_for_hash("33333334" + "0" * 56, 0.2) == "train"
    assert folder.split_for_hash("0" * 64, 0.0) == "train"


# -------------------------------------------------------------------------------------- DIV2K
@dataclass
class _Server:
    url: str
    files: dict[str, bytes]
    requests: list[tuple[str, str | None]] = field(default_factory=list)
    drop_first: set[str] = field(default_factory=set)  # names whose first GET is cut short
    ignore_range: bool = False


def _make_handler(state: _Server) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:  # keep pytest output clean
            pass

        def do_GET(self) -> None:  # noqa: N802 - http.server API
            name = self.path.lstrip("/")
            rng = self.headers.get("Range")
            state.requests.append((name, rng))
            body = state.files.get(name)
            if body is None:
                self.send_error(404)
                return
            start = 0
            m = re.fullmatch(r"bytes=(\d+)-", rng or "")
            if m and not state.ignore_range:
                start = int(m.group(1))
                if start >= len(body):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(body)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            else:
                self.send_response(200)
            payload = body[start:]
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if name in state.drop_first:  # full Content-Length announced, half sent, hang up
                state.drop_first.discard(name)
                self.wfile.write(payload[: len(payload) // 2])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(payload)

    return Handler


@pytest.fixture
def server() -> Iterator[_Server]:
    state = _Server(url="", files={})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(state))
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}/"
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()


def _zip(members: dict[str, bytes]) -> bytes:
    buf = _io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _div2k_archives() -> dict[str, bytes]:
    train = {f"DIV2K_train_HR/{i:04d}.png": _png_bytes(96, 80, i) for i in (1, 2)}
    return {
        "DIV2K_train_HR.zip": _zip(train),
        "DIV2K_valid_HR.zip": _zip({"DIV2K_valid_HR/0801.png": _png_bytes(80, 72, 801)}),
    }


def test_download_resumes_after_dropped_connection(server: _Server, tmp_path: Path) -> None:
    data = _div2k_archives()["DIV2K_train_HR.zip"]
    server.files["a.zip"] = data
    server.drop_first.add("a.zip")
    dest = div2k.download(
        server.url + "a.zip",
        tmp_path / "a.zip",
        expected_sha256=_sha(data),
        expected_size=len(data),
        backoff=0,
        progress=False,
    )
    assert _sha(dest.read_bytes()) == _sha(data)
    assert not (tmp_path / "a.zip.part").exists()
    assert server.requests == [("a.zip", None), ("a.zip", f"bytes={len(data) // 2}-")]


def test_download_restarts_when_server_ignores_range(server: _Server, tmp_path: Path) -> None:
    data = b"0123456789" * 1000
    server.files["f.bin"] = data
    server.ignore_range = True
    (tmp_path / "f.bin.part").write_bytes(b"garbage")
    dest = div2k.download(server.url + "f.bin", tmp_path / "f.bin", progress=False, backoff=0)
    assert dest.read_bytes() == data
    assert server.requests == [("f.bin", "bytes=7-")]


def test_download_bad_checksum_and_http_error(server: _Server, tmp_path: Path) -> None:
    server.files["f.bin"] = b"payload" * 100
    wrong = "ab" * 32
    with pytest.raises(div2k.DownloadError) as e:
        div2k.download(
            server.url + "f.bin",
            tmp_path / "f.bin",
            expected_sha256=wrong,
            progress=False,
            backoff=0,
        )
    msg = str(e.value)
    assert "f.bin" in msg and wrong in msg and _sha(server.files["f.bin"]) in msg
    assert not (tmp_path / "f.bin").exists() and not (tmp_path / "f.bin.part").exists()
    with pytest.raises(div2k.DownloadError, match="404"):
        div2k.download(server.url + "missing.zip", tmp_path / "m.zip", progress=False, backoff=0)
    # a non-zip passed through the zip validator is rejected and removed
    with pytest.raises(div2k.DownloadError, match="not a valid zip"):
        div2k.download(
            server.url + "f.bin",
            tmp_path / "g.zip",
            progress=False,
            backoff=0,
            validate=div2k.check_zip,
        )
    assert not (tmp_path / "g.zip").exists() and not (tmp_path / "g.zip.part").exists()


@pytest.mark.parametrize("member", ["../evil.png", "/abs/evil.png", "a/../../evil.png"])
def test_extract_refuses_unsafe_members(tmp_path: Path, member: str) -> None:
    zpath = tmp_path / "bad.zip"
    zpath.write_bytes(_zip({"ok/0001.png": b"x", member: b"evil"}))
    out = tmp_path / "out" / "inner"
    with pytest.raises(div2k.ArchiveError, match="unsafe"):
        div2k.extract(zpath, out)
    assert not list(tmp_path.rglob("evil.png"))
    assert not (out / "ok").exists() and not (out / ".bad.zip.complete").exists()


def test_extract_is_idempotent_and_merges(tmp_path: Path) -> None:
    z2 = tmp_path / "x2.zip"
    z4 = tmp_path / "x4.zip"
    z2.write_bytes(_zip({"LR/X2/0001x2.png": b"2"}))
    z4.write_bytes(_zip({"LR/X4/0001x4.png": b"4"}))
    out = tmp_path / "out"
    div2k.extract(z2, out)
    div2k.extract(z4, out)
    assert (out / "LR/X2/0001x2.png").read_bytes() == b"2"
    assert (out / "LR/X4/0001x4.png").read_bytes() == b"4"
    (out / "LR/X2/0001x2.png").write_bytes(b"kept")  # marker present: nothing re-extracted
    div2k.extract(z2, out)
    assert (out / "LR/X2/0001x2.png").read_bytes() == b"kept"
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == [
        ".x2.zip.complete",
        ".x4.zip.complete",
    ]


def test_fetch_div2k_from_local_server(server: _Server, tmp_path: Path) -> None:
    server.files.update(_div2k_archives())
    server.drop_first.add("DIV2K_valid_HR.zip")
    cfg = DataConfig(source="div2k", raw_dir=str(tmp_path / "raw"), div2k_url="http://invalid/")
    dirs = div2k.fetch_div2k(cfg, base_url=server.url, progress=False, backoff=0)
    root = tmp_path / "raw" / "div2k"
    assert dirs == {"train": root / "DIV2K_train_HR", "val": root / "DIV2K_valid_HR"}
    assert sorted(p.name for p in dirs["train"].iterdir()) == ["0001.png", "0002.png"]
    assert sorted(p.name for p in dirs["val"].iterdir()) == ["0801.png"]
    assert read_image(dirs["val"] / "0801.png").shape == (72, 80, 3)
    n = len(server.requests)
    assert ("DIV2K_valid_HR.zip", None) in server.requests and n == 3  # one resumed request
    assert div2k.fetch_div2k(cfg, base_url=server.url, progress=False) == dirs
    assert len(server.requests) == n  # extracted already: no request at all

    # the whole prepare stage on the tiny DIV2K
    cfg2 = DataConfig(
        source="div2k",
        raw_dir=str(tmp_path / "raw"),
        prepared_dir=str(tmp_path / "prep"),
        crop_size=64,
        crop_step=64,
        min_size=32,
    )
    df = prepare.prepare_dataset(cfg2, base_url_override=server.url)
    assert sorted(df["split"].unique()) == ["train", "val"]
    assert set(df.loc[df.split == "val", "source_path"].map(lambda s: Path(s).name)) == {"0801.png"}
    assert len(df) == 2 * 4 + 4  # 96x80 -> 2x2 boxes (flush-with-border), 80x72 -> 2x2


def test_fetch_div2k_never_keeps_an_archive_it_cannot_use(
    server: _Server, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A mirror's archive with another layout (images at the top, not under DIV2K_valid_HR/)
    or a member escaping with '..' is refused before anything is extracted, and not kept as if
    finished: once the mirror is fixed, a rerun downloads it again. A truncated archive left in
    archives/ (an interrupted `wget`) is deleted and downloaded again, not a bare BadZipFile."""
    good = _div2k_archives()
    cfg = DataConfig(source="div2k", raw_dir=str(tmp_path / "raw"))
    root = tmp_path / "raw" / "div2k"
    bad_archives = {
        "is not under DIV2K_valid_HR/": _zip({"0801.png": _png_bytes(80, 72, 801)}),
        "unsafe member path": _zip({"DIV2K_valid_HR/0801.png": b"x", "../../evil.txt": b"e"}),
    }
    for why, bad in bad_archives.items():
        server.files.update({**good, "DIV2K_valid_HR.zip": bad})
        with pytest.raises(div2k.DownloadError, match=f"DIV2K_valid_HR.zip.*{why}"):
            div2k.fetch_div2k(cfg, base_url=server.url, progress=False, backoff=0)
        assert not (root / "archives/DIV2K_valid_HR.zip").exists()
        assert not (root / "0801.png").exists() and not list(tmp_path.rglob("evil.txt"))
        assert not (root / ".DIV2K_valid_HR.zip.complete").exists()
    server.files.update(good)
    dirs = div2k.fetch_div2k(cfg, base_url=server.url, progress=False, backoff=0)
    assert sorted(p.name for p in dirs["val"].iterdir()) == ["0801.png"]

    cfg2 = DataConfig(source="div2k", raw_dir=str(tmp_path / "raw2"))
    kept = tmp_path / "raw2/div2k/archives/DIV2K_train_HR.zip"
    kept.parent.mkdir(parents=True)
    kept.write_bytes(good["DIV2K_train_HR.zip"][:100])
    with caplog.at_level(logging.WARNING, logger="diffenhance.data.div2k"):
        dirs = div2k.fetch_div2k(cfg2, base_url=server.url, progress=False, backoff=0)
    assert (
        f"{kept}: not a valid zip archive" in caplog.text and "downloading it again" in caplog.text
    )
    assert kept.read_bytes() == good["DIV2K_train_HR.zip"]
    assert sorted(p.name for p in dirs["train"].iterdir()) == ["0001.png", "0002.png"]


def test_archive_folder_names_the_official_layout(tmp_path: Path) -> None:
    assert div2k.archive_folder("DIV2K_train_HR.zip") == "DIV2K_train_HR"
    assert div2k.archive_folder("DIV2K_valid_LR_bicubic_X4.zip") == "DIV2K_valid_LR_bicubic/X4"
    # an LR archive may list its parent folder's own entry: that is DIV2K's layout too
    ok = tmp_path / "DIV2K_valid_LR_bicubic_X4.zip"
    ok.write_bytes(_zip({"DIV2K_valid_LR_bicubic/": b"", "DIV2K_valid_LR_bicubic/X4/": b"",
                         "DIV2K_valid_LR_bicubic/X4/0801x4.png": b"x"}))  # fmt: skip
    div2k.check_div2k_zip(ok)
    bad = tmp_path / "DIV2K_valid_LR_bicubic_X2.zip"  # an X4 set named X2
    bad.write_bytes(_zip({"DIV2K_valid_LR_bicubic/X4/0801x4.png": b"x"}))
    with pytest.raises(div2k.ArchiveError, match="not under DIV2K_valid_LR_bicubic/X2/"):
        div2k.check_div2k_zip(bad)


def test_fetch_div2k_rejects_bad_lr_scale(tmp_path: Path) -> None:
    cfg = DataConfig(source="div2k", raw_dir=str(tmp_path), div2k_lr_scales=(5,))
    with pytest.raises(ValueError, match="LR"):
        div2k.fetch_div2k(cfg, base_url="http://127.0.0.1:9/")


# ------------------------------------------------------------------------------------ prepare
def test_crop_boxes_golden() -> None:
    boxes = prepare.crop_boxes(300, 451, 128, 64)
    tops = sorted({b[0] for b in boxes})
    lefts = sorted({b[1] for b in boxes})
    assert tops == [0, 64, 128, 172]  # 172 = 300 - 128: flush with the bottom border
    assert lefts == [0, 64, 128, 192, 256, 320, 323]  # 323 = 451 - 128
    assert len(boxes) == 28 and all(b[2:] == (128, 128) for b in boxes)
    assert boxes[:2] == [(0, 0, 128, 128), (0, 64, 128, 128)] and boxes[-1] == (172, 323, 128, 128)
    assert prepare.crop_boxes(256, 256, 128, 64) == [
        (t, left, 128, 128) for t in (0, 64, 128) for left in (0, 64, 128)
    ]  # exact fit: no extra position
    assert prepare.crop_boxes(300, 451, 128, 64, thresh_size=50)[-1] == (128, 320, 128, 128)
    assert prepare.crop_boxes(100, 90, 128, 64) == [(0, 0, 100, 90)]  # whole small image
    assert prepare.crop_boxes(100, 300, 128, 128) == [
        (0, 0, 100, 128),
        (0, 128, 100, 128),
        (0, 172, 100, 128),
    ]


def _files(d: Path) -> dict[str, str]:
    return {
        p.relative_to(d).as_posix(): _sha(p.read_bytes())
        for p in sorted(d.rglob("*.png"))
        if not p.name.startswith(".")
    }


def test_prepare_dataset_samples_deterministic(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # relative raw/prepared dirs, as in params.yaml
    cfg = DataConfig(raw_dir="raw", prepared_dir="prep", crop_size=256, crop_step=256)
    df = prepare.prepare_dataset(cfg)
    prep = Path("prep")
    assert list(df.columns) == list(prepare.MANIFEST_COLUMNS)
    assert set(df["split"]) == {"train", "val"}
    val_src = {Path(s).stem for s in df.loc[df.split == "val", "source_path"]}
    assert val_src == {"chelsea", "rocket"}
    assert df["source_path"].str.startswith("raw/samples/").all()
    assert df["crop_path"].is_monotonic_increasing
    assert pd.read_csv(prep / "skipped.csv").empty
    for r in df.itertuples():
        assert r.crop_path.startswith(f"{r.split}/")
        assert _sha((prep / r.crop_path).read_bytes()) == r.crop_sha256
    for r in df.sample(n=8, random_state=0).itertuples():
        crop = read_image(prep / r.crop_path)
        assert crop.shape == (r.height, r.width, 3)
        src = read_image(r.source_path)[r.top : r.top + r.height, r.left : r.left + r.width]
        np.testing.assert_allclose(crop, src, atol=0.5 / 255)
    # every source fully covered: boxes reach the bottom/right borders
    for path, g in df.groupby("source_path"):
        h, w = read_image(path).shape[:2]
        assert (g.top + g.height).max() == h and (g.left + g.width).max() == w
    chelsea = df[df.source_path.str.endswith("chelsea.png")]  # 451x300 at 256/256
    assert sorted(zip(chelsea.top, chelsea.left, strict=True)) == [
        (0, 0),
        (0, 195),
        (44, 0),
        (44, 195),
    ]

    manifest1 = (prep / "manifest.csv").read_bytes()
    files1 = _files(prep)
    assert set(files1) == set(df["crop_path"])
    df2 = prepare.prepare_dataset(cfg)
    assert (prep / "manifest.csv").read_bytes() == manifest1
    assert _files(prep) == files1
    pd.testing.assert_frame_equal(df, df2)
    assert pd.read_csv(prep / "manifest.csv", dtype=str).equals(df.astype(str))

    # a new crop size leaves no stale crops behind
    df3 = prepare.prepare_dataset(
        DataConfig(raw_dir="raw", prepared_dir="prep", crop_size=512, crop_step=512)
    )
    assert set(_files(prep)) == set(df3["crop_path"]) and len(df3) < len(df)


def test_prepare_folder_source_names_and_splits(tmp_path: Path) -> None:
    root = tmp_path / "imgs"
    for i, sub in enumerate(["a", "b", "c", "d"]):
        _save(root / sub / "x.png", 72, 70, 10 + i, "PNG")  # same stem four times
    _save(root / "tiny.png", 8, 8, 99, "PNG")
    cfg = DataConfig(
        source="folder",
        folder=str(root),
        raw_dir=str(tmp_path / "raw"),
        prepared_dir=str(tmp_path / "prep"),
        crop_size=64,
        crop_step=64,
        val_fraction=0.2,
    )
    sources = prepare.list_sources(cfg)
    assert len(sources) == 4 and len({s.name for s in sources}) == 4
    assert all(re.fullmatch(r"x-[0-9a-f]{8}", s.name) for s in sources)
    assert {s.split for s in sources} == {"train", "val"}  # at least one of each
    for s in sources:
        want = folder.split_for_hash(s.sha256, 0.2)
        assert s.split == want or sum(t.split == "val" for t in sources) == 1
    skipped = pd.read_csv(tmp_path / "prep" / "skipped.csv")
    assert list(skipped.path.map(lambda p: Path(p).name)) == ["tiny.png"]
    rows = [prepare.prepare_one(s, cfg) for s in reversed(sources)]  # any order, like a map
    out = prepare.write_manifest(rows, cfg)
    df = pd.read_csv(out)
    assert len(df) == 4 * 4 and df["crop_path"].is_monotonic_increasing


def test_a_folder_holding_the_pipeline_does_not_read_its_outputs_back(
    tmp_path: Path, monkeypatch
) -> None:
    """data.folder='.' with the default data/prepared and data/raw inside it, and the degraded
    pairs there too: a second run reads the same 3 sources, not its own crops (val crops
    hashed into train: leakage); each output folder is one skipped row saying why."""
    monkeypatch.chdir(tmp_path)
    for i in range(3):
        _save(tmp_path / "photos" / f"p{i}.png", 72, 70, 20 + i, "PNG")
    _save(tmp_path / "data" / "raw" / "samples" / "train" / "s.png", 72, 70, 30, "PNG")
    degraded = tmp_path / "data" / "degraded"  # degrade.out_dir, after a `degrade` run
    _save(degraded / "sr4" / "hr" / "p0_s000.png", 64, 64, 31, "PNG")
    (degraded / "params.resolved.yaml").write_text("degrade: {}\n")
    cfg = DataConfig(source="folder", folder=".", crop_size=64, crop_step=64, min_size=32)

    first = prepare.prepare_dataset(cfg)
    assert len(first) == 3 * 4 and first["source_path"].nunique() == 3
    second = prepare.prepare_dataset(cfg)
    pd.testing.assert_frame_equal(second, first)
    skipped = pd.read_csv(tmp_path / "data" / "prepared" / "skipped.csv")
    assert skipped.to_dict("list") == {
        "path": ["data/degraded", "data/prepared", "data/raw"],
        "reason": [
            "pipeline output left out: a stage's output (holds params.resolved.yaml)",
            "pipeline output left out: data.prepared_dir",
            "pipeline output left out: data.raw_dir",
        ],
    }


def test_a_stopped_prepare_leaves_no_manifest_describing_new_crops(
    tmp_path: Path, monkeypatch
) -> None:
    """Crops are rewritten in place: a run with new params stopped at the 2nd image left the old
    manifest over new crops. Now the manifest is gone until the run finishes, and loading says
    to rerun `prepare`."""
    root = tmp_path / "imgs"
    for i in range(3):
        _save(root / f"p{i}.png", 72, 70, 40 + i, "PNG")
    cfg = DataConfig(
        source="folder", folder=str(root), prepared_dir=str(tmp_path / "prep"),
        crop_size=64, crop_step=64, min_size=32,
    )  # fmt: skip
    assert len(prepare.prepare_dataset(cfg)) == 12
    calls = []
    real = prepare.prepare_one

    def stopped_at_the_second(src, c):
        calls.append(src)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(src, c)

    monkeypatch.setattr(prepare, "prepare_one", stopped_at_the_second)
    with pytest.raises(KeyboardInterrupt):
        prepare.prepare_dataset(replace(cfg, crop_size=32, crop_step=32))
    assert len(calls) == 2
    with pytest.raises(FileNotFoundError, match=r"manifest\.csv: .*stopped.*dvc repro prepare"):
        prepare.load_manifest(tmp_path / "prep")


def test_prepare_logs_progress_per_batch_not_per_image(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """One INFO line per image buried everything else (900 on DIV2K): now a progress line per
    batch (a tenth of the images, at least BATCH_MIN), each image at DEBUG, and one summary."""
    root = tmp_path / "imgs"
    for i in range(12):
        _save(root / f"p{i:02d}.png", 72, 70, 50 + i, "PNG")  # 4 crops of 64 each
    _save(root / "tiny.png", 8, 8, 99, "PNG")
    cfg = DataConfig(
        source="folder", folder=str(root), prepared_dir=str(tmp_path / "prep"),
        crop_size=64, crop_step=64, min_size=32,
    )  # fmt: skip
    with caplog.at_level(logging.DEBUG, logger="diffenhance.data"):
        df = prepare.prepare_dataset(cfg)
    lines = [r for r in caplog.records if r.name == "diffenhance.data.prepare"]
    info = [r.getMessage() for r in lines if r.levelno == logging.INFO]
    debug = [r.getMessage() for r in lines if r.levelno == logging.DEBUG]
    assert len(debug) == 12 and all(m.endswith(" -> 4 crops") for m in debug)
    assert info[:-1] == [
        "prepare: 5/12 images cropped (41%)",
        "prepare: 10/12 images cropped (83%)",
        "prepare: 12/12 images cropped (100%)",
    ]
    train, val = (int((df.split == s).sum()) for s in ("train", "val"))
    assert train + val == 48 and val > 0
    assert info[-1] == (
        f"prepare: 12 images -> 48 crops ({train} train, {val} val), 1 file(s) skipped -> "
        f"{tmp_path / 'prep' / 'manifest.csv'}"
    )


def test_prepare_flow_logs_a_task_per_batch(prefect_api, tmp_path: Path) -> None:
    """The stage as `dvc repro` runs it: Prefect logs a line per finished task, so a task per
    image was a line per image; now a task per batch, each followed by a progress line."""
    for i in range(12):
        _save(tmp_path / "imgs" / f"p{i:02d}.png", 72, 70, 50 + i, "PNG")
    (tmp_path / "params.yaml").write_text("{}\n")
    res = run_module(
        "flows.prepare", "data.source=folder", f"data.folder={tmp_path / 'imgs'}",
        f"data.prepared_dir={tmp_path / 'prep'}", "data.crop_size=64", "data.crop_step=64",
        "data.min_size=32", cwd=tmp_path,
    )  # fmt: skip
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    tasks = [line for line in out.splitlines() if "Task run 'prepare-" in line]
    assert len(tasks) == 3 and all("Completed" in line for line in tasks), out
    assert [f"prepare: {n}/12 images cropped" in out for n in (5, 10, 12)] == [True] * 3, out
    assert out.count("prepare: 12 images -> 48 crops (") == 1, out


def test_list_sources_no_images(tmp_path: Path) -> None:
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "bad.png").write_bytes(b"nope")
    cfg = DataConfig(
        source="folder", folder=str(tmp_path / "imgs"), prepared_dir=str(tmp_path / "prep")
    )
    with pytest.raises(prepare.NoImagesError, match="no usable image"):
        prepare.list_sources(cfg)
    assert (tmp_path / "prep" / "skipped.csv").is_file()


def test_package_reexports() -> None:
    import diffenhance.data as d

    assert d.prepare_dataset is prepare.prepare_dataset and d.SAMPLE_SPLIT["rocket"] == "val"
    assert os.path.basename(d.__file__) == "__init__.py"


def test_one_manifest_loader_and_one_file_hash(tmp_path: Path) -> None:
    """load_manifest (what train and degrade read the manifest with) keeps hashes as text, even
    all-digit ones, and says which stage to run; the package's file_sha256 is io's."""
    import diffenhance.data as d
    from diffenhance import io

    with pytest.raises(FileNotFoundError, match=r"dvc repro prepare"):
        prepare.load_manifest(tmp_path)
    (tmp_path / prepare.MANIFEST).write_text("crop_path,split,crop_sha256\nval/a.png,val,0123\n")
    assert prepare.load_manifest(tmp_path)["crop_sha256"].tolist() == ["0123"]
    assert d.file_sha256 is folder.file_sha256 is io.file_sha256


def test_unreachable_download_server_exits_1_not_2(tmp_path: Path) -> None:
    """Retries exhausted on a server that is down is nothing a user fixes in the config (exit
    1, as failed storage; a rerun resumes), while a 404 is (exit 2); both stay DownloadErrors."""
    from diffenhance.exitcodes import user_error_code

    with socket.socket() as s:  # a loopback port nothing listens on
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/DIV2K_valid_HR.zip"
    with pytest.raises(div2k.DownloadUnavailable, match="giving up after 1 retries") as e:
        div2k.download(url, tmp_path / "v.zip", retries=1, progress=False, backoff=0)
    assert isinstance(e.value, div2k.DownloadError) and user_error_code(e.value) == 1
    assert user_error_code(div2k.DownloadError(f"{url}: HTTP 404 Not Found")) == 2


def test_a_host_that_does_not_resolve_is_a_config_error(tmp_path: Path, monkeypatch) -> None:
    """A typo in data.div2k_url's host fails its name lookup on every retry: exit 2 (fix the
    URL), not 1 (retry later). The lookup failure is raised in place of the network's."""
    import urllib.error

    def no_such_host(*_args: object, **_kw: object) -> None:
        raise urllib.error.URLError(socket.gaierror(-2, "Name or service not known"))

    monkeypatch.setattr(div2k, "_fetch_once", no_such_host)
    url = "http://data.vision.ee.ethz.ch.typo/DIV2K_valid_HR.zip"
    with pytest.raises(div2k.DownloadError, match="giving up after 1 retries") as e:
        div2k.download(url, tmp_path / "v.zip", retries=1, progress=False, backoff=0)
    assert not isinstance(e.value, div2k.DownloadUnavailable)


def test_dataset_errors_are_data_errors_with_exit_code_2(tmp_path: Path) -> None:
    """Every dataset error a user fixes is a DataError, which USER_ERRORS maps to exit 2 (one
    `error:` line, no traceback), and keeps the builtin class callers catch."""
    import diffenhance.data as d
    from diffenhance.data.pairs import NoValidationCropsError, StalePairsError
    from diffenhance.exitcodes import user_error_code

    errors = [
        (div2k.DownloadError("x"), RuntimeError),
        (div2k.ArchiveError("x"), RuntimeError),
        (prepare.NoImagesError("x"), ValueError),
        (folder.NotAFolderError("x"), NotADirectoryError),
        (NoValidationCropsError("x"), RuntimeError),
        (StalePairsError("x"), ValueError),
    ]
    for e, builtin in errors:
        assert isinstance(e, d.DataError) and isinstance(e, builtin), e
        assert user_error_code(e) == 2, type(e)
    cfg = DataConfig(source="folder", folder=str(tmp_path / "nope"), prepared_dir=str(tmp_path))
    with pytest.raises(d.DataError, match=f"data.folder='{tmp_path / 'nope'}': .* does not exist"):
        prepare.list_sources(cfg)
    (tmp_path / "file.png").write_bytes(b"")
    with pytest.raises(d.NotAFolderError, match="file.png: image folder is not a directory"):
        folder.scan_folder(tmp_path / "file.png")
