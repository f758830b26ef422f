"""Run commands against one shared local Prefect server.

Prefect's per-process temporary server costs 10-20 s per process on a small machine
(../shared/STACK-NOTES.md); a pipeline of several stages, each its own process, shares one
server started here instead. With `PREFECT_API_URL` already set, that server is used and
nothing is started.

    python -m flows.server -- dvc repro        # run a command with a local server around it

SIGINT and SIGTERM stop what was started, the command first (while the server can still take
its flow runs' last states): the signal is passed on to the command's whole process group
(`dvc repro` and the stage it runs), whatever is left after CHILD_GRACE_S is killed, then the
server's process group goes the same way. One `interrupted by ...` line, exit 130 / 143.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from diffenhance.signals import exit_code, held, interrupted, signum_of, stop_signals

QUIET_ENV = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",  # no telemetry DNS lookups offline
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",  # 20 s is too short on 2 cores
    "DASK_LOGGING__DISTRIBUTED": "error",
}
CHILD_GRACE_S = 30.0  # a stage interrupted: Prefect marks its run crashed, then it exits
SERVER_GRACE_S = 20.0  # the server's shutdown


def stop_group(proc: subprocess.Popen, sig: int = signal.SIGTERM, grace: float = 20.0) -> None:
    """Send `sig` to the process group `proc` leads (started with process_group=0 or
    start_new_session), wait up to `grace` s for `proc`, then SIGKILL what is left of the
    group: the grandchildren too, which a signal to `proc` alone would leave running."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace)
    with contextlib.suppress(ProcessLookupError):  # none left: the usual case
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def run_command(argv: list[str], env: dict[str, str] | None = None) -> int:
    """Run `argv` and return its exit code. It runs in a process group of its own, so that an
    interrupt here (Ctrl-C, or SIGTERM as `Interrupted`) reaches all of it: the same signal
    goes to the group (`stop_group`), then the interrupt goes on. An interrupt while it
    starts is held until `proc` is known (`signals.held`), so it never leaves it running."""
    proc = None
    try:
        with held():
            proc = subprocess.Popen(argv, env=env, process_group=0)
        return proc.wait()
    except KeyboardInterrupt as e:
        if proc is not None:
            stop_group(proc, signum_of(e), CHILD_GRACE_S)
        raise


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(api_url: str, proc: subprocess.Popen, timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"the local Prefect server exited with code {proc.returncode}; see {log}"
            )
        try:
            with urllib.request.urlopen(f"{api_url}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the local Prefect server did not answer within {timeout:.0f} s; see {log}")


@contextlib.contextmanager
def local_prefect_server(home: str | Path = ".prefect", timeout: float = 180.0) -> Iterator[str]:
    """Yield a Prefect API URL: $PREFECT_API_URL if set, else a server started on 127.0.0.1.

    The started server keeps its database under `home` (runs stay visible across pipeline
    runs when started again with the same home) and is stopped on exit, an interrupt
    included (in a session of its own, a terminal's Ctrl-C does not reach it). Sets
    `PREFECT_API_URL` in this process's environment while it runs so that child processes
    (dvc stages) use it.
    """
    for k, v in QUIET_ENV.items():
        os.environ.setdefault(k, v)
    if os.environ.get("PREFECT_API_URL"):
        yield os.environ["PREFECT_API_URL"]
        return
    home = Path(home).resolve()
    home.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(home)}
    log = home / "server.log"
    with open(log, "ab") as logf:
        proc = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1"]
            + ["--port", str(port), "--no-ui", "--analytics-off"],
            env=env,
            stdout=logf,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait_healthy(api_url, proc, timeout, log)
        os.environ["PREFECT_API_URL"] = api_url
        yield api_url
    finally:
        os.environ.pop("PREFECT_API_URL", None)
        stop_group(proc, signal.SIGTERM, SERVER_GRACE_S)  # its uvicorn and services too


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        print("usage: python -m flows.server -- COMMAND [ARGS...]", file=sys.stderr)
        return 2
    stopped = shlex.join(argv)
    if not os.environ.get("PREFECT_API_URL"):
        stopped += " and the Prefect server"
    try:
        with stop_signals(), local_prefect_server() as url:
            print(f"Prefect API: {url}", file=sys.stderr, flush=True)
            return run_command(argv)
    except KeyboardInterrupt as e:
        print(f"flows.server: {interrupted(signum_of(e), stopped)}", file=sys.stderr)
        return exit_code(signum_of(e))


if __name__ == "__main__":
    raise SystemExit(main())
