"""Session-wide test plumbing: quiet offline Prefect, one Prefect test server, repo paths."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytest_plugins = ["tests.conftest_s3"]  # the real S3 server fixtures

# Offline and quiet before anything imports prefect (see ../shared/STACK-NOTES.md).
_PREFECT_HOME = tempfile.mkdtemp(prefix="diffenhance-prefect-")
atexit.register(shutil.rmtree, _PREFECT_HOME, ignore_errors=True)
os.environ.setdefault("PREFECT_HOME", _PREFECT_HOME)
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "error")
os.environ.pop("PREFECT_API_URL", None)  # never talk to a developer's real server
if os.environ.get("PYTEST_XDIST_WORKER"):
    # pytest -n N: N workers share the cores; one intra-op thread each (and in the processes
    # they start) avoids the oversubscription `one_thread` describes
    os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def prefect_api():
    """One real Prefect server for the whole session (prefect_test_harness).

    Also exported as PREFECT_API_URL so that subprocesses (flows run by `dvc repro`) report
    to the same server instead of each starting a temporary one.
    """
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        url = PREFECT_API_URL.value()
        os.environ["PREFECT_API_URL"] = url
        try:
            yield url
        finally:
            os.environ.pop("PREFECT_API_URL", None)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: one intra-op thread is fastest and immune to CPU oversubscription (a
    2-thread pool on a busy 2-core runner was 20x slower)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def umask_022():
    """Run with umask 022 (restored afterwards): a plain `open(path, "w")` then makes 0644."""
    old = os.umask(0o022)
    try:
        yield 0o022
    finally:
        os.umask(old)
