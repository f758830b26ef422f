"""DVC remote on the S3-compatible test server: the `dvc remote add/modify` commands of
docs/storage.md, then `dvc push`, a cleared cache and workspace, and `dvc pull` (real dvc CLI,
real git repo)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from tests.pipeline_utils import git, run
from tests.s3server import SeaweedS3

FILES = {
    "a.png": os.urandom(20_000),
    "sub/b c.bin": os.urandom(3_000),
    "sub/ünï.txt": b"non-ascii name\n",
    "empty.txt": b"",
}


def read_tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_dvc_push_clear_pull_roundtrip(
    s3_env: SeaweedS3, s3_prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3")  # the endpoint must come from the DVC config
    repo = tmp_path / "repo"
    folder = repo / "data" / "images"
    for rel, data in FILES.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)
    git(repo, "init", "-q")
    run(repo, "dvc", "init", "-q")
    run(repo, "dvc", "add", "-q", "data/images")
    url = f"{s3_prefix}/dvcstore"
    run(repo, "dvc", "remote", "add", "-d", "store", url)
    run(repo, "dvc", "remote", "modify", "store", "endpointurl", s3_env.endpoint_url)
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "data")

    # Push with credentials from the environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY).
    push = run(repo, "dvc", "push")
    assert f"{len(FILES) + 1} files pushed" in push.stdout  # the files + the directory listing
    prefix = url.split("/", 3)[3] + "/"
    listed = s3_env.client().list_objects_v2(Bucket=s3_env.bucket, Prefix=prefix)["Contents"]
    md5s = {o["Key"].split("/files/md5/", 1)[1].replace("/", "") for o in listed}
    assert {hashlib.md5(d).hexdigest() for d in FILES.values()} <= md5s
    assert sum(o["Size"] for o in listed) > sum(len(d) for d in FILES.values())

    # Pull with credentials from `dvc remote modify --local` only: the environment has none.
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    for key, value in (
        ("access_key_id", s3_env.access_key),
        ("secret_access_key", s3_env.secret_key),
    ):
        run(repo, "dvc", "remote", "modify", "--local", "store", key, value)
    committed = (repo / ".dvc" / "config").read_text()
    assert s3_env.endpoint_url in committed and s3_env.secret_key not in committed
    assert s3_env.access_key not in committed
    assert s3_env.secret_key in (repo / ".dvc" / "config.local").read_text()
    git(repo, "check-ignore", "-q", ".dvc/config.local")  # exits 1 (raises) if it were tracked

    for path in (folder, repo / ".dvc" / "cache"):
        for p in sorted(path.rglob("*"), reverse=True):
            p.unlink() if p.is_file() or p.is_symlink() else p.rmdir()
        path.rmdir()
    assert not folder.exists()
    pull = run(repo, "dvc", "pull")
    assert read_tree(folder) == FILES
    assert "data/images" in pull.stdout
    status = run(repo, "dvc", "status", "--cloud")
    assert "are in sync" in status.stdout
