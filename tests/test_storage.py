"""storage.py against a real S3 server (SeaweedFS, see conftest_s3.py) and the local backend.

No in-process mocking of boto3: faults come from a real closed port and a real HTTP proxy.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import unquote

import pytest

from diffenhance.config import StorageConfig
from diffenhance.io import is_temp_name, temp_name
from diffenhance.storage import (
    LocalStorage,
    ObjectNotFoundError,
    S3Storage,
    Storage,
    StorageError,
    UnsafeKeyError,
    is_local,
    local_path,
    normalize_url,
    open_storage,
    safe_key,
    split_url,
)
from tests.s3server import FaultProxy, SeaweedS3, listening_addresses

TREE = {
    "a/b/ünï çødé.png": os.urandom(3000),
    "top level.txt": b"hello world\n",
    "x/y/z/deep name.bin": os.urandom(70_000),
    "empty.txt": b"",
    "日本/画像 1.jpg": os.urandom(512),
}
BAD_KEYS = ["../x", "/abs", "a\\b", "a/../../b", "", "a//b", "a/./b", "a/", "nul\x00x", "ctl\nx"]


def write_tree(root: Path, tree: dict[str, bytes] = TREE) -> Path:
    for rel, data in tree.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def read_tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    """Each backend in turn, rooted at a fresh location."""
    if request.param == "local":
        return open_storage(str(tmp_path / "store"))
    return open_storage(request.getfixturevalue("s3_prefix"))


# ----------------------------------------------------------------------------- server


def test_server_binds_loopback_only(s3_server: SeaweedS3) -> None:
    assert s3_server.proc is not None
    if not Path(f"/proc/{s3_server.proc.pid}/fd").exists():
        pytest.skip("needs Linux /proc")
    addrs = listening_addresses(s3_server.proc.pid)
    assert ("127.0.0.1", s3_server.port) in addrs
    assert {ip for ip, _ in addrs} == {"127.0.0.1"}, addrs
    assert s3_server.startup_s < 30


# ----------------------------------------------------------------------------- keys


def test_safe_key_joins_and_refuses() -> None:
    assert safe_key("p/q", "a/b c/ü.png") == "p/q/a/b c/ü.png"
    assert safe_key("", "x") == "x"
    assert safe_key("p/", "x") == "p/x"
    for bad in BAD_KEYS:
        with pytest.raises(UnsafeKeyError) as info:
            safe_key("prefix", bad)
        assert repr(bad) in str(info.value)
    with pytest.raises(UnsafeKeyError):
        safe_key("../up", "x")


def test_path_traversal_refused(store: Storage, tmp_path: Path) -> None:
    src = tmp_path / "f.txt"
    src.write_bytes(b"data")
    for bad in ["../x", "/abs", "a\\b", "a/../../b"]:
        for call in (
            lambda k: store.write_bytes(k, b"x"),
            lambda k: store.read_bytes(k),
            lambda k: store.upload_file(src, k),
            lambda k: store.download_file(k, tmp_path / "out"),
            lambda k: store.exists(k),
            lambda k: store.delete(k),
            lambda k: list(store.list(k)),
        ):
            with pytest.raises(UnsafeKeyError, match="unsafe key"):
                call(bad)
        with pytest.raises(UnsafeKeyError):
            store.upload_dir(tmp_path, bad)
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "x").exists() and not (tmp_path.parent / "x").exists()


def test_hostile_names_cannot_escape(s3_prefix: str, tmp_path: Path) -> None:
    store = open_storage(s3_prefix)
    assert isinstance(store, S3Storage)
    # Object names written by another tool are checked before anything is written. SeaweedFS
    # refuses '..' and '.' in keys and folds '\\' and '//' to '/' (AWS stores them verbatim);
    # a control character it keeps, so that is the hostile name tested here.
    dest = tmp_path / "dest"
    store.write_bytes("fine.txt", b"ok")
    store.client.put_object(Bucket=store.bucket, Key=f"{store.prefix}/evil\x01.txt", Body=b"x")
    with pytest.raises(UnsafeKeyError, match="control character"):
        store.download_dir("", dest)
    assert not dest.exists()
    # A local file name with a backslash (legal on Linux) is refused, not mangled.
    src = tmp_path / "src"
    src.mkdir()
    (src / "a\\..\\b.txt").write_bytes(b"x")
    with pytest.raises(UnsafeKeyError, match="backslash"):
        LocalStorage(tmp_path / "copy").upload_dir(src)


# ----------------------------------------------------------------------------- round trips


def test_roundtrip_folder_s3(s3_prefix: str, tmp_path: Path) -> None:
    store = open_storage(s3_prefix)
    src = write_tree(tmp_path / "src")
    up = store.upload_dir(src, "run")
    assert (up.transferred, up.skipped, up.bytes) == (len(TREE), 0, sum(map(len, TREE.values())))
    assert sorted(o.key for o in store.list()) == sorted(f"run/{k}" for k in TREE)
    assert store.read_bytes("run/a/b/ünï çødé.png") == TREE["a/b/ünï çødé.png"]
    assert store.checksum("run/top level.txt") == sha(TREE["top level.txt"])
    down = store.download_dir("run", tmp_path / "dst")
    assert down.transferred == len(TREE)
    assert read_tree(tmp_path / "dst") == TREE
    assert store.url_for("run/x") == f"{s3_prefix}/run/x"


def test_roundtrip_folder_local(tmp_path: Path) -> None:
    store = open_storage(str(tmp_path / "published"))
    src = write_tree(tmp_path / "src")
    assert store.upload_dir(src, "run").transferred == len(TREE)
    assert read_tree(tmp_path / "published" / "run") == TREE
    assert store.download_dir("run/", tmp_path / "dst").transferred == len(TREE)
    assert read_tree(tmp_path / "dst") == TREE
    again = store.upload_dir(src, "run")
    assert (again.transferred, again.skipped) == (0, len(TREE))
    assert store.checksum("run/empty.txt") == sha(b"")
    assert open_storage(f"file://{tmp_path / 'published'}").exists("run/top level.txt")
    with pytest.raises(ObjectNotFoundError):
        store.read_bytes("run/missing")
    store.delete("run/top level.txt")
    store.delete("run/top level.txt")  # idempotent
    assert not store.exists("run/top level.txt")
    assert not [p for p in (tmp_path / "published").rglob("*") if ".diffenhance-tmp-" in p.name]


def test_local_files_get_the_umask_mode(store: Storage, tmp_path: Path, umask_022: int) -> None:
    """Stored (local backend) and downloaded files: 0o666 & ~umask, as a plain open gives."""
    src = write_tree(tmp_path / "src", {"a/f.bin": b"file", "g.bin": b"g"})
    store.write_bytes("w.bin", b"bytes")
    store.upload_file(src / "g.bin", "u.bin")
    store.upload_dir(src, "dir")
    store.download_file("w.bin", tmp_path / "got" / "w.bin")
    store.download_dir("dir", tmp_path / "got" / "dir")
    made = list((tmp_path / "got").rglob("*.bin"))
    if isinstance(store, LocalStorage):
        made += list(store.root.rglob("*.bin"))
    assert len(made) == 3 + 4 * isinstance(store, LocalStorage)
    assert {p: stat.S_IMODE(p.stat().st_mode) for p in made} == dict.fromkeys(made, 0o644)
    everything = [*tmp_path.rglob("*")]
    assert not [p for p in everything if is_temp_name(p.name)]


def test_local_listing_skips_half_written_files(tmp_path: Path) -> None:
    store = open_storage(str(tmp_path / "s"))
    store.write_bytes("d/a.png", b"a")
    (tmp_path / "s" / "d" / temp_name("b.png")).write_bytes(b"half")
    assert [o.key for o in store.list("")] == ["d/a.png"]


def test_local_listing_follows_linked_folders_but_never_loops(tmp_path: Path) -> None:
    """A linked-in dataset folder is listed under the link's name (enhance and upload read it);
    links back to the folder, above it or to an ancestor on the way down are not followed."""
    data = tmp_path / "dataset"
    (data / "sub").mkdir(parents=True)
    (data / "x.png").write_bytes(b"x")
    (data / "sub" / "y.png").write_bytes(b"y")
    root = tmp_path / "in"
    (root / "a").mkdir(parents=True)
    (root / "a" / "b.png").write_bytes(b"b")
    (root / "linked").symlink_to(data)  # followed
    (root / "self").symlink_to(".")  # this folder: a loop
    (root / "up").symlink_to("..")  # above it: would list tmp_path (and loop)
    (root / "a" / "back").symlink_to("..")  # an ancestor on the way down
    (data / "sub" / "home").symlink_to(data)  # the linked folder's own loop
    keys = sorted(o.key for o in open_storage(str(root)).list(""))
    assert keys == ["a/b.png", "linked/sub/y.png", "linked/x.png"]


def test_local_listing_names_a_folder_it_cannot_read() -> None:
    """A folder that cannot be listed stops the listing with a StorageError naming it; it is
    never skipped in silence (an enhancement job would miss its images). Root reads any folder,
    so as root the listing runs as nobody (setpriv) in a world-readable temp folder."""
    base = Path(tempfile.mkdtemp(prefix="unreadable-"))
    locked = base / "in" / "locked"
    try:
        base.chmod(0o755)
        locked.mkdir(parents=True)
        (base / "in" / "a.png").write_bytes(b"a")
        (locked / "b.png").write_bytes(b"b")
        locked.chmod(0)
        want = f"cannot list the folder {locked}: Permission denied"
        if os.geteuid() != 0:
            with pytest.raises(StorageError, match=want):
                list(open_storage(str(base / "in")).list(""))
            return
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: every folder is readable")
        code = "import sys; from diffenhance.storage import open_storage; "
        code += "print([o.key for o in open_storage(sys.argv[1]).list('')])"
        res = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
             sys.executable, "-c", code, str(base / "in")],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert res.returncode == 1 and want in res.stderr, res.stderr[-2000:]
        assert "StorageError" in res.stderr and not res.stdout
    finally:
        locked.chmod(0o755)
        shutil.rmtree(base)


def test_one_location_parser(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert is_local("out/x") and is_local("FILE:///tmp/x") and not is_local("s3://b/p")
    assert local_path("file:///tmp/x") == Path("/tmp/x") == local_path("/tmp/x")
    assert split_url("in/a.png") == ("in", "a.png")
    assert split_url("s3://bucket/p/a.png") == ("s3://bucket/p", "a.png")
    assert split_url("s3://bucket/p/") == ("s3://bucket", "p")
    assert split_url("s3://bucket") is None and split_url("in/") is None
    assert normalize_url("out/") == normalize_url(f"file://{tmp_path}/out") == str(tmp_path / "out")
    assert normalize_url("s3://b/p/") == "s3://b/p"
    store = open_storage(f"file://{tmp_path}/out")
    assert isinstance(store, LocalStorage) and store.root == tmp_path / "out"


def test_multipart_upload(s3_env: SeaweedS3, s3_prefix: str, tmp_path: Path) -> None:
    store = open_storage(s3_prefix, StorageConfig(multipart_threshold_mb=5))
    data = os.urandom(12_000_000)  # 5 MiB parts -> 3 parts
    (tmp_path / "big.bin").write_bytes(data)
    store.upload_file(tmp_path / "big.bin", "big.bin")
    info = store.stat("big.bin")
    assert info is not None and info.size == len(data)
    assert info.etag is not None and info.etag.endswith("-3"), info.etag
    assert info.sha256 == sha(data)
    store.download_file("big.bin", tmp_path / "back.bin")
    assert sha((tmp_path / "back.bin").read_bytes()) == sha(data)


def test_list_paginates_past_1000(s3_prefix: str) -> None:
    store = open_storage(s3_prefix)
    keys = [f"many/{i:05d}.txt" for i in range(1050)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: store.write_bytes(k, k.encode()), keys))
    listed = [o.key for o in store.list("many")]
    assert sorted(listed) == keys
    assert [o.key for o in store.list("many/0104")] == []  # folder semantics, not raw prefix


def test_upload_dir_twice_uploads_nothing(s3_prefix: str, tmp_path: Path) -> None:
    store = open_storage(s3_prefix)
    src = write_tree(tmp_path / "src")
    first = store.upload_dir(src)
    before = {o.key: (o.mtime, o.etag) for o in store.list()}
    time.sleep(1.1)  # S3 LastModified has 1 s resolution
    second = store.upload_dir(src)
    assert (second.transferred, second.skipped, second.bytes) == (0, len(TREE), 0)
    assert second.skipped_keys == first.keys
    assert {o.key: (o.mtime, o.etag) for o in store.list()} == before
    (src / "top level.txt").write_bytes(b"changed, same dir\n")
    third = store.upload_dir(src)
    assert (third.transferred, third.keys) == (1, ["top level.txt"])
    dst = tmp_path / "dst"
    assert store.download_dir("", dst).transferred == len(TREE)
    assert store.download_dir("", dst).transferred == 0


# ----------------------------------------------------------------------------- faults


def test_unreachable_endpoint_fails_fast(s3_env: SeaweedS3, s3_prefix: str) -> None:
    port = closed_port()
    cfg = StorageConfig(
        endpoint_url=f"http://127.0.0.1:{port}",
        max_attempts=2,
        connect_timeout_s=1,
        read_timeout_s=2,
    )
    store = open_storage(s3_prefix, cfg)
    t0 = time.monotonic()
    with pytest.raises(StorageError) as info:
        store.write_bytes("k.txt", b"x")
    elapsed = time.monotonic() - t0
    assert elapsed < 10, f"took {elapsed:.1f} s; bound is 10 s (2 attempts, 1 s connect timeout)"
    msg = str(info.value)
    assert f"127.0.0.1:{port}" in msg and "k.txt" in msg and "2 attempts" in msg
    assert s3_env.access_key not in msg and s3_env.secret_key not in msg
    with pytest.raises(StorageError, match="EndpointConnectionError"):
        list(store.list())


def test_silent_server_times_out(s3_env: SeaweedS3, s3_prefix: str) -> None:
    with socket.socket() as silent:  # the kernel accepts connections; nobody ever answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        cfg = StorageConfig(endpoint_url=url, max_attempts=2, read_timeout_s=1)
        store = open_storage(s3_prefix, cfg)
        t0 = time.monotonic()
        with pytest.raises(StorageError, match="ReadTimeoutError.*2 attempts.*no answer within 1"):
            store.exists("k.txt")
        elapsed = time.monotonic() - t0
    # 2 attempts x 1 s read timeout + at most 1 s of jittered backoff
    assert 1.9 < elapsed < 6, elapsed


def test_injected_503s_are_retried(s3_env: SeaweedS3, s3_prefix: str) -> None:
    data = os.urandom(300_000)
    with FaultProxy(s3_env.endpoint_url, fail_first=2) as proxy:
        store = open_storage(s3_prefix, StorageConfig(endpoint_url=proxy.url, max_attempts=4))
        store.write_bytes("retried.bin", data)
        assert proxy.failed == 2
        assert proxy.requests >= 4  # 2 refused PUTs, the PUT that succeeded, the verifying HEAD
        assert [s for _, _, s in proxy.log[:3]] == [503, 503, 200]
    direct = open_storage(s3_prefix)
    assert sha(direct.read_bytes("retried.bin")) == sha(data) == direct.checksum("retried.bin")
    with FaultProxy(s3_env.endpoint_url, fail_first=10) as proxy:
        store = open_storage(s3_prefix, StorageConfig(endpoint_url=proxy.url, max_attempts=2))
        with pytest.raises(StorageError, match="SlowDown"):
            store.write_bytes("never.bin", data)
        assert proxy.requests == 2
    assert not direct.exists("never.bin")


def test_wrong_credentials(s3_env: SeaweedS3, s3_prefix: str, monkeypatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-" + s3_env.secret_key[::-1])
    with pytest.raises(StorageError, match="AWS_SECRET_ACCESS_KEY") as info:
        open_storage(s3_prefix).write_bytes("k", b"x")
    assert "SignatureDoesNotMatch" in str(info.value) or "403" in str(info.value)


def test_credentials_never_leak(
    s3_env: SeaweedS3, s3_prefix: str, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "wrong-" + s3_env.secret_key[::-1]
    secrets = [s3_env.access_key, s3_env.secret_key, wrong]
    errors: list[BaseException] = []

    def expect_error(fn) -> None:
        with pytest.raises(StorageError) as info:
            fn()
        errors.append(info.value)

    work = tmp_path / "work"
    src = write_tree(work / "src")
    store = open_storage(s3_prefix, StorageConfig(multipart_threshold_mb=5))
    store.upload_dir(src)
    store.download_dir("", work / "dst")
    store.write_bytes("big.bin", os.urandom(6 * 1024 * 1024))
    store.download_file("big.bin", work / "big.bin")
    expect_error(lambda: store.read_bytes("missing"))
    expect_error(lambda: store.download_file("missing", work / "missing"))
    dead = StorageConfig(endpoint_url=f"http://127.0.0.1:{closed_port()}", max_attempts=1)
    expect_error(lambda: open_storage(s3_prefix, dead).upload_dir(src))
    with FaultProxy(s3_env.endpoint_url, fail_first=5) as proxy:
        flaky = StorageConfig(endpoint_url=proxy.url, max_attempts=2)
        expect_error(lambda: open_storage(s3_prefix, flaky).write_bytes("k", b"x"))
    expect_error(lambda: open_storage(f"s3://{s3_env.access_key}:{s3_env.secret_key}@b/x"))
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", wrong)
    expect_error(lambda: open_storage(s3_prefix).write_bytes("k", b"x"))
    expect_error(lambda: list(open_storage(s3_prefix).list()))

    assert len(errors) == 7 and len(caplog.records) > 50  # botocore DEBUG records were captured
    texts = ["".join(traceback.format_exception(e)) for e in errors]
    for rec in caplog.records:
        texts.append(rec.getMessage())
        if rec.exc_info:
            texts.append("".join(traceback.format_exception(*rec.exc_info)))
    texts += [p.read_bytes().decode("latin-1") for p in work.rglob("*") if p.is_file()]
    assert any("Credential=***" in t for t in texts)  # the Authorization header was redacted
    for secret in secrets:
        leaks = [t[:200] for t in texts if secret in t]
        assert not leaks, f"credential leaked: {leaks[:3]}"


# ----------------------------------------------------------------------------- upload


def upload_cli(*args: str):
    """`diffenhance upload ARGS` in-process (stdout and stderr kept apart)."""
    from typer.testing import CliRunner

    from diffenhance.cli import app

    return CliRunner().invoke(app, ["upload", *args])


def test_upload_command_skips_unchanged_and_hidden(
    s3_env: SeaweedS3, s3_prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`diffenhance upload DIR s3://...`: every file (any extension) through the test server,
    verified; hidden files and folders named, not sent; a rerun sends nothing; a changed file
    alone is sent again; one file goes to DEST/<its name>."""
    src = write_tree(tmp_path / "photos")
    hidden = {".DS_Store": b"finder", ".git/config": b"[core]", "a/.thumbs/t.png": b"thumb"}
    write_tree(src, hidden)
    monkeypatch.chdir(tmp_path)  # no params.yaml here: the built-in storage defaults
    url = s3_prefix + "/in"
    store = open_storage(url)
    with FaultProxy(s3_env.endpoint_url, fail_first=0) as proxy:
        via = f"storage.endpoint_url={proxy.url}"  # storage.* overrides as publish's
        res = upload_cli(str(src), url, via)
        assert res.exit_code == 0, res.output
        size = sum(map(len, TREE.values()))
        assert res.stdout == f"upload: {len(TREE)} files ({size} bytes) sent, 0 unchanged, "\
                             f"3 hidden skipped -> {url}\n"  # fmt: skip
        lines = res.stderr.splitlines()
        assert lines[:3] == ["skipped .git/ (hidden)", "skipped .DS_Store (hidden)",
                             "skipped a/.thumbs/ (hidden)"]  # fmt: skip
        assert lines[3] == f"[1/5] empty.txt -> {url}/empty.txt (uploaded, 0 bytes)"
        assert (
            f"] a/b/ünï çødé.png -> {url}/a/b/ünï çødé.png (uploaded, 3000 bytes)\n" in res.stderr
        )
        assert len(lines) == 3 + len(TREE)
        store.download_dir("", tmp_path / "back")
        assert read_tree(tmp_path / "back") == TREE
        for key, data in TREE.items():
            assert store.checksum(key) == sha(data)  # verified: our sha256 metadata is there

        n = len(proxy.log)
        res = upload_cli(str(src), url, via)
        assert res.exit_code == 0, res.output
        assert {m for m, _, _ in proxy.log[n:]} == {"HEAD"}  # nothing sent, only compared
        assert res.stdout.startswith(f"upload: 0 files (0 bytes) sent, {len(TREE)} unchanged")
        assert f"[1/5] empty.txt -> {url}/empty.txt (unchanged)\n" in res.stderr

        (src / "x/y/z/deep name.bin").write_bytes(b"changed")
        n = len(proxy.log)
        res = upload_cli(str(src), url, via)
        assert res.exit_code == 0, res.output
        sent = [unquote(path) for m, path, _ in proxy.log[n:] if m in ("PUT", "POST")]
        assert [p.rsplit("/in/", 1)[1] for p in sent] == ["x/y/z/deep name.bin"]
        assert res.stdout.startswith(f"upload: 1 files (7 bytes) sent, {len(TREE) - 1} unchanged")
        assert store.read_bytes("x/y/z/deep name.bin") == b"changed"

    res = upload_cli(str(src / "top level.txt"), s3_prefix + "/one")  # AWS_ENDPOINT_URL_S3
    assert res.exit_code == 0, res.output
    assert [o.key for o in open_storage(s3_prefix + "/one").list()] == ["top level.txt"]


def test_upload_command_errors_are_one_line(
    s3_prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bad source, an unreadable file: exit 2; a store that is down: exit 1; each one
    `error:` line naming the path."""
    monkeypatch.chdir(tmp_path)
    res = upload_cli(str(tmp_path / "nope"), s3_prefix)
    assert res.exit_code == 2, res.output
    assert res.stderr == f"error: upload: {tmp_path / 'nope'}: no such file or folder\n"

    src = write_tree(tmp_path / "src", {"a.png": b"a"})
    (src / "b.png").symlink_to(src / "gone")  # listed, cannot be read
    res = upload_cli(str(src), s3_prefix)
    assert res.exit_code == 2, res.output
    assert res.stderr.splitlines()[-1] == (
        f"error: upload: cannot read {src / 'b.png'}: No such file or directory"
    )
    (src / "b.png").unlink()

    # a local destination inside the source (or the source itself), an empty one: exit 2,
    # nothing written (each rerun would nest one copy deeper; '' was the working directory)
    for dest, why in ((src / "out", "is inside the source"), (src, "is inside the source"),
                      ("", "DEST is empty"), (src / "a.png", "is a file"),
                      ("gs://bucket/x", "unsupported"), ("s3:///x", "invalid bucket")):  # fmt: skip
        res = upload_cli(str(src), str(dest))
        assert res.exit_code == 2 and why in res.stderr, res.output
    assert sorted(p.name for p in src.iterdir()) == ["a.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]
    # a FIFO in the source is named and skipped (reading it would block for ever)
    os.mkfifo(src / "pipe.png")
    res = upload_cli(str(src), str(tmp_path / "local"))
    assert res.exit_code == 0 and "skipped pipe.png (not a regular file)" in res.stderr, res.output
    assert sorted(p.name for p in (tmp_path / "local").iterdir()) == ["a.png"]
    (src / "pipe.png").unlink()

    dead = [f"storage.endpoint_url=http://127.0.0.1:{closed_port()}", "storage.max_attempts=1"]
    res = upload_cli(str(src), s3_prefix, *dead)
    assert res.exit_code == 1, res.output
    (line,) = res.stderr.splitlines()
    assert line.startswith(f"error: upload of {src / 'a.png'} stopped: "), line
    assert "is the server running" in line


# ----------------------------------------------------------------------------- misc


def test_bad_urls_and_settings(s3_prefix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(StorageError, match="unsupported"):
        open_storage("gs://bucket/x")
    with pytest.raises(StorageError, match="invalid bucket"):
        open_storage("s3:///x")
    with pytest.raises(StorageError, match="endpoint"):
        open_storage(s3_prefix, StorageConfig(endpoint_url="127.0.0.1:9000"))  # no scheme
    monkeypatch.setenv("AWS_PROFILE", "no-such-profile")
    with pytest.raises(StorageError, match="no-such-profile"):
        open_storage(s3_prefix)


def test_imports_without_boto3(tmp_path: Path) -> None:
    code = (
        "import sys; sys.modules['boto3'] = sys.modules['botocore'] = None\n"
        "from diffenhance.storage import open_storage\n"
        f"s = open_storage({str(tmp_path)!r}); s.write_bytes('a/b.txt', b'x')\n"
        "assert s.read_bytes('a/b.txt') == b'x'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
