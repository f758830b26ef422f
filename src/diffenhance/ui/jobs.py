"""What the web UI does, without the web: keep uploads, list models, run enhancement jobs.

A job runs exactly what `diffenhance enhance UPLOAD OUTDIR -m MODEL [overrides]` runs: the
upload is a file on disk, its settings go through `enhance_config` (the CLI's resolution),
then `plan_job` + `run_job` (the CLI's calls) write the output file, whose bytes are what the
page shows and downloads. Jobs run one at a time in a background thread (inference already
uses every core); the page polls `JobRunner.status`.
"""

from __future__ import annotations

import itertools
import logging
import secrets
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diffenhance.config import TASKS, Config
from diffenhance.io import ImageReadError, read_image, read_image_info, write_image

log = logging.getLogger(__name__)

KEEP = 32  # finished jobs and unused uploads kept on disk; older ones are deleted
UNCERTAINTY_SUFFIX = ".uncertainty.png"  # beside each output (infer.uncertainty)


class UiError(ValueError):
    """A request the UI refuses; the message is shown in the page as is."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Upload:
    """An uploaded image, decoded once to check it and to make the page's preview."""

    id: str
    name: str  # the browser's file name (shown, never used as a path)
    path: Path  # <root>/uploads/<id>/input<suffix>: what the job reads
    width: int
    height: int
    mode: str
    bit_depth: int

    @property
    def preview(self) -> Path:
        """An 8-bit PNG of the decoded pixels (any input format displays in a browser)."""
        return self.path.with_name("preview.png")

    def describe(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "width": self.width, "height": self.height,
                "mode": self.mode, "bit_depth": self.bit_depth}  # fmt: skip


def save_upload(root: Path, name: str, data: bytes, cfg: Config) -> Upload:
    """Store an uploaded file under `root` and check that it decodes as `enhance` reads it.

    Raises UiError (nothing kept) for a type outside enhance.extensions or a file read_image
    refuses: not an image, corrupt, truncated, or over enhance.max_pixels (a decompression
    bomb is refused from its header, before any decoding)."""
    suffix = Path(name).suffix.lower()
    if suffix not in cfg.enhance.extensions:
        allowed = " ".join(cfg.enhance.extensions)
        raise UiError(f"{name}: not a supported image type (expected one of {allowed})")
    folder = root / "uploads" / secrets.token_hex(8)
    folder.mkdir(parents=True)
    path = folder / f"input{suffix}"
    try:
        path.write_bytes(data)
        try:
            info = read_image_info(path)
            img = read_image(path, max_pixels=cfg.enhance.max_pixels)
        except ImageReadError as e:
            raise UiError(f"{name}: {e.reason}") from None
        write_image(folder / "preview.png", img)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    h, w = img.shape[:2]
    return Upload(folder.name, name, path, w, h, str(info["mode"]), int(info["bit_depth"]))


def model_info(value: str) -> dict[str, Any]:
    """What the page shows of a model (a task name, model dir or .safetensors file): task,
    scale, formulation and the steps/samples it runs with when none are given.

    Raises EnhanceError / CheckpointError (one line naming the file) for a bad model."""
    from diffenhance.diffusion.formulations import get_formulation
    from diffenhance.enhance import model_file
    from diffenhance.model import recommended_sampling, validate_checkpoint

    spec = validate_checkpoint(model_file(value))
    steps, samples = recommended_sampling(spec)
    f = spec.diffusion_cfg.formulation
    return {"value": value, "task": spec.task, "scale": spec.scale, "formulation": f,
            "steps": steps, "samples": samples, "has_knob": get_formulation(f).has_knob}  # fmt: skip


def list_models(models_dir: Path) -> list[dict[str, Any]]:
    """The shipped model of each task (by task name, as `enhance -m sr4`), then every model dir
    under `models_dir` holding a model.safetensors; unreadable ones are left out (logged)."""
    from diffenhance.enhance import model_file, pretrained_model
    from diffenhance.model import WEIGHTS_NAME

    shipped = [(t, f"{t} (shipped)") for t in TASKS if pretrained_model(t) is not None]
    found = sorted(p.parent for p in models_dir.rglob(WEIGHTS_NAME)) if models_dir.is_dir() else []
    seen: set[Path] = set()
    models = []
    for value, label in shipped + [(str(d), str(d)) for d in found]:
        try:
            f = model_file(value)
            if f in seen:
                continue
            seen.add(f)
            models.append({**model_info(value), "label": label})
        except ValueError as e:  # EnhanceError, CheckpointError
            log.warning("ui: leaving out model %s: %s", value, e)
    return models


@dataclass
class Job:
    """One enhancement request and what became of it."""

    id: str
    folder: Path  # <root>/jobs/<id>: the output folder is out/ in here
    upload: Upload
    model: str
    steps: int | None = None  # None: the model's recommendation (as `enhance` without --steps)
    samples: int | None = None
    mask: Upload | None = None  # inpainting: white = fill (enhance.mask)
    uncertainty: bool = False  # infer.uncertainty: a map beside the output
    state: str = "queued"  # queued | running | done | failed
    message: str = ""
    created: float = field(default_factory=time.monotonic)
    started: float | None = None
    finished: float | None = None
    output: Path | None = None

    def settings(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """(enhance.*, infer.*) as `diffenhance enhance` gets them; the mask and uncertainty
        keys only when used, so a version without them runs everything else."""
        enhance = {"input": str(self.upload.path), "output": str(self.folder / "out"),
                   "model": self.model, "mask": self.mask and str(self.mask.path)}  # fmt: skip
        infer = {"steps": self.steps, "samples": self.samples,
                 "uncertainty": True if self.uncertainty else None}  # fmt: skip
        return enhance, infer

    @property
    def download_name(self) -> str | None:
        """`<upload stem>-enhanced<output suffix>`: what the page's download saves."""
        if self.output is None:
            return None
        return f"{Path(self.upload.name).stem}-enhanced{self.output.suffix}"

    @property
    def uncertainty_map(self) -> Path | None:
        if self.output is None:
            return None
        p = self.output.with_name(self.output.stem + UNCERTAINTY_SUFFIX)
        return p if p.is_file() else None


def enhance_upload(cfg: Config, job: Job) -> Path:
    """Run `job` through the CLI's enhance path; the written output file.

    Raises what `diffenhance enhance` stops on (ConfigError, EnhanceError, CheckpointError)
    and UiError with the recorded reason when the image itself failed."""
    from diffenhance.enhance import plan_job, run_job
    from diffenhance.enhance.settings import enhance_config

    enhance, infer = job.settings()
    job_cfg = enhance_config(cfg, enhance, infer)
    planned = plan_job(job_cfg)
    summary = run_job(job_cfg, job=planned)
    for problem in summary["failures"] + summary["shard_errors"]:
        raise UiError(problem["reason"])
    (src,) = planned.shards[0].sources
    return Path(planned.output_url) / src.output_key


class Workspace:
    """The uploads and jobs of one UI server, in a folder of its own (deleted by `close`).

    Jobs run one at a time on a background thread; the KEEP newest finished jobs and uploads
    stay on disk (older ones are deleted as new ones arrive)."""

    def __init__(self, cfg: Config, root: Path) -> None:
        self.cfg, self.root = cfg, root
        self.uploads: dict[str, Upload] = {}
        self.jobs: dict[str, Job] = {}
        self.lock = threading.Lock()
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="diffenhance-ui")
        self.ids = (f"{i:04d}-{secrets.token_hex(4)}" for i in itertools.count(1))

    def add_upload(self, name: str, data: bytes) -> Upload:
        up = save_upload(self.root, name, data, self.cfg)
        with self.lock:
            self.uploads[up.id] = up
            self._prune()
        return up

    def upload(self, upload_id: str) -> Upload:
        with self.lock:
            up = self.uploads.get(upload_id)
        if up is None:
            raise UiError(f"no upload {upload_id!r} (expired: upload the image again)", 404)
        return up

    def job(self, job_id: str) -> Job:
        with self.lock:
            job = self.jobs.get(job_id)
        if job is None:
            raise UiError(f"no job {job_id!r}", 404)
        return job

    def submit(self, upload_id: str, model: str, *, steps: int | None = None,
               samples: int | None = None, mask_id: str | None = None,
               uncertainty: bool = False) -> Job:  # fmt: skip
        """Queue a job on an upload (and mask upload); it starts when the ones before it end."""
        if not model.strip():
            raise UiError("choose a model, or type a model dir or .safetensors path")
        mask = self.upload(mask_id) if mask_id else None
        job_id = next(self.ids)
        job = Job(job_id, self.root / "jobs" / job_id, self.upload(upload_id), model.strip(),
                  steps, samples, mask, uncertainty)  # fmt: skip
        with self.lock:
            self.jobs[job.id] = job
        self.pool.submit(self._run, job)
        return job

    def _run(self, job: Job) -> None:
        from diffenhance.exitcodes import user_error_code

        job.state, job.started = "running", time.monotonic()
        try:
            job.output = enhance_upload(self.cfg, job)
            job.state = "done"
        except Exception as e:  # a message in the page; a bug also keeps its traceback here
            if not isinstance(e, UiError) and user_error_code(e) is None:
                log.exception("ui: job %s failed", job.id)
            job.message, job.state = self._message(e, job), "failed"
        finally:
            job.finished = time.monotonic()
            with self.lock:
                self._prune()

    def _message(self, e: Exception, job: Job) -> str:
        """The error as the page shows it: the user's file names, not this server's folders."""
        from diffenhance.exitcodes import user_error_code

        ours = isinstance(e, UiError) or user_error_code(e) is not None
        text = str(e) if ours else f"{type(e).__name__}: {e}"
        for up in (job.upload, job.mask):
            if up is not None:
                text = text.replace(str(up.path), up.name).replace(str(up.path.parent), "")
        return text.replace(str(job.folder / "out"), "<output>").replace(str(self.root), "")

    def status(self, job: Job) -> dict[str, Any]:
        """What the page polls: state, seconds so far, jobs ahead, the message or the result."""
        end = job.finished or time.monotonic()
        with self.lock:
            ahead = sum(1 for j in self.jobs.values() if j.state in ("queued", "running")
                        and j.created < job.created)  # fmt: skip
        out: dict[str, Any] = {
            "id": job.id, "state": job.state, "message": job.message, "ahead": ahead,
            "seconds": round(end - job.started, 1) if job.started is not None else 0.0,
        }  # fmt: skip
        if job.output is not None:
            w, h = read_image_info(job.output)["size"]
            out["output"] = {"name": job.download_name, "width": w, "height": h}
            out["uncertainty"] = job.uncertainty_map is not None
        return out

    def _prune(self) -> None:
        """Delete the oldest finished jobs and unused uploads beyond KEEP (lock held)."""
        finished = [j for j in self.jobs.values() if j.state in ("done", "failed")]
        for j in finished[: max(0, len(finished) - KEEP)]:
            del self.jobs[j.id]
            shutil.rmtree(j.folder, ignore_errors=True)
        busy = {u.id for j in self.jobs.values() if j.state in ("queued", "running")
                for u in (j.upload, j.mask) if u is not None}  # fmt: skip
        idle = [u for u in self.uploads.values() if u.id not in busy]
        for u in idle[: max(0, len(idle) - KEEP)]:
            del self.uploads[u.id]
            shutil.rmtree(u.path.parent, ignore_errors=True)

    def close(self) -> None:
        """Stop taking jobs, wait for the running one, delete the folder."""
        self.pool.shutdown(wait=True, cancel_futures=True)
        shutil.rmtree(self.root, ignore_errors=True)
