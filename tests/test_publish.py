"""publish: verified, idempotent upload of reports/models/results + manifest, against the real
SeaweedFS server (conftest_s3.py), through the real Prefect engine, with real failures."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
import subprocess
import sys
import time
import traceback
from pathlib import Path

import pytest
import yaml

from diffenhance.config import ConfigError, StorageConfig, load_config, section_from_dict
from diffenhance.publish import PublishError, publish, summary_markdown
from diffenhance.storage import open_storage
from flows.publish import publish as publish_flow  # at import: Prefect configures logging
from tests.conftest import REPO
from tests.pipeline_utils import git
from tests.s3server import FaultProxy, SeaweedS3

OUTPUTS = {
    "reports/sr4/metrics.json": b'{"psnr_y": 27.1}\n',
    "reports/sr4/report.html": os.urandom(5000),
    "models/sr4/model.safetensors": os.urandom(40_000),
    "models/sr4/params.resolved.yaml": b"train:\n  steps: 6\n",
    "models/sr4/state/state-00000002.pt": os.urandom(3000),  # excluded: resume state
    "results/batch-1/ünï cøde 1.png": os.urandom(7000),
    "results/.gitkeep": b"",  # excluded
    "results/.img.png.1a2b3c4d.tmp": b"half-written",  # in-progress temp file: never published
}
# Library logs outside a flow run, in a process that imported flows/ (extra loggers -> API).
pytestmark = pytest.mark.filterwarnings("ignore:Logger 'diffenhance.*without a flow run id")

PUBLISHED = sorted(
    k for k in OUTPUTS if "/state/" not in k and not k.endswith((".gitkeep", ".tmp"))
)


def make_repo(root: Path) -> Path:
    """A git repo holding pipeline outputs (ignored, like the real ones) and one commit."""
    for rel, data in OUTPUTS.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    (root / ".gitignore").write_text("/reports/\n/models/\n/results/\n")
    git(root, "init", "-q")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "outputs")
    return root


def config(root: Path, url: str, *extra: str):
    return load_config(
        None, [f"storage.url={url}", f"storage.manifest_copy={root}/results/publish-manifest.json"]
        + list(extra),
    )  # fmt: skip


def writes(proxy: FaultProxy, since: int = 0) -> list[tuple[str, str, int]]:
    return [r for r in proxy.log[since:] if r[0] in ("PUT", "POST", "DELETE")]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_publish_twice_uploads_nothing(s3_env: SeaweedS3, s3_prefix: str, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    prefix = s3_prefix.split("/", 3)[3]
    client = s3_env.client()
    with FaultProxy(s3_env.endpoint_url, fail_first=0) as proxy:
        cfg = config(repo, s3_prefix, f"storage.endpoint_url={proxy.url}")
        first = publish(cfg, root=repo)
        assert (first.uploaded, first.skipped, first.manifest_written) == (5, 0, True)
        assert len(writes(proxy)) == 6  # 5 objects + the manifest, each one PUT
        assert writes(proxy)[-1][1].endswith("/publish-manifest.json")  # the manifest is last

        # Every published object is in the bucket with the local size and sha256.
        manifest = json.loads(
            client.get_object(Bucket=s3_env.bucket, Key=f"{prefix}/publish-manifest.json")[
                "Body"
            ].read()
        )
        assert [o["key"] for o in manifest["objects"]] == PUBLISHED
        assert manifest["git_commit"] == git(repo, "rev-parse", "HEAD").strip()
        assert manifest["git_dirty"] is False
        assert manifest["sources"]["models"] == {
            "path": "models", "excluded": 1, "files": 2,
            "bytes": sum(len(v) for k, v in OUTPUTS.items() if k in PUBLISHED and "models" in k),
        }  # fmt: skip
        for o in manifest["objects"]:
            body = client.get_object(Bucket=s3_env.bucket, Key=f"{prefix}/{o['key']}")["Body"]
            data = body.read()
            assert o["source"] == o["key"]
            assert len(data) == o["size"] == len(OUTPUTS[o["key"]])
            assert sha(data) == o["sha256"] == sha(OUTPUTS[o["key"]])
        local_copy = repo / "results/publish-manifest.json"
        assert json.loads(local_copy.read_bytes()) == manifest
        listed = {o["Key"] for o in client.list_objects_v2(Bucket=s3_env.bucket)["Contents"]}
        assert not any("/state/" in k or k.endswith((".gitkeep", ".tmp")) for k in listed)

        # Second run, nothing changed: no PUT at all (manifest included), only HEAD/GET.
        n = len(proxy.log)
        second = publish(cfg, root=repo)
        assert writes(proxy, n) == []
        assert {m for m, _, _ in proxy.log[n:]} <= {"GET", "HEAD"}
        assert (second.uploaded, second.skipped, second.manifest_written) == (0, 5, False)
        assert second.manifest == manifest
        assert "manifest unchanged" in str(second)

        # One changed file: exactly that file and the manifest are sent.
        changed = b'{"psnr_y": 27.4}\n'
        (repo / "reports/sr4/metrics.json").write_bytes(changed)
        n = len(proxy.log)
        third = publish(cfg, root=repo)
        assert [p.split("/", 3)[-1] for _, p, _ in writes(proxy, n)] == [
            "reports/sr4/metrics.json",
            "publish-manifest.json",
        ]
        entry = {o["key"]: o for o in third.manifest["objects"]}["reports/sr4/metrics.json"]
        assert entry["sha256"] == sha(changed) and entry["size"] == len(changed)
        assert json.loads(local_copy.read_bytes()) == third.manifest


def test_local_default_never_publishes_itself(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    cfg = config(repo, "results/published")  # the default: relative to the repo root
    first = publish(cfg, root=repo)
    dest = repo / "results/published"
    files = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file())
    assert files == sorted([*PUBLISHED, "publish-manifest.json"])  # no results/published/...
    assert first.uploaded == 5
    copy = repo / "results/publish-manifest.json"
    assert copy.read_bytes() == (dest / "publish-manifest.json").read_bytes()
    stamps = {p: p.stat().st_mtime_ns for p in [*dest.rglob("*"), copy]}
    second = publish(cfg, root=repo)
    assert (second.uploaded, second.skipped, second.manifest_written) == (0, 5, False)
    assert {p: p.stat().st_mtime_ns for p in [*dest.rglob("*"), copy]} == stamps  # untouched
    # publishing elsewhere afterwards leaves the default destination's copy out
    other = publish(config(repo, str(tmp_path / "elsewhere")), root=repo)
    assert [o["key"] for o in other.manifest["objects"]] == PUBLISHED
    # a destination that is a published folder, or holds one, would copy it into itself
    for url, where in (("reports", "is"), (".", "holds"), (str(repo), "holds")):
        with pytest.raises(PublishError, match=f"storage.url '{url}' {where} the published"):
            publish(config(repo, url), root=repo)
    assert not (repo / "reports" / "reports").exists()


def test_a_destination_inside_a_published_folder_is_never_walked(tmp_path: Path) -> None:
    """results/published lies inside results/: its files were listed (and resolved) on every
    run only to be dropped one by one, so a folder there that cannot be listed stopped the
    publish. Now the walk never enters it. Such a folder is made here as a path over PATH_MAX
    (unlistable even for root; a folder of another user's without read access behaves alike)."""
    repo = make_repo(tmp_path / "repo")
    cfg = config(repo, "results/published")
    assert publish(cfg, root=repo).uploaded == 5
    fd = os.open(repo / "results/published", os.O_RDONLY)
    for _ in range(20):  # 20 x 251 characters: deeper than PATH_MAX (4096)
        os.mkdir("d" * 250, dir_fd=fd)
        fd, up = os.open("d" * 250, os.O_RDONLY, dir_fd=fd), fd
        os.close(up)
    os.close(fd)
    again = publish(cfg, root=repo)
    assert (again.uploaded, again.skipped, again.manifest_written) == (0, 5, False)


def test_shipped_pretrained_models_are_not_published_by_default(tmp_path: Path) -> None:
    """models/pretrained/ is in git already (tens of MB; the manifest names the commit):
    publish leaves it out by default and counts it as excluded, as it does the resume state;
    storage.publish_exclude without it publishes it."""
    repo = make_repo(tmp_path / "repo")
    shipped = {
        "models/pretrained/sr4/model.safetensors": os.urandom(9000),
        "models/pretrained/sr4/training.json": b"{}\n",
    }
    for rel, data in shipped.items():
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_bytes(data)
    git(repo, "add", "-f", "models/pretrained")  # tracked, as in this repository
    git(repo, "commit", "-qm", "ship pretrained models")
    result = publish(config(repo, "results/published"), root=repo)
    assert [o["key"] for o in result.manifest["objects"]] == PUBLISHED
    assert not (repo / "results/published/models/pretrained").exists()
    assert result.manifest["sources"]["models"]["excluded"] == 3  # resume state + 2 shipped
    assert ", 4 excluded -> " in str(result)  # and results/.gitkeep
    assert "| `models/` | `models` | 2 | 2 | 0 | 3 |" in summary_markdown(result)

    keep = 'storage.publish_exclude=["models/*/state/*", "*/.gitkeep"]'
    opted_in = publish(config(repo, "results/published", keep), root=repo)
    assert opted_in.uploaded == 2 and opted_in.excluded == 2
    for rel, data in shipped.items():
        assert (repo / "results/published" / rel).read_bytes() == data


def test_local_publish_gives_files_the_umask_mode(tmp_path: Path, umask_022: int) -> None:
    """Published files (model.safetensors too), the manifest and its copy: 0644 at umask 022,
    as `cp` would make them, not the 0600 of a private temp file."""
    repo = make_repo(tmp_path / "repo")
    publish(config(repo, "results/published"), root=repo)
    dest = repo / "results/published"
    made = [p for p in dest.rglob("*") if p.is_file()] + [repo / "results/publish-manifest.json"]
    assert dest / "models/sr4/model.safetensors" in made and len(made) == len(PUBLISHED) + 2
    assert {p: stat.S_IMODE(p.stat().st_mode) for p in made} == dict.fromkeys(made, 0o644)


def test_linked_folders_are_published_and_fifos_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """publish lists its folders as upload and enhance do (`storage.local_files`): a report
    folder linked in is published under its own name, a link back up is not followed, and a
    FIFO (which would block the read for ever) is skipped with a warning naming it."""
    repo = make_repo(tmp_path / "repo")
    elsewhere = tmp_path / "elsewhere-reports"
    elsewhere.mkdir()
    (elsewhere / "metrics.json").write_bytes(b'{"psnr_y": 30.2}\n')
    (repo / "reports/sr2").symlink_to(elsewhere, target_is_directory=True)
    (repo / "reports/sr4/up").symlink_to(repo / "reports", target_is_directory=True)
    os.mkfifo(repo / "reports/sr4/pipe.png")
    with caplog.at_level(logging.WARNING, logger="diffenhance.publish"):
        result = publish(config(repo, "results/published"), root=repo)
    keys = [o["key"] for o in result.manifest["objects"]]
    assert keys == sorted([*PUBLISHED, "reports/sr2/metrics.json"])
    dest = repo / "results/published"
    assert (dest / "reports/sr2/metrics.json").read_bytes() == b'{"psnr_y": 30.2}\n'
    assert "skipped" in caplog.text and "pipe.png (not a regular file)" in caplog.text


def test_missing_folders_and_nothing_to_publish(tmp_path: Path) -> None:
    """Only reports/ exists: the first run creates results/ (the manifest copy), which must not
    make the second run see a changed 'results' source."""
    repo = tmp_path / "repo"
    (repo / "reports").mkdir(parents=True)
    (repo / "reports/metrics.json").write_bytes(b"{}")
    cfg = config(repo, "results/published")
    first = publish(cfg, root=repo)
    assert first.uploaded == 1 and "models" in first.missing
    second = publish(cfg, root=repo)
    assert (second.uploaded, second.manifest_written, second.missing) == (0, False, ["models"])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(PublishError, match=r"nothing to publish: no files under reports, models"):
        publish(config(empty, "results/published"), root=empty)
    assert not (empty / "results").exists()


def test_failure_midway_records_nothing(s3_prefix: str, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    (repo / "models/sr4/broken.safetensors").symlink_to(repo / "models/sr4/gone")
    cfg = config(repo, s3_prefix)
    with pytest.raises(PublishError, match=r"cannot read .*broken\.safetensors.*publish_exclude"):
        publish(cfg, root=repo)
    store = open_storage(s3_prefix)
    assert store.exists("reports/sr4/report.html")  # reports/ went before models/ failed
    assert not store.exists("publish-manifest.json")  # ... but nothing claims it
    assert not (repo / "results/publish-manifest.json").exists()
    fixed = config(repo, s3_prefix, 'storage.publish_exclude=["models/*/state/*", "*/.gitkeep", '
                   '"*/broken.*"]')  # fmt: skip
    again = publish(fixed, root=repo)
    assert (again.uploaded, again.skipped) == (3, 2)  # the reports already there are skipped


def test_server_stopped_fails_fast_and_records_nothing(s3_env: SeaweedS3, tmp_path: Path) -> None:
    srv = SeaweedS3(tmp_path / "weed", s3_env.access_key, s3_env.secret_key, "pubstop")
    repo = make_repo(tmp_path / "repo")
    copy = repo / "results/publish-manifest.json"
    opts = ["storage.max_attempts=2", "storage.connect_timeout_s=1", "storage.read_timeout_s=2"]
    with srv:
        cfg = config(repo, "s3://pubstop/run", f"storage.endpoint_url={srv.endpoint_url}", *opts)
        good = publish(cfg, root=repo)
        (repo / "results/batch-1/new.png").write_bytes(b"new result")
        srv.stop()
        t0 = time.monotonic()
        with pytest.raises(PublishError) as info:
            publish(cfg, root=repo)
        elapsed = time.monotonic() - t0
        print(f"publish against a stopped server failed after {elapsed:.2f} s")
        # Bound: max_attempts x (connect 1 s + read 2 s) + one jittered backoff (<= 1 s) = 7 s.
        assert elapsed < 7, f"took {elapsed:.1f} s"
        msg = str(info.value)
        assert f"127.0.0.1:{srv.port}" in msg and "is the server running" in msg
        assert "before uploading" in msg and "2 attempts" in msg
        assert json.loads(copy.read_bytes()) == good.manifest  # the local copy did not move
        srv.start()  # same data folder, new ports: the stored manifest is still the old one
        store = open_storage("s3://pubstop/run", StorageConfig(endpoint_url=srv.endpoint_url))
        assert json.loads(store.read_bytes("publish-manifest.json")) == good.manifest
        assert not store.exists("results/batch-1/new.png")


def test_config_rules() -> None:
    with pytest.raises(ConfigError, match=r"'storage\.multipart_threshold_mb' = 4 .*5 or more"):
        load_config(None, ["storage.multipart_threshold_mb=4"])
    with pytest.raises(ConfigError, match=r"'storage\.publish' entry '\.\./x'"):
        load_config(None, ["storage.publish=[reports, ../x]"])
    with pytest.raises(ConfigError, match=r"'storage\.manifest'.*inside a published folder"):
        load_config(None, ["storage.manifest=reports/m.json"])
    raw = yaml.safe_load((REPO / "params.yaml").read_text())["storage"]
    assert section_from_dict(StorageConfig, raw) == StorageConfig()  # params.yaml = defaults


# ----------------------------------------------------------------------------- Prefect flow


def write_params(repo: Path, url: str) -> Path:
    p = repo / "params.yaml"
    p.write_text(f"storage:\n  url: {url}\n  max_attempts: 2\n  connect_timeout_s: 1\n")
    return p


def artifacts_of(flow_run_id) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as c:
        found = c.read_artifacts(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    return [a for a in found if a.key == "publish-summary"]  # not Prefect's result records


def server_logs(flow_run_ids: list) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=10)
    with get_client(sync_client=True) as c:
        logs = c.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=flow_run_ids)))
    return [log.message for log in logs]


def test_flow_publishes_with_artifact_and_leaks_no_credentials(
    prefect_api: str,
    s3_env: SeaweedS3,
    s3_prefix: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)  # botocore DEBUG logs requests and their signed headers
    caplog.set_level(logging.DEBUG, logger="prefect")
    repo = make_repo(tmp_path / "repo")
    monkeypatch.chdir(repo)
    params = str(write_params(repo, s3_prefix))

    state = publish_flow(params=params, return_state=True)
    out = state.result()
    assert out["uploaded"] == 5 and out["objects"] == 5 and out["manifest_written"]
    run_ids = [state.state_details.flow_run_id]
    (art,) = artifacts_of(run_ids[0])
    assert art.key == "publish-summary" and art.type == "markdown"
    assert "| `models/` | `models` | 2 | 2 | 0 | 1 |" in art.data
    assert "Manifest `publish-manifest.json`: written" in art.data

    state = publish_flow(params=params, return_state=True)
    assert state.result()["uploaded"] == 0
    run_ids.append(state.state_details.flow_run_id)
    (art2,) = artifacts_of(run_ids[1])
    assert "| **total** | | 5 | 0 | 5 |" in art2.data and "unchanged" in art2.data

    # A failing run: wrong secret -> 403 -> PublishError; the flow run fails, nothing recorded.
    wrong = "wrong-" + s3_env.secret_key[::-1]
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", wrong)
    (repo / "reports/sr4/metrics.json").write_bytes(b"{}")
    state = publish_flow(params=params, return_state=True, overrides=[])
    assert state.is_failed()
    with pytest.raises(PublishError, match="AWS_SECRET_ACCESS_KEY") as info:
        state.result()
    run_ids.append(state.state_details.flow_run_id)
    assert artifacts_of(run_ids[2]) == []
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_env.secret_key)
    # One folder's task fails (unreadable file) while the others succeed: still no manifest.
    (repo / "models/sr4/broken.safetensors").symlink_to(repo / "models/sr4/gone")
    state = publish_flow(params=params, return_state=True)
    assert state.is_failed() and "broken.safetensors" in state.message
    run_ids.append(state.state_details.flow_run_id)
    assert open_storage(s3_prefix).exists("reports/sr4/metrics.json")  # changed file went up
    stored = json.loads(open_storage(s3_prefix).read_bytes("publish-manifest.json"))
    assert stored == json.loads((repo / "results/publish-manifest.json").read_bytes())
    assert {o["key"]: o["sha256"] for o in stored["objects"]}["reports/sr4/metrics.json"] == sha(
        OUTPUTS["reports/sr4/metrics.json"]
    )

    # Scan everything written or logged for the test credentials.
    texts = ["".join(traceback.format_exception(info.value)), art.data, art2.data]
    for rec in caplog.records:
        texts.append(rec.getMessage())
        if rec.exc_info:
            texts.append("".join(traceback.format_exception(*rec.exc_info)))
    texts += [p.read_bytes().decode("latin-1") for p in repo.rglob("*") if p.is_file()]
    texts.append(open_storage(s3_prefix).read_bytes("publish-manifest.json").decode())
    logs = server_logs(run_ids)
    texts += logs
    assert any("publish: 5 objects: 5 uploaded" in t for t in logs)  # Prefect stored our logs
    assert sum("botocore" in r.name for r in caplog.records) > 50
    assert any("Credential=***" in t for t in texts)  # signed headers were logged, redacted
    for secret in (s3_env.access_key, s3_env.secret_key, wrong):
        leaks = [t[:200] for t in texts if secret in t]
        assert not leaks, f"credential leaked: {leaks[:3]}"


def test_library_needs_neither_prefect_nor_boto3(tmp_path: Path) -> None:
    make_repo(tmp_path)
    code = (
        "import sys; sys.modules.update(dict.fromkeys(['boto3', 'botocore', 'prefect']))\n"
        "from diffenhance.config import load_config\n"
        "from diffenhance.publish import publish\n"
        "r = publish(load_config(None), root=sys.argv[1]); assert r.uploaded == 5, r\n"
    )
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True, timeout=60)
    assert (tmp_path / "results/published/publish-manifest.json").is_file()


def test_command_line_exit_codes(
    prefect_api: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`diffenhance publish` (in-process) and `python -m flows.publish` (a real process): 0 and a
    manifest when the store is there; 1 and one `error:` line naming the endpoint when it is
    down; 2 for a config error."""
    from typer.testing import CliRunner

    from diffenhance.cli import app

    repo = make_repo(tmp_path / "repo")
    write_params(repo, "results/published")
    monkeypatch.chdir(repo)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE7")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "sk-example-7")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    res = CliRunner().invoke(app, ["publish"])
    assert res.exit_code == 0, res.output
    assert (repo / "results/published/publish-manifest.json").is_file()
    res = CliRunner().invoke(app, ["publish", "storage.multipart_threshold_mb=1"])
    assert res.exit_code == 2 and "5 or more" in res.output

    dead = subprocess.run(
        [sys.executable, "-m", "flows.publish", "storage.url=s3://bucket/x",
         "storage.endpoint_url=http://127.0.0.1:9", "storage.max_attempts=1"],
        env={**os.environ, "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{REPO}"},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert dead.returncode == 1
    last = dead.stderr.strip().splitlines()[-1]
    assert last.startswith("error: publish to s3://bucket/x failed before uploading"), last
    assert "127.0.0.1:9" in last and "is the server running" in last


def test_credentials_in_a_url_are_refused_before_any_flow_run(
    prefect_api: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`diffenhance publish storage.url=s3://KEY:SECRET@...` and `python -m flows.publish ...`
    exit 2 without creating a flow run: Prefect would store the override, secret included, as
    the run's parameters (API, UI). A normal override still runs and is stored as given."""
    import secrets

    from prefect.client.orchestration import get_client
    from typer.testing import CliRunner

    from diffenhance.cli import app

    key, secret = "AKLEAK" + secrets.token_hex(6).upper(), "sk-" + secrets.token_urlsafe(18)
    repo = make_repo(tmp_path / "repo")
    monkeypatch.chdir(repo)
    params = str(write_params(repo, "results/published"))

    def runs() -> list:
        with get_client(sync_client=True) as c:
            return c.read_flow_runs()

    before = {r.id for r in runs()}
    bad = [f"storage.url=s3://{key}:{secret}@bucket/p", f"storage.url=s3://{key}:se/{secret}@b"]
    bad += [f"storage.endpoint_url=http://{key}:{secret}@127.0.0.1:9"]
    for override in bad:
        res = CliRunner().invoke(app, ["publish", "--params", params, override])
        assert res.exit_code == 2, res.output
        assert "credentials in a URL" in res.output and "'storage." in res.output
        assert key not in res.output and secret not in res.output
    proc = subprocess.run(
        [sys.executable, "-m", "flows.publish", "--params", params, bad[0]],
        env={**os.environ, "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{REPO}"},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2 and "credentials in a URL" in proc.stderr, proc.stderr
    assert key not in proc.stdout + proc.stderr and secret not in proc.stdout + proc.stderr

    ok = f"storage.url={tmp_path / 'pub'}"
    res = CliRunner().invoke(app, ["publish", "--params", params, ok])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "pub/publish-manifest.json").is_file()
    new = [r for r in runs() if r.id not in before]
    assert [r.parameters["overrides"] for r in new] == [[ok]]  # the one good run, as given
    for r in runs():
        stored = json.dumps(r.parameters) + str(r.state.message if r.state else "")
        assert key not in stored and secret not in stored, r.name
