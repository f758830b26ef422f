"""SIGTERM and SIGINT stop what an entry point started (issue 24: N2-N4).

Each entry point runs as a real process in a session of its own and gets the signal at the
point where it matters (a job running, a stage running, a flow run under way). It must exit
within a bounded time with 128 + the signal number and one `interrupted by SIG...` line, no
traceback; no process it started may survive, and nothing may be left in its temporary
folder (its own TMPDIR).

Cost: Prefect dominates (a server start, about 7 CPU seconds per flow process to reach its
flow run). One `python -m flows.server -- sleep` provides the server the flow tests use and
is then the subject of the wrapper's SIGTERM test; the flows start all at once against it,
except enhance, which runs for real on its own temporary server (N4). The default run takes
three flows, one per entry code path; every flow, with either signal, runs under `-m slow`.
The other entry points need no server: PREFECT_API_URL names a port nothing listens on, which
the stage they run never calls.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psutil
import pytest
from PIL import Image

from tests.conftest import REPO

PARAMS = REPO / "params.yaml"
PYTHON = sys.executable
NO_SERVER = "http://127.0.0.1:9/api"  # the discard port: a stage that never calls Prefect
TERM = pytest.param(signal.SIGTERM, id="SIGTERM")
INT = pytest.param(signal.SIGINT, id="SIGINT")
FLOWS = ["prepare", "degrade", "train", "evaluate", "compare", "report", "publish", "enhance",
         "enhance serve"]  # fmt: skip
# Each flow process takes about 7 CPU seconds to reach its flow run: the default run takes one
# of each entry code path (`run_stage`; publish's `main`; enhance's `main`, on its own server,
# and its `serve`)
DEFAULT_FLOWS = [("train", signal.SIGTERM), ("publish", signal.SIGINT),
                 ("enhance", signal.SIGTERM), ("enhance serve", signal.SIGTERM)]  # fmt: skip
TERM_INT = [(m, (signal.SIGTERM, signal.SIGINT)[i % 2]) for i, m in enumerate(FLOWS)]
INT_TERM = [(m, (signal.SIGINT, signal.SIGTERM)[i % 2]) for i, m in enumerate(FLOWS)]
# the shipped sr4 at full detail, at the UI's limits: minutes of CPU (tests/test_ui.py's SLOW)
SLOW = {"detail": 1.0, "steps": 50, "samples": 32}
SLOW_OVERRIDES = ["infer.detail=1.0", "infer.steps=50", "infer.samples=32"]

# `python -c BLOCK_IN_FLOW MODULE ARGS...` runs MODULE's `__main__` with its flow held inside
# the flow run, where the signal matters: the first params read inside a flow run (each flow
# reads params first) sleeps instead, as long work in the flow's thread would.
BLOCK_IN_FLOW = """
import runpy, sys, time
import diffenhance.config as config
from prefect.context import FlowRunContext
load = config.load_config
def load_config(*args, **kwargs):
    if FlowRunContext.get() is not None:
        print("flow body reached", flush=True)
        time.sleep(600)
    return load(*args, **kwargs)
config.load_config = load_config
sys.argv = sys.argv[1:]
runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
"""


class Proc:
    """A command in a session of its own (a signal to it reaches it alone, as `kill PID`
    does), its output collected line by line, and every process it started seen so far."""

    def __init__(self, cmd: list[str], tmp: Path, cwd: Path, **env: str) -> None:
        self.tmp = tmp
        tmp.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)]),
               "TMPDIR": str(tmp), "OMP_NUM_THREADS": "1", **env}  # fmt: skip
        if env.get("PREFECT_API_URL") == "":  # unset: its own server
            del env["PREFECT_API_URL"]
        self.p = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True, start_new_session=True)  # fmt: skip
        self.lines: list[str] = []
        self.started: dict[int, psutil.Process] = {}  # what it ran, by pid
        self.signalled = 0.0  # time.monotonic() of the signal
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.p.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, pattern: str, timeout: float) -> re.Match:
        """The first output line matching `pattern`, waiting up to `timeout` s for it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if m := re.search(pattern, line):
                    self.note_children()
                    return m
            assert self.p.poll() is None, f"exited {self.p.returncode}:\n{self.output}"
            time.sleep(0.1)
        raise AssertionError(f"no {pattern!r} within {timeout:.0f} s:\n{self.output}")

    def note_children(self) -> None:
        """Add the processes it runs now to `started` (recorded before they may re-parent)."""
        try:
            children = psutil.Process(self.p.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return
        for c in children:
            self.started.setdefault(c.pid, c)

    def wait_started(self, command: str, timeout: float) -> None:
        """Wait up to `timeout` s for a process it started whose command line begins with
        `command` (not merely contains it: `sh -c 'sleep 300 & sleep 301'` contains `sleep
        301` before its child `sleep 301` exists)."""
        words = command.split()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.note_children()
            if any(cmdline(c)[: len(words)] == words for c in self.started.values()):
                return
            time.sleep(0.1)
        raise AssertionError(f"no process {command!r} within {timeout:.0f} s:\n{self.output}")

    def kill(self) -> None:
        """Teardown: nothing of it may outlive the test, whatever the test found."""
        with contextlib.suppress(ProcessLookupError):  # its session: whatever is left of it
            os.killpg(self.p.pid, signal.SIGKILL)
        for c in self.started.values():
            with contextlib.suppress(psutil.Error):
                c.kill()
        self.p.wait(timeout=10)


def cmdline(p: psutil.Process) -> list[str]:
    try:
        return p.cmdline()
    except psutil.Error:
        return []


def alive(procs) -> list[str]:
    """What is still running of `procs` after up to 10 s (zombies count as ended)."""
    _, left = psutil.wait_procs(list(procs), timeout=10)
    out = []
    for p in left:
        try:
            if p.status() != psutil.STATUS_ZOMBIE:
                out.append(f"{p.pid} {' '.join(cmdline(p)[:6])}")
        except psutil.Error:
            pass
    return out


def shared(p: Path) -> bool:
    """A folder in TMPDIR that is not one process's to delete: torch's compile cache (made by
    `import torch`, meant to stay) and the parent of Prefect runners' storage, left empty (each
    runner deletes its own folder in it, never the parent others may be using)."""
    return p.name.startswith("torchinductor_") or (
        p.name == "runner_storage" and not any(p.iterdir())
    )


def send(proc: Proc, sig: int) -> None:
    """Send `sig` to `proc` alone (as `kill -TERM PID`), having noted what it runs."""
    proc.note_children()
    proc.signalled = time.monotonic()
    proc.p.send_signal(sig)


def check_stopped(proc: Proc, sig: int, timeout: float, stopped: str) -> str:
    """`proc`, sent `sig`, must exit within `timeout` s with 128 + sig and one
    `interrupted by SIG...; stopped <stopped>...` line, without a traceback, leaving no
    process it started and nothing in its temporary folder. Its output."""
    try:
        rc = proc.p.wait(timeout=max(0.0, proc.signalled + timeout - time.monotonic()))
    except subprocess.TimeoutExpired:
        raise AssertionError(
            f"still running {timeout:.0f} s after {sig!r}:\n{proc.output}"
        ) from None
    took = time.monotonic() - proc.signalled
    time.sleep(0.2)  # the last lines
    out = proc.output
    name = signal.Signals(sig).name
    lines = [line for line in out.splitlines() if "interrupted by" in line]
    assert rc == 128 + sig, f"exit {rc} after {took:.1f} s:\n{out}"
    assert len(lines) == 1 and f"interrupted by {name}; stopped {stopped}" in lines[0], out
    assert "Traceback" not in out, out
    left = alive(proc.started.values())
    assert not left, f"still running after {name}: {left}\n{out}"
    leftover = [p.name for p in proc.tmp.iterdir() if not shared(p)]
    assert not leftover, f"left in its temporary folder: {leftover}\n{out}"
    return out


def signal_and_check(proc: Proc, sig: int, timeout: float, stopped: str) -> str:
    send(proc, sig)
    return check_stopped(proc, sig, timeout, stopped)


def api(base: str, path: str, body: bytes | None = None, ctype: str = "application/json"):
    req = urllib.request.Request(base + path, data=body, headers={"content-type": ctype})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.load(r)


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    """The Procs a test starts, killed at teardown whatever happened."""
    started: list[Proc] = []
    yield started
    for p in started:
        p.kill()


def png(size: int = 64, shift: int = 0) -> bytes:
    from skimage import data

    buf = io.BytesIO()
    crop = data.astronaut()[100 : 100 + size, 180 + shift : 180 + shift + size]
    Image.fromarray(np.ascontiguousarray(crop)).save(buf, format="PNG")
    return buf.getvalue()


# ------------------------------------------------------------------ server wrapper and flows


@pytest.fixture(scope="module")
def wrapper(tmp_path_factory) -> Iterator[tuple[Proc, str]]:
    """`python -m flows.server -- sleep 300` (with a grandchild too): the Prefect server of the
    flow tests, then the subject of the wrapper's own SIGTERM test; its Proc and API URL."""
    root = tmp_path_factory.mktemp("wrapper")
    cmd = [PYTHON, "-m", "flows.server", "--", "sh", "-c", "sleep 300 & sleep 301"]
    proc = Proc(cmd, root / "tmp", root, PREFECT_API_URL="")
    try:
        url = proc.wait_for(r"Prefect API: (\S+)", timeout=180)[1]
        proc.wait_started("sleep 300", timeout=30)
        proc.wait_started("sleep 301", timeout=30)
        yield proc, url
    finally:
        proc.kill()


def flow_command(module: str, tmp: Path) -> list[str]:
    """`python -m flows.<module>` held in its flow run (BLOCK_IN_FLOW); enhance instead runs
    for real, its shards enhancing two images in threads for minutes (SLOW); `enhance serve`
    serves a deployment `signals-<tmp's name>` whose first run is hours away."""
    if module == "enhance serve":
        return [PYTHON, "-m", "flows.enhance", "serve", "--cron", "0 3 * * *", "--name",
                f"signals-{tmp.name}", "--params", str(PARAMS), "enhance.model=sr4"]  # fmt: skip
    # entry points that check their inputs before the flow run (PARAMS' paths, train.tasks)
    if module in ("degrade", "train"):  # the validation / training crops
        manifest = tmp / "data" / "prepared" / "manifest.csv"
        manifest.parent.mkdir(parents=True)
        manifest.write_text("crop_path,split,crop_sha256\nval/a.png,val,0\ntrain/b.png,train,0\n")
    if module in ("train", "evaluate"):  # the validation pairs; evaluate: the trained model
        (tmp / "data" / "degraded" / "sr4").mkdir(parents=True)
        (tmp / "data" / "degraded" / "sr4" / "pairs.csv").write_text("name\n")
        (tmp / "data" / "degraded" / "sr4" / "degradation.json").write_text(
            '{"degrade": {}, "task": "sr4"}'
        )
    if module == "evaluate":
        (tmp / "models" / "sr4").mkdir(parents=True)
        (tmp / "models" / "sr4" / "model.safetensors").write_bytes(b"")
    if module != "enhance":
        return [PYTHON, "-c", BLOCK_IN_FLOW, f"flows.{module}", "--params", str(PARAMS)]
    (tmp / "in").mkdir(parents=True)
    for i in range(2):
        (tmp / "in" / f"a{i}.png").write_bytes(png(shift=i))
    return [PYTHON, "-m", "flows.enhance", "--params", str(PARAMS), f"enhance.input={tmp / 'in'}",
            f"enhance.output={tmp / 'out'}", "enhance.model=sr4", "enhance.shard_size=1",
            *SLOW_OVERRIDES]  # fmt: skip


def wait_served(proc: Proc, url: str, name: str, timeout: float) -> None:
    """Wait until deployment `name` is on the Prefect API at `url` (`serve` prints nothing)."""
    body = json.dumps({"deployments": {"name": {"any_": [name]}}}).encode()
    deadline = time.monotonic() + timeout
    while not api(url.rstrip("/") + "/", "deployments/filter", body):
        assert proc.p.poll() is None, f"exited {proc.p.returncode}:\n{proc.output}"
        assert time.monotonic() < deadline, f"{name} not served within {timeout:.0f} s"
        time.sleep(0.5)
    time.sleep(1.0)  # the runner past its start-up, polling


@pytest.mark.parametrize(
    "flows",
    [
        pytest.param(DEFAULT_FLOWS, id="some"),
        pytest.param(TERM_INT, id="all", marks=pytest.mark.slow),
        pytest.param(INT_TERM, id="all-swapped", marks=pytest.mark.slow),
    ],
)
def test_every_flow_main_stops_in_its_flow_run(wrapper, tmp_path, procs, flows):
    """Each `python -m flows.<X>` stops in its flow run on the signal `flows` pairs it with
    (every flow gets both under `-m slow`): Prefect marks the run crashed.

    N4: enhance runs on its own temporary Prefect server: its shards stop at their next
    network call (no image is written), the server stops with it. `enhance serve` stops its
    runner (on SIGTERM, Prefect's runner stops itself gracefully: the same line and code)."""
    _, url = wrapper
    runs = {}
    for module, sig in flows:  # all at once: their start-ups overlap
        tmp = tmp_path / module.replace(" ", "-")
        env = {"PREFECT_API_URL": url}
        if module == "enhance":
            env = {"PREFECT_API_URL": "", "PREFECT_HOME": str(tmp / "prefect"),
                   "PREFECT_LOGGING_LEVEL": "INFO"}  # fmt: skip
        proc = Proc(flow_command(module, tmp), tmp / "tmp", tmp, **env)
        procs.append(proc)
        runs[module] = (proc, sig)
    for module, (proc, _) in runs.items():
        if module == "enhance serve":
            wait_served(proc, url, f"signals-{proc.tmp.parent.name}", timeout=300)
        else:
            proc.wait_for(r"flow body reached|enhance: \d+ images in", timeout=300)
    time.sleep(1.0)  # enhance's shards inside their sampling loops
    enhance = runs["enhance"][0]
    enhance.note_children()
    assert any("uvicorn" in " ".join(cmdline(c)) for c in enhance.started.values()), enhance.output
    for proc, sig in runs.values():  # all at once too: each takes seconds to stop
        send(proc, sig)
    for module, (proc, sig) in runs.items():
        stopped = {"enhance": "the flow run and Prefect's temporary server",
                   "enhance serve": "the runner"}.get(module, "the flow run")  # fmt: skip
        out = check_stopped(proc, sig, timeout=60, stopped=stopped)
        assert module == "enhance serve" or "Crash detected!" in out, (module, out)
    assert "Stopping temporary server" in enhance.output
    assert not list((tmp_path / "enhance" / "out").rglob("*.png")), "enhanced past the signal"


def test_server_wrapper_stops_its_command_and_server_on_sigterm(wrapper):
    """N3: the command (and its grandchild) and `prefect server start` stop with the wrapper.
    After the flow tests: they use this server."""
    proc, _ = wrapper
    names = {" ".join(cmdline(c)[:5]) for c in proc.started.values()}
    assert {"sleep 300", "sleep 301"} <= names and any("server start" in n for n in names)
    signal_and_check(proc, signal.SIGTERM, timeout=60, stopped="sh -c 'sleep 300 & sleep 301' "
                     "and the Prefect server")  # fmt: skip


@pytest.mark.parametrize(
    ("sig", "own_server"),
    [
        pytest.param(signal.SIGINT, False, id="SIGINT"),
        pytest.param(signal.SIGINT, True, id="SIGINT-own-server", marks=pytest.mark.slow),
    ],  # fmt: skip
)
def test_server_wrapper_stops_its_command_on_sigint(tmp_path, procs, sig, own_server):
    cmd = [PYTHON, "-m", "flows.server", "--", "sh", "-c", "sleep 300 & sleep 301"]
    proc = Proc(cmd, tmp_path / "tmp", tmp_path, PREFECT_API_URL="" if own_server else NO_SERVER)
    procs.append(proc)
    proc.wait_for("Prefect API", timeout=180)
    proc.wait_started("sleep 300", timeout=30)
    proc.wait_started("sleep 301", timeout=30)
    stopped = "sh -c 'sleep 300 & sleep 301'" + (" and the Prefect server" if own_server else "")
    signal_and_check(proc, sig, timeout=60, stopped=stopped)


# ------------------------------------------------------------------------------ pipeline

STAGE = "echo stage started && sleep 300"  # a shell command, as dvc runs it


@pytest.mark.parametrize("sig", [TERM, INT])
def test_pipeline_stops_dvc_and_its_stage(tmp_path, procs, sig):
    """N3: `python -m flows.pipeline` in a DVC project whose stage runs for minutes: dvc and
    the stage stop with it (PREFECT_API_URL given: no server of its own here; the wrapper's
    test covers the server)."""
    project = tmp_path / "project"
    (project / ".dvc").mkdir(parents=True)  # what `dvc init --no-scm` writes, less a process;
    # no analytics, as the repo's .dvc/config (a stopped dvc leaves their report in TMPDIR)
    (project / ".dvc" / "config").write_text("[core]\n    no_scm = true\n    analytics = false\n")
    (project / "dvc.yaml").write_text(
        f"stages:\n  wait:\n    cmd: {STAGE}\n    always_changed: true\n"
    )
    cmd = [PYTHON, "-m", "flows.pipeline", "wait"]
    proc = Proc(cmd, tmp_path / "tmp", project, PREFECT_API_URL=NO_SERVER)
    procs.append(proc)
    # dvc echoes the command line ("> echo stage started && ...") before it runs it: match the
    # stage's own output, then wait for its sleep (the shell forks it after the echo)
    proc.wait_for(r"^stage started", timeout=120)
    proc.wait_started("sleep 300", timeout=30)
    names = " | ".join(" ".join(cmdline(c)[:3]) for c in proc.started.values())
    assert "repro" in names and "sleep 300" in names, names
    signal_and_check(proc, sig, timeout=60, stopped="dvc repro")


# ----------------------------------------------------------------------------------- ui (N2)


@pytest.mark.parametrize(
    "sig", [TERM, pytest.param(signal.SIGINT, id="SIGINT", marks=pytest.mark.slow)]
)
def test_ui_cancels_its_job_and_deletes_its_folder(tmp_path, procs, sig):
    """N2: `diffenhance ui` with a job running for minutes and (SIGTERM) an upload stalled
    halfway, which uvicorn would wait for forever: the job stops, the folder goes."""
    cmd = [PYTHON, "-m", "diffenhance.cli", "ui", "--port", "0", "--params", str(PARAMS)]
    proc = Proc(cmd, tmp_path / "tmp", tmp_path)
    procs.append(proc)
    base = proc.wait_for(r"(http://127\.0\.0\.1:\d+/)", timeout=120)[1]
    up = api(base, "api/uploads?name=a.png", png(), "application/octet-stream")
    job = api(base, "api/jobs", json.dumps({"upload": up["id"], "model": "sr4", **SLOW}).encode())
    deadline = time.monotonic() + 60
    while api(base, f"api/jobs/{job['id']}")["state"] != "running":
        assert time.monotonic() < deadline, proc.output
        time.sleep(0.1)
    assert any(p.name.startswith("diffenhance-ui-") for p in proc.tmp.iterdir())
    stalled = None
    if sig == signal.SIGTERM:
        port = int(base.rstrip("/").rsplit(":", 1)[1])
        stalled = socket.create_connection(("127.0.0.1", port))
        stalled.sendall(b"POST /api/uploads?name=b.png HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                        b"Content-Type: application/octet-stream\r\nContent-Length: 100000\r\n"
                        b"\r\nabc")  # fmt: skip
    time.sleep(0.5)
    try:
        signal_and_check(proc, sig, timeout=30,
                         stopped="the jobs and deleted the uploads and outputs")  # fmt: skip
    finally:
        if stalled is not None:
            stalled.close()


@pytest.mark.parametrize(
    "sig", [TERM, pytest.param(signal.SIGINT, id="SIGINT", marks=pytest.mark.slow)]
)
def test_enhance_command_stops_and_releases_its_output(tmp_path, procs, sig):
    """`diffenhance enhance` with an image being enhanced for minutes: it stops at its next
    network call, writes no image and releases the output's lock (a second job may start)."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.png").write_bytes(png())
    out = tmp_path / "out"
    cmd = [PYTHON, "-m", "diffenhance.cli", "enhance", str(tmp_path / "in"), str(out), "-m",
           "sr4", "--params", str(PARAMS), *SLOW_OVERRIDES]  # fmt: skip
    proc = Proc(cmd, tmp_path / "tmp", tmp_path, PREFECT_API_URL=NO_SERVER)
    procs.append(proc)
    lock = out / "_diffenhance" / "lock.json"
    deadline = time.monotonic() + 120
    while not lock.exists():
        assert proc.p.poll() is None and time.monotonic() < deadline, proc.output
        time.sleep(0.1)
    time.sleep(1.0)  # inside the sampling loop
    signal_and_check(proc, sig, timeout=30, stopped="the job (finished images are kept")
    assert not lock.exists() and not list(out.rglob("*.png")), sorted(out.rglob("*"))


# `python -c LATE_INTERRUPT`: run_command starts `sleep 30`, and the interrupt lands while
# subprocess.Popen is still returning (the real Popen, then the real signal to this process):
# the race a Ctrl-C at a stage's start runs into.
LATE_INTERRUPT = """
import os, signal, subprocess, time
import flows.server as server
from diffenhance.signals import Interrupted, stop_signals

class Late(subprocess.Popen):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        print("child", self.pid, flush=True)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.5)  # the handler runs in here
        print("Popen returned", flush=True)

server.subprocess.Popen = Late
try:
    with stop_signals():
        server.run_command(["sleep", "30"])
except Interrupted as e:
    print("interrupted", e.signum, flush=True)
"""


def test_an_interrupt_while_a_command_starts_still_stops_it():
    """`flows.server.run_command` holds a stop signal that arrives inside Popen (`signals.held`)
    until the child is known, then stops the child's group: nothing is left running."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}
    r = subprocess.run([PYTHON, "-c", LATE_INTERRUPT], capture_output=True, text=True, env=env,
                       cwd=REPO, timeout=60)  # fmt: skip
    pid = int(re.search(r"child (\d+)", r.stdout).group(1))
    try:
        left = alive([psutil.Process(pid)])
    except psutil.NoSuchProcess:
        left = []
    try:
        assert "Popen returned" in r.stdout, r.stdout + r.stderr  # the signal waited for it
        assert f"interrupted {int(signal.SIGINT)}" in r.stdout, r.stdout + r.stderr
        assert not left, f"left running: {left}\n{r.stdout}{r.stderr}"
    finally:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def test_held_raises_a_stop_signal_as_its_body_ends():
    """Inside `held()` a stop signal waits for the body; outside `stop_signals` it is inert."""
    code = """
import os, signal, time
from diffenhance.signals import Interrupted, held, stop_signals
done = []
try:
    with stop_signals():
        with held():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.3)
            done.append("body")
        done.append("after")
except Interrupted as e:
    done.append(f"interrupted {e.signum}")
with held():
    done.append("inert")
print(done)
"""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    r = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert r.stdout.strip() == f"['body', 'interrupted {int(signal.SIGTERM)}', 'inert']", (
        r.stdout + r.stderr
    )
