"""The `diffenhance ui` web app: one static page and a small JSON API over a `Workspace`.

    GET  /                              the page (static/index.html: plain JS/CSS, offline)
    GET  /favicon.ico                   the page's icon (an SVG)
    GET  /api/info                      models (each with its presets), the one selected at
                                        first, image extensions, upload and job limits
    POST /api/model        {"path"}     a typed model path checked: task, scale, presets
    POST /api/uploads?name=N            raw image bytes (application/octet-stream) -> upload
    GET  /api/uploads/{id}/preview.png  the decoded upload as an 8-bit PNG
    POST /api/jobs         {"upload", "model", "preset", "steps", "samples", "detail", "mask",
                            "uncertainty"}   preset: a name of the model's (null: its default);
                                        steps/samples/detail given override the preset's
    GET  /api/jobs/{id}                 state, seconds, tiles done / total (null: not
                                        counted), jobs ahead, the settings it runs with
                                        (preset, steps, samples, detail), message or output
    POST /api/jobs/{id}/cancel          stop it: queued at once, running at its next network
                                        call (state "cancelled"); the next queued job starts
    GET  /api/jobs/{id}/output          the output file as `enhance` wrote it (?download=1)
    GET  /api/jobs/{id}/preview         the output as a browser shows it (TIFF -> PNG)
    GET  /api/jobs/{id}/uncertainty.png the uncertainty map (infer.uncertainty)

Every error reaches the page as {"error": message} with a 4xx status (a bug: 500, its
traceback in the server's log only). Every knob is bounded (`jobs.Limits`: steps, samples,
detail, the pixels of an upload; a 400 says the limit) and a job running past its time limit
ends "timed_out", so no request can hold the server. Only requests naming this machine as the host are served
(a web page elsewhere cannot drive it through DNS rebinding); uploads must be sent as
application/octet-stream and jobs as JSON, which browsers do not send across origins unasked.
`serve` runs it until SIGINT or SIGTERM, which cancel the jobs at once and delete the
uploads and outputs, however many requests are still open.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import tempfile
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from types import FrameType

import uvicorn
from fastapi import APIRouter, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from pydantic import BaseModel
from starlette.exceptions import HTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware

from diffenhance.config import Config
from diffenhance.io import read_icc_profile, read_image, write_image
from diffenhance.signals import STOP_SIGNALS
from diffenhance.ui.jobs import (
    Job,
    Limits,
    UiError,
    Workspace,
    default_model,
    list_models,
    model_info,
)

log = logging.getLogger(__name__)

MAX_UPLOAD_BYTES = 256 * 1024 * 1024  # a 16-bit 8K TIFF fits; larger bodies are refused
BROWSER_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp")  # shown as written
LOCAL_HOSTS = ("127.0.0.1", "localhost")
SHUTDOWN_GRACE_S = 3.0  # requests still open at a stop signal (an upload arriving) get this long
# the page's icon (index.html links it): a before/after square; served, so that no browser
# asking for /favicon.ico (a preview opened in a tab too) gets a 404
FAVICON_SVG = (
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16">'
    '<rect width="16" height="16" rx="3" fill="#2f62d8"/>'
    '<path d="M8 2h5a1 1 0 0 1 1 1v10a1 1 0 0 1-1 1H8z" fill="#fff" opacity=".85"/></svg>'
)


class ModelQuery(BaseModel):
    path: str


class JobRequest(BaseModel):
    upload: str
    model: str
    preset: str | None = None  # one of the model's (fidelity, balanced, detail); None: its default
    steps: int | None = None  # None: the preset's
    samples: int | None = None
    detail: float | None = None  # models with a detail knob; None: the preset's
    mask: str | None = None  # an upload id (white = fill)
    uncertainty: bool = False


def _error(message: str, status: int) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _install_error_handlers(app: FastAPI) -> None:
    """Every failure as {"error": message}: the page shows the message, never a traceback."""

    @app.exception_handler(UiError)
    async def ui_error(_: Request, e: UiError) -> JSONResponse:
        return _error(str(e), e.status)

    @app.exception_handler(RequestValidationError)
    async def bad_request(_: Request, e: RequestValidationError) -> JSONResponse:
        why = "; ".join(f"{'.'.join(map(str, x['loc'][1:]))}: {x['msg']}" for x in e.errors())
        return _error(f"bad request: {why}", 400)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, e: HTTPException) -> JSONResponse:
        return _error(str(e.detail), e.status_code)

    @app.exception_handler(Exception)
    async def bug(_: Request, e: Exception) -> JSONResponse:
        log.error("ui: internal error", exc_info=e)
        return _error(f"internal error ({type(e).__name__}); see the server's log", 500)


async def _body(request: Request, limit: int) -> bytes:
    """The request body, refused past `limit` bytes without reading the rest."""
    if request.headers.get("content-type", "").split(";")[0] != "application/octet-stream":
        raise UiError("send the image as the body with Content-Type: application/octet-stream")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise UiError(f"the upload is larger than {limit // (1024 * 1024)} MiB", 413)
        chunks.append(chunk)
    return b"".join(chunks)


def _png_of(path: Path, cache: Path) -> Path:
    """`path` as the browser can show it: itself, else an 8-bit PNG made once into `cache`,
    with the file's colour profile."""
    if path.suffix.lower() in BROWSER_SUFFIXES:
        return path
    if not cache.is_file():
        write_image(cache, read_image(path), icc_profile=read_icc_profile(path))
    return cache


@dataclass(frozen=True)
class UiSettings:
    """What the routes need besides the workspace (`app.state.ui`)."""

    cfg: Config
    models_dir: Path
    max_upload_bytes: int
    limits: Limits


router = APIRouter()


def _ws(request: Request) -> Workspace:
    return request.app.state.workspace


def _ui(request: Request) -> UiSettings:
    return request.app.state.ui


@router.get("/", response_class=HTMLResponse)
def index() -> HTMLResponse:
    page = (files("diffenhance.ui") / "static" / "index.html").read_text(encoding="utf-8")
    return HTMLResponse(page, headers={"Cache-Control": "no-store"})


@router.get("/favicon.ico")
def favicon() -> Response:
    return Response(FAVICON_SVG, media_type="image/svg+xml",
                    headers={"Cache-Control": "max-age=86400"})  # fmt: skip


@router.get("/api/info")
def info(request: Request) -> dict:
    ui = _ui(request)
    models = list_models(ui.models_dir)
    return {
        "models": models,
        "default_model": default_model(ui.cfg, models),
        "extensions": list(ui.cfg.enhance.extensions),
        "max_upload_bytes": ui.max_upload_bytes,
        "limits": ui.limits.describe(),
    }  # fmt: skip


@router.post("/api/model")
def check_model(q: ModelQuery) -> dict:
    try:
        return model_info(q.path.strip())
    except ValueError as e:  # EnhanceError, CheckpointError: one line naming the file
        raise UiError(str(e)) from None


@router.post("/api/uploads")
async def upload(request: Request, name: str = "upload") -> dict:
    data = await _body(request, _ui(request).max_upload_bytes)
    up = await run_in_threadpool(_ws(request).add_upload, name, data)
    return up.describe()


@router.get("/api/uploads/{upload_id}/preview.png")
def upload_preview(request: Request, upload_id: str) -> FileResponse:
    return FileResponse(_ws(request).upload(upload_id).preview, media_type="image/png")


@router.post("/api/jobs")
def submit(request: Request, r: JobRequest) -> dict:
    ws = _ws(request)
    job = ws.submit(r.upload, r.model, steps=r.steps, samples=r.samples, mask_id=r.mask,
                    uncertainty=r.uncertainty, preset=r.preset, detail=r.detail)  # fmt: skip
    return ws.status(job)


@router.post("/api/jobs/{job_id}/cancel")
def cancel(request: Request, job_id: str) -> dict:
    ws = _ws(request)
    job = ws.job(job_id)
    ws.cancel(job)
    return ws.status(job)


@router.get("/api/jobs/{job_id}")
def status(request: Request, job_id: str) -> dict:
    ws = _ws(request)
    return ws.status(ws.job(job_id))


def _finished(request: Request, job_id: str) -> tuple[Job, Path]:
    job = _ws(request).job(job_id)
    if job.output is None:
        raise UiError(f"job {job_id} has no output ({job.state})", 409)
    return job, job.output


@router.get("/api/jobs/{job_id}/output")
def output(request: Request, job_id: str, download: bool = False) -> FileResponse:
    job, path = _finished(request, job_id)
    how = "attachment" if download else "inline"
    return FileResponse(path, filename=job.download_name, content_disposition_type=how)


@router.get("/api/jobs/{job_id}/preview")
def output_preview(request: Request, job_id: str) -> FileResponse:
    job, path = _finished(request, job_id)
    return FileResponse(_png_of(path, job.folder / "preview.png"))


@router.get("/api/jobs/{job_id}/uncertainty.png")
def uncertainty(request: Request, job_id: str) -> FileResponse:
    job, _ = _finished(request, job_id)
    if job.uncertainty_map is None:
        raise UiError(f"job {job_id} has no uncertainty map (tick 'uncertainty')", 404)
    return FileResponse(job.uncertainty_map, media_type="image/png")


def create_app(
    cfg: Config,
    *,
    models_dir: Path = Path("models"),
    hosts: Sequence[str] = LOCAL_HOSTS,
    max_upload_bytes: int = MAX_UPLOAD_BYTES,
    limits: Limits | None = None,
) -> FastAPI:
    """The app for params `cfg` (what `diffenhance enhance` would load), listing the model
    dirs under `models_dir`; served only to requests for `hosts` ("*": any); `limits`: the
    bounds of a request and a job's time limit (default `Limits()`).

    Its uploads and outputs live in a temporary folder made at startup, deleted at shutdown."""
    limits = limits or Limits()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        ws = Workspace(cfg, Path(tempfile.mkdtemp(prefix="diffenhance-ui-")), limits)
        app.state.workspace = ws
        try:
            yield
        finally:
            await run_in_threadpool(ws.close)

    app = FastAPI(title="diffenhance", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)  # fmt: skip
    app.state.ui = UiSettings(cfg, models_dir, max_upload_bytes, limits)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(hosts))
    _install_error_handlers(app)
    app.include_router(router)
    return app


# ----------------------------------------------------------------------------- serving


class _Server(uvicorn.Server):
    """uvicorn's server, stopped by SIGINT or SIGTERM as a command is.

    The first signal cancels every job at once: uvicorn shuts the app down (its lifespan:
    `Workspace.close`) only after the open requests end, which a stalled upload never does.
    After shutdown the signal is returned (`stop_signal`), not raised again as uvicorn does,
    so that the caller still deletes the workspace and says what it stopped."""

    def __init__(self, config: uvicorn.Config, workspace: Callable[[], Workspace | None]) -> None:
        super().__init__(config)
        self.workspace = workspace
        self.stop_signal: int | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.stop_signal is None:
            self.stop_signal = sig
            if (ws := self.workspace()) is not None:  # on a thread: cancelling takes the
                # workspace's lock, which the thread this handler interrupted may hold
                threading.Thread(target=ws.cancel_all, name="ui-stop", daemon=True).start()
        super().handle_exit(sig, frame)  # a second SIGINT: uvicorn's forced exit

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        previous = {s: signal.signal(s, self.handle_exit) for s in STOP_SIGNALS}
        try:
            yield
        finally:
            for s, h in previous.items():
                signal.signal(s, h)


class _NoCancelledTracebacks(logging.Filter):
    """Drops the traceback uvicorn logs for each request it cuts off at shutdown (past
    SHUTDOWN_GRACE_S; it has said how many in one line before)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, asyncio.CancelledError)


def serve(app: FastAPI, sock: socket.socket) -> int | None:
    """Serve `app` (`create_app`) on the listening `sock` until SIGINT or SIGTERM; the signal
    that stopped it (None: it stopped otherwise).

    On the signal every job is cancelled at once (a running one stops at its next network
    call), open requests get SHUTDOWN_GRACE_S, then the workspace folder is deleted: also
    after a second signal, which skips the app's own shutdown."""
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=SHUTDOWN_GRACE_S)
    server = _Server(config, lambda: getattr(app.state, "workspace", None))
    quiet = _NoCancelledTracebacks()
    logging.getLogger("uvicorn.error").addFilter(quiet)
    try:
        server.run(sockets=[sock])
    finally:
        logging.getLogger("uvicorn.error").removeFilter(quiet)
        if (ws := getattr(app.state, "workspace", None)) is not None:
            ws.close()  # done already unless a second signal forced the exit
    return server.stop_signal
