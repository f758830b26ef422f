"""What the web UI does, without the web: keep uploads, list models, run enhancement jobs.

A job runs exactly what `diffenhance enhance UPLOAD OUTDIR -m MODEL [overrides]` runs: the
upload is a file on disk, its settings go through `enhance_config` (the CLI's resolution),
then `plan_job` + `run_job` (the CLI's calls) write the output file, whose bytes are what the
page shows and downloads. Jobs run one at a time in a background thread (inference already
uses every core); the page polls `Workspace.status`.

No request can tie the server up (`Limits`): steps, samples and detail are range-checked and
an upload's pixels bounded (a 400 naming the limit), a queued job can be cancelled at once
and a running one at its next network call, and a job running past `Limits.job_seconds` is
stopped ("timed out after N s"); the next queued job then starts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import secrets
import shutil
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diffenhance.config import Config
from diffenhance.io import (
    ImageReadError,
    read_icc_profile,
    read_image,
    read_image_info,
    write_image,
)

log = logging.getLogger(__name__)

KEEP = 32  # finished jobs and unused uploads kept on disk; older ones are deleted
UNCERTAINTY_SUFFIX = ".uncertainty.png"  # beside each output (infer.uncertainty)

# What one request may ask for (the defaults of `Limits`; `create_app(limits=...)` changes them)
MAX_STEPS = 50  # sampler steps: the page's slider; the output hardly changes past ~20
MAX_SAMPLES = 32  # samples averaged: the cost grows with them, the mean settles long before
MAX_PIXELS = 4096 * 4096  # input pixels (a 16 MP photo; sr4 makes it 16384 x 16384)
JOB_SECONDS = 300.0  # a job running longer is stopped: "timed out after 300 s"

ACTIVE = ("queued", "running")
ENDED = ("done", "failed", "cancelled", "timed_out")


class UiError(ValueError):
    """A request the UI refuses; the message is shown in the page as is."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class JobStopped(BaseException):
    """Raised in a running job's thread, at its next network call, once it is cancelled or
    past its time limit. A BaseException (as KeyboardInterrupt): no `except Exception` of the
    enhance path records it as a failed image and goes on, so the job ends at once."""


@dataclass(frozen=True)
class Limits:
    """The bounds of every knob the API takes; a request past one is refused with a 400 that
    says the limit. Larger work is for `diffenhance enhance`, which has none of these."""

    steps: int = MAX_STEPS
    samples: int = MAX_SAMPLES
    pixels: int = MAX_PIXELS  # per upload (and below enhance.max_pixels, the params' own)
    job_seconds: float = JOB_SECONDS  # running time of a job (its queue time not counted)

    def describe(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def check(self, steps: int | None, samples: int | None, detail: float | None) -> None:
        """UiError naming the limit when a given value is outside it (None: not given)."""
        for name, v, top in (("steps", steps, self.steps), ("samples", samples, self.samples)):
            if v is not None and not 1 <= v <= top:
                raise UiError(f"{name} must be between 1 and {top} (the UI's limit), got {v}")
        if detail is not None and not 0.0 <= detail <= 1.0:
            raise UiError(f"detail must be between 0 and 1, got {detail:g}")


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


def save_upload(
    root: Path, name: str, data: bytes, cfg: Config, max_pixels: int = MAX_PIXELS
) -> Upload:
    """Store an uploaded file under `root` and check that it decodes as `enhance` reads it.

    Raises UiError (nothing kept) for a type outside enhance.extensions or a file read_image
    refuses: not an image, corrupt, truncated, or over `max_pixels` (or enhance.max_pixels,
    when lower) pixels, refused from its header before any decoding (a decompression bomb)."""
    suffix = Path(name).suffix.lower()
    if suffix not in cfg.enhance.extensions:
        allowed = " ".join(cfg.enhance.extensions)
        raise UiError(f"{name}: not a supported image type (expected one of {allowed})")
    limit = min(max_pixels, cfg.enhance.max_pixels)
    folder = root / "uploads" / secrets.token_hex(8)
    folder.mkdir(parents=True)
    path = folder / f"input{suffix}"
    try:
        path.write_bytes(data)
        try:
            info = read_image_info(path)
            w, h = info["size"]
            if w * h > limit:
                raise UiError(
                    f"{name}: {w} x {h} = {w * h} pixels, over the limit of {limit} pixels per "
                    "image; shrink it, or enhance it with `diffenhance enhance`"
                )
            img = read_image(path, max_pixels=limit)
            # with the file's colour profile, as the output keeps it: a Display P3 photo's
            # preview and result show the same colours
            icc = read_icc_profile(path)
        except ImageReadError as e:
            raise UiError(f"{name}: {e.reason}") from None
        write_image(folder / "preview.png", img, icc_profile=icc)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    h, w = img.shape[:2]
    return Upload(folder.name, name, path, w, h, str(info["mode"]), int(info["bit_depth"]))


def model_info(value: str) -> dict[str, Any]:
    """What the page shows of a model (a task name, model dir or .safetensors file): task,
    scale, formulation, its presets of the fidelity/detail knob ({name: {steps, samples,
    detail}}, `model.presets`), the one it runs by default (`preset`) and that preset's
    steps/samples.

    Raises EnhanceError / CheckpointError (one line naming the file) for a bad model, and
    ValueError when its default preset is not among its presets."""
    from diffenhance.diffusion.formulations import get_formulation
    from diffenhance.enhance import model_file
    from diffenhance.model import default_preset, presets, sampling, validate_checkpoint
    from diffenhance.restoration import get_task

    spec = validate_checkpoint(model_file(value))
    steps, samples, _ = sampling(spec, None, None)  # its default preset's (a header will do)
    f = get_formulation(spec.diffusion_cfg.formulation)
    return {"value": value, "task": spec.task, "scale": spec.scale,
            "side_inputs": list(get_task(spec.task).side_inputs),  # e.g. ["mask"]: inpainting
            "formulation": spec.diffusion_cfg.formulation, "steps": steps, "samples": samples,
            "has_knob": f.has_knob, "detail_knob": f.detail_knob, "presets": presets(spec),
            "preset": default_preset(spec)}  # fmt: skip


def list_models(models_dir: Path) -> list[dict[str, Any]]:
    """The shipped model of each task (by task name, as `enhance -m sr4`), then every model dir
    under `models_dir` holding a model.safetensors; unreadable ones are left out (logged)."""
    from diffenhance.enhance import model_file, pretrained_model
    from diffenhance.model import WEIGHTS_NAME
    from diffenhance.restoration import task_names

    shipped = [(t, f"{t} (shipped)") for t in task_names() if pretrained_model(t) is not None]
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


def default_model(cfg: Config, models: list[dict[str, Any]]) -> str | None:
    """The `value` of the model in `models` (`list_models`) the page selects at first: the one
    `diffenhance enhance` runs without -m (enhance.model), else the first of the pipeline's
    main task (train.tasks[0]), else the first listed; None when none is listed."""
    from diffenhance.enhance import model_file

    def weights(value: str) -> Path | None:
        try:
            return model_file(value)
        except ValueError:  # EnhanceError: no model there
            return None

    # the CLI's default, so that the page starts where `enhance` does (not on sr2, listed first)
    cli = weights(cfg.enhance.model)
    if cli is not None:
        for m in models:
            if weights(m["value"]) == cli:
                return m["value"]
    main = [m["value"] for m in models if cfg.train.tasks and m["task"] == cfg.train.tasks[0]]
    return (main or [m["value"] for m in models] or [None])[0]


def ran_with(model_path: str | Path, infer: Any) -> dict[str, Any]:
    """The preset, steps, samples and detail that `infer` (an InferConfig) runs the model file
    with, as the enhance path resolves them (`restore.sampling_spec`: the preset's values, each
    one given overriding it); preset None where steps alone set the detail
    (`restore.implied_detail`: no preset's). ValueError, as sampling_spec raises it, for a
    preset the model lacks or detail on a model without a detail knob."""
    from diffenhance.model import default_preset, validate_checkpoint
    from diffenhance.restore import implied_detail, sampling_spec

    ckpt = validate_checkpoint(model_path)
    spec = sampling_spec(ckpt, infer)
    preset = None if implied_detail(ckpt, infer) is not None else default_preset(ckpt)
    return {"preset": infer.preset or preset, "steps": spec.steps,
            "samples": spec.samples, "detail": spec.detail}  # fmt: skip


@dataclass
class Job:
    """One enhancement request and what became of it."""

    id: str
    folder: Path  # <root>/jobs/<id>: the output folder is out/ in here
    upload: Upload
    model: str
    steps: int | None = None  # None: the preset's (as `enhance` without --steps)
    samples: int | None = None
    mask: Upload | None = None  # inpainting: white = fill (enhance.mask)
    uncertainty: bool = False  # infer.uncertainty: a map beside the output
    preset: str | None = None  # infer.preset; None: the model's default preset
    detail: float | None = None  # infer.detail (models with a detail knob); None: the preset's
    state: str = "queued"  # queued | running | done | failed | cancelled | timed_out
    message: str = ""
    created: float = field(default_factory=time.monotonic)
    started: float | None = None
    finished: float | None = None
    deadline: float | None = None  # time.monotonic() past which a running job is stopped
    output: Path | None = None
    used: dict[str, Any] | None = None  # the preset, steps, samples and detail it runs with
    tiles_done: int | None = None  # progress of a running job; None: not counted (yet)
    tiles_total: int | None = None
    stop: threading.Event = field(default_factory=threading.Event, repr=False)
    future: Future | None = field(default=None, repr=False)

    def settings(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """(enhance.*, infer.*) as `diffenhance enhance` gets them; the mask, uncertainty,
        preset and detail keys only when used, so a version without them runs the rest."""
        enhance = {"input": str(self.upload.path), "output": str(self.folder / "out"),
                   "model": self.model, "mask": self.mask and str(self.mask.path)}  # fmt: skip
        infer = {"steps": self.steps, "samples": self.samples, "preset": self.preset,
                 "detail": self.detail,
                 "uncertainty": True if self.uncertainty else None}  # fmt: skip
        return enhance, infer

    def tiles_progress(self, done: int, total: int) -> None:
        """The engine's progress (`enhance.OnTiles`): what the status JSON reports."""
        self.tiles_total, self.tiles_done = total, done

    def check(self) -> None:
        """Raise JobStopped ("cancelled" or "timed_out") when the job is to stop."""
        if self.stop.is_set():
            raise JobStopped("cancelled")
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise JobStopped("timed_out")

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


_current = threading.local()  # .job: the Job this thread is running (None: none)
_hook_lock = threading.Lock()
_hook: list[Any] = []  # the handle of the process's one stop hook, once registered


def _stop_check(module: Any, args: Any) -> None:
    """Torch forward pre-hook: stop this thread's job, if it runs one and is to stop."""
    job = getattr(_current, "job", None)
    if job is not None:
        job.check()


@contextmanager
def stoppable(job: Job) -> Iterator[None]:
    """Run `job` in this thread so that it stops (JobStopped) at its next network call once
    cancelled or past its deadline: between tiles, samples and sampler steps alike.

    The enhance path has no stop hook of its own (`infer.TiledEnhancer` runs every tile it is
    given), so this is torch's global module forward pre-hook, registered once per process
    (never added or removed while another thread runs a network) and a no-op in any thread
    not running a job. It raises before a network call, never while an output is written, so
    no partial file is left."""
    from torch.nn.modules.module import register_module_forward_pre_hook

    with _hook_lock:
        if not _hook:
            _hook.append(register_module_forward_pre_hook(_stop_check))
    _current.job = job
    try:
        yield
    finally:
        _current.job = None


def enhance_upload(cfg: Config, job: Job) -> Path:
    """Run `job` through the CLI's enhance path; the written output file. Sets `job.used` to
    the preset, steps, samples and detail it runs with.

    Raises what `diffenhance enhance` stops on (ConfigError, EnhanceError, CheckpointError)
    and UiError with the recorded reason when the image itself failed."""
    from diffenhance.enhance import plan_job, run_job
    from diffenhance.enhance.settings import enhance_config

    enhance, infer = job.settings()
    job_cfg = enhance_config(cfg, enhance, infer)
    planned = plan_job(job_cfg)  # checks the preset and detail against the model
    job.used = ran_with(planned.model_path, job_cfg.infer)
    summary = run_job(job_cfg, job=planned, on_tiles=job.tiles_progress)
    for problem in summary["failures"] + summary["shard_errors"]:
        raise UiError(problem["reason"])
    (src,) = planned.shards[0].sources
    return Path(planned.output_url) / src.output_key


class Workspace:
    """The uploads and jobs of one UI server, in a folder of its own (deleted by `close`).

    Jobs run one at a time on a background thread, each stoppable (`cancel`, and the time
    limit of `limits`); the KEEP newest ended jobs and unused uploads stay on disk (older ones
    are deleted as new ones arrive)."""

    def __init__(self, cfg: Config, root: Path, limits: Limits | None = None) -> None:
        self.cfg, self.root = cfg, root
        self.limits = limits or Limits()
        self.uploads: dict[str, Upload] = {}
        self.jobs: dict[str, Job] = {}
        self.lock = threading.Lock()
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="diffenhance-ui")
        self.ids = (f"{i:04d}-{secrets.token_hex(4)}" for i in itertools.count(1))

    def add_upload(self, name: str, data: bytes) -> Upload:
        up = save_upload(self.root, name, data, self.cfg, self.limits.pixels)
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
               uncertainty: bool = False, preset: str | None = None,
               detail: float | None = None) -> Job:  # fmt: skip
        """Queue a job on an upload (and mask upload); it starts when the ones before it end.

        UiError (400) for a knob outside `limits`, a preset the model lacks (naming its
        presets) or detail on a model without a detail knob; a model that cannot be read is
        left to the job, which fails with `enhance`'s message."""
        model = model.strip()
        if not model:
            raise UiError("choose a model, or type a model dir or .safetensors path")
        self.limits.check(steps, samples, detail)
        used = self._resolve(model, steps, samples, preset, detail)
        mask = self.upload(mask_id) if mask_id else None
        job_id = next(self.ids)
        job = Job(job_id, self.root / "jobs" / job_id, self.upload(upload_id), model, steps,
                  samples, mask, uncertainty, preset, detail, used=used)  # fmt: skip
        with self.lock:
            self.jobs[job.id] = job
            job.future = self.pool.submit(self._run, job)
        return job

    def _resolve(self, model: str, steps: int | None, samples: int | None, preset: str | None,
                 detail: float | None) -> dict[str, Any] | None:  # fmt: skip
        """What the job will run with (`ran_with`); None when the model cannot be read."""
        from diffenhance.enhance import model_file

        given = {"steps": steps, "samples": samples, "preset": preset, "detail": detail}
        infer = dataclasses.replace(self.cfg.infer,
                                    **{k: v for k, v in given.items() if v is not None})  # fmt: skip
        try:
            path = model_file(model)
        except ValueError:  # EnhanceError: the job says it, as `enhance` does
            return None
        try:
            return ran_with(path, infer)
        except ValueError as e:
            from diffenhance.model import CheckpointError

            if isinstance(e, CheckpointError):  # not a model: the job says it
                return None
            raise UiError(str(e)) from None

    def cancel(self, job: Job) -> None:
        """Stop `job`: a queued one at once, a running one at its next network call (it then
        turns "cancelled" and the next queued job starts). Cancelling a cancelled job does
        nothing; UiError 409 for a job that ended otherwise."""
        with self.lock:
            if job.state == "queued":
                job.state, job.message, job.finished = "cancelled", "cancelled", time.monotonic()
                if job.future is not None:
                    job.future.cancel()
                self._prune()
                return
            if job.state == "running":
                job.stop.set()
                job.message = "cancelling"
                return
        if job.state != "cancelled":
            raise UiError(f"job {job.id} has already ended ({job.state})", 409)

    def _run(self, job: Job) -> None:
        from diffenhance.exitcodes import user_error_code

        with self.lock:
            if job.state != "queued":  # cancelled while it waited
                return
            job.state, job.started = "running", time.monotonic()
            job.deadline = job.started + self.limits.job_seconds
        output, state, message = None, "done", ""
        try:
            with stoppable(job):
                output = enhance_upload(self.cfg, job)
        except JobStopped as e:
            state = str(e)
        except Exception as e:  # a message in the page; a bug also keeps its traceback here
            if not isinstance(e, UiError) and user_error_code(e) is None:
                log.exception("ui: job %s failed", job.id)
            state, message = "failed", self._message(e, job)
        with self.lock:  # `cancel` sets job.stop under the lock too: no cancel is lost
            if job.stop.is_set():  # asked to stop: it stops, whatever it came to
                state, output = "cancelled", None
            if state == "cancelled":
                message = "cancelled"
            elif state == "timed_out":
                message = (
                    f"timed out after {self.limits.job_seconds:g} s (the UI's limit per job); "
                    "try fewer steps or samples or a smaller image, or `diffenhance enhance`"
                )
            job.output, job.message, job.state = output, message, state
            job.finished = time.monotonic()
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
        """What the page polls: state, seconds so far, tiles done of the total (each None while
        not counted: the page then shows the seconds), jobs ahead, the message, the settings it
        runs with (`settings`: preset, steps, samples, detail) and the result."""
        end = job.finished or time.monotonic()
        with self.lock:
            ahead = sum(1 for j in self.jobs.values() if j.state in ACTIVE
                        and j.created < job.created) if job.state == "queued" else 0  # fmt: skip
        out: dict[str, Any] = {
            "id": job.id, "state": job.state, "message": job.message, "ahead": ahead,
            "seconds": round(end - job.started, 1) if job.started is not None else 0.0,
            "tiles_done": job.tiles_done, "tiles_total": job.tiles_total,
            "settings": job.used,
        }  # fmt: skip
        if job.output is not None:
            w, h = read_image_info(job.output)["size"]
            out["output"] = {"name": job.download_name, "width": w, "height": h}
            out["uncertainty"] = job.uncertainty_map is not None
        return out

    def _prune(self) -> None:
        """Delete the oldest ended jobs and unused uploads beyond KEEP (lock held)."""
        ended = [j for j in self.jobs.values() if j.state in ENDED]
        for j in ended[: max(0, len(ended) - KEEP)]:
            del self.jobs[j.id]
            shutil.rmtree(j.folder, ignore_errors=True)
        busy = {u.id for j in self.jobs.values() if j.state in ACTIVE
                for u in (j.upload, j.mask) if u is not None}  # fmt: skip
        idle = [u for u in self.uploads.values() if u.id not in busy]
        for u in idle[: max(0, len(idle) - KEEP)]:
            del self.uploads[u.id]
            shutil.rmtree(u.path.parent, ignore_errors=True)

    def cancel_all(self) -> None:
        """Cancel the queued jobs and the running one (which stops at its next network call);
        no waiting. What a stop signal does at once, before open requests are waited for."""
        with self.lock:
            active = [j for j in self.jobs.values() if j.state in ACTIVE]
        for j in active:
            with contextlib.suppress(UiError):  # it ended meanwhile
                self.cancel(j)

    def close(self) -> None:
        """Cancel the queued jobs and the running one, wait for it to stop, delete the folder.
        Closing again does nothing more."""
        self.cancel_all()
        self.pool.shutdown(wait=True, cancel_futures=True)
        shutil.rmtree(self.root, ignore_errors=True)
