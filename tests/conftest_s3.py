"""Pytest plugin: one real SeaweedFS S3 server per session, test credentials, unique prefixes.

Load with ``pytest_plugins = ["tests.conftest_s3"]`` (or ``-p tests.conftest_s3``).

    def test_x(s3_prefix):           # env points boto3 at the test server
        store = open_storage(s3_prefix)
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Iterator

import pytest

from tests.s3server import SeaweedS3, WeedNotFoundError, find_weed

S3_BUCKET = "diffenhance-test"


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    """A SeaweedFS server on 127.0.0.1 for the whole session (skips if `weed` is missing).

    Yields the `SeaweedS3` object: endpoint_url, bucket, access_key, secret_key, client().
    Credentials are random per session, so a leak check can search for them verbatim.
    """
    try:
        find_weed()
    except WeedNotFoundError as e:
        pytest.skip(str(e))
    access_key = "AKTEST" + secrets.token_hex(7).upper()
    secret_key = "sk-" + secrets.token_urlsafe(24)
    server = SeaweedS3(tmp_path_factory.mktemp("seaweedfs"), access_key, secret_key, S3_BUCKET)
    with server:
        yield server


@pytest.fixture
def s3_env(s3_server: SeaweedS3, monkeypatch: pytest.MonkeyPatch, tmp_path_factory) -> SeaweedS3:
    """Point the standard AWS credential chain and endpoint at the test server, and only it.

    A developer's ~/.aws files, profile and session token are hidden; instance metadata
    lookups are disabled so a missing credential fails fast.
    """
    empty = tmp_path_factory.mktemp("aws-config") / "none"
    for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(empty))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(empty))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_server.endpoint_url)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    return s3_server


@pytest.fixture
def s3_prefix(s3_env: SeaweedS3) -> str:
    """A fresh ``s3://bucket/test-<uuid>`` URL for this test (environment already set)."""
    return f"s3://{s3_env.bucket}/test-{uuid.uuid4().hex}"
