"""Batch enhancement jobs: list, shard, enhance, record, resume, summarise.

Usable without Prefect (`run_job`, what `diffenhance enhance` calls); flows/enhance.py maps
`run_shard` over the shards of `plan_job` with a Prefect task runner (threads or Dask).

    job = plan_job(cfg)                      # list inputs, shards, what is already done
    manifests = [run_shard(job, s, cfg) for s in job.shards if s.needs_run]
    summary = summarize(job, manifests, seconds)

An output root (a folder or ``s3://bucket/prefix``) holds:

    <relative path of each input>            enhanced image (suffix per enhance.output_format)
    _diffenhance/manifests/<shard>.json      one per finished shard: inputs and their sha256,
                                             model sha256, params hash, outputs, timings, errors
    _diffenhance/manifests/<shard>.partial.json   progress of a running (or crashed) shard
    _diffenhance/summary.json                the last run's summary

Shards are runs of `enhance.shard_size` images in sorted key order; a shard's id is its index
plus a hash of its keys, so the same inputs always give the same shards. Outputs are written
atomically (temp file + rename locally, a single PUT on S3) and each finished image is recorded
in the shard's partial manifest at once, so a crash loses at most the image being written.
A rerun skips every image recorded with the same model sha256, params hash and input (size +
ETag/mtime, else its sha256) whose output exists, and finishes the rest. A file that cannot be
read or enhanced is recorded with its reason and never stops the job.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from diffenhance.config import Config, to_dict
from diffenhance.io import (
    ImageReadError,
    file_sha256,
    read_image,
    read_image_info,
    temp_files,
    write_image,
)
from diffenhance.storage import (
    LocalStorage,
    ObjectInfo,
    Storage,
    UnsafeKeyError,
    is_local,
    local_path,
    normalize_url,
    open_storage,
    safe_key,
    split_url,
)

log = logging.getLogger(__name__)

META_DIR = "_diffenhance"
MANIFEST_DIR = f"{META_DIR}/manifests"
SUMMARY_KEY = f"{META_DIR}/summary.json"
MANIFEST_FORMAT = "diffenhance-enhance-manifest-v1"
WRITABLE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp")
_SIXTEEN_BIT_SUFFIXES = (".png", ".tif", ".tiff")
OnImage = Callable[[dict[str, Any]], None]


class EnhanceError(ValueError):
    """The job cannot start (missing input or model, output inside input...); says what to fix."""


# ----------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class Source:
    """One input image as listed."""

    key: str  # relative to the input root
    size: int
    fingerprint: str  # size + ETag (S3) or mtime (local): changes when the file does
    output_key: str  # relative to the output root


@dataclass(frozen=True)
class Shard:
    id: str
    sources: tuple[Source, ...]
    done: tuple[dict[str, Any], ...] = ()  # manifest records of sources already done
    prior: tuple[dict[str, Any], ...] = ()  # records whose input fingerprint changed: sha check
    has_manifest: bool = False  # its final manifest exists already

    @property
    def todo(self) -> tuple[Source, ...]:
        done = {r["input_key"] for r in self.done}
        return tuple(s for s in self.sources if s.key not in done)

    @property
    def needs_run(self) -> bool:
        """Work left, or a manifest to write that carries records over from older shards."""
        return bool(self.todo) or not self.has_manifest


@dataclass(frozen=True)
class Job:
    """A resolved enhancement job: picklable, so it travels to Dask workers as is."""

    input_url: str  # input root (the parent folder when the input is one file)
    output_url: str  # output root
    model_path: str  # the weights file
    model_sha256: str
    params: dict[str, Any]  # every setting that changes the output pixels
    params_hash: str
    shards: tuple[Shard, ...]
    ignored: tuple[dict[str, str], ...] = ()  # {"key", "reason"}: not images, name clashes
    single: bool = False  # one file in, one file out: no manifests or summary are written
    planned_at: str = field(default_factory=lambda: _now())

    @property
    def n_sources(self) -> int:
        return sum(len(s.sources) for s in self.shards)

    @property
    def n_todo(self) -> int:
        return sum(len(s.todo) for s in self.shards)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def output_params(cfg: Config) -> dict[str, Any]:
    """The settings that change output pixels or files (not tile_batch, device or workers)."""
    infer = {k: v for k, v in to_dict(cfg.infer).items() if k not in ("tile_batch", "device")}
    e = cfg.enhance
    out = {"output_format": e.output_format, "bit_depth": e.bit_depth, "quality": e.jpeg_quality}
    return {"infer": infer, "output": out}


def params_hash(params: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]


_HASH_CACHE: dict[tuple[str, int, int], str] = {}


# The shipped models: models/pretrained/<task>/model.safetensors of the working directory,
# else of the checkout this package runs from (an editable install).
PRETRAINED_DIRS = (
    Path("models/pretrained"),
    Path(__file__).resolve().parents[2] / "models/pretrained",
)


def pretrained_model(task: str) -> Path | None:
    """The shipped model dir of `task` (models/pretrained/<task>), or None when there is none."""
    from diffenhance.model import WEIGHTS_NAME

    for root in PRETRAINED_DIRS:
        if (root / task / WEIGHTS_NAME).is_file():
            return root / task
    return None


def model_file(path: str | os.PathLike) -> Path:
    """The weights file of a model dir or file; EnhanceError when there is none.

    Default-model resolution: a bare task name (`sr4`, `denoise`, ...) or the `train` stage's
    `models/<task>` (enhance.model's default) without a trained checkpoint resolves to the
    shipped model `models/pretrained/<task>`, so enhancement works before any training.
    """
    from diffenhance.config import TASKS
    from diffenhance.model import WEIGHTS_NAME, weights_path

    p = Path(path)
    f = weights_path(p)
    if not f.is_file() and p.name in TASKS and p.parent in (Path("."), Path("models")):
        shipped = pretrained_model(p.name)
        if shipped is not None:
            log.info("%s has no trained model: using the shipped %s", p, shipped)
            f = weights_path(shipped)
    if not f.is_file():
        raise EnhanceError(
            f"{p}: no model here (expected a model dir with {WEIGHTS_NAME} or a .safetensors "
            "file); train one (`dvc repro`) or set enhance.model / --model"
        )
    return f.resolve()


def model_sha256(path: str | os.PathLike) -> str:
    """sha256 of the weights file (cached by path, size and mtime)."""
    f = model_file(path)
    st = f.stat()
    k = (str(f), st.st_size, st.st_mtime_ns)
    if k not in _HASH_CACHE:
        _HASH_CACHE[k] = file_sha256(f)
    return _HASH_CACHE[k]


def _output_key(key: str, fmt: str) -> str:
    stem, dot, suffix = key.rpartition(".")
    if not dot or "/" in suffix:
        stem, suffix = key, ""
    low = "." + suffix.lower() if suffix else ""
    if fmt == "same":
        return key if low in WRITABLE_SUFFIXES else f"{stem}.png"
    new = f".{fmt}"
    return key if low == new else f"{stem}{new}"


def _clash(key: str, first: str, output_key: str, e: Any) -> str:
    """Why `key` is ignored when `first` (earlier in key order) has the same output, and what
    resolves it: enhance.output_format=same only when it gives the two different outputs (it
    keeps every writable suffix), never for a GIF beside a PNG of the same name."""
    why = f"its output {output_key} is also the output of {first}; "
    if e.output_format != "same" and _output_key(key, "same") != _output_key(first, "same"):
        return why + "set enhance.output_format=same (keeps each input's format) or rename one"
    suffix = Path(key).suffix.lower() or "(none)"
    return why + f"rename one of them, or drop {suffix} from enhance.extensions to skip it"


def _fingerprint(o: ObjectInfo) -> str:
    return f"{o.size}:{o.etag}" if o.etag else f"{o.size}:{o.mtime.timestamp():.6f}"


def _hidden(key: str) -> bool:
    """A dot file or folder; '.' and '..' are not hidden but unsafe (a failure in run_shard)."""
    return any(part.startswith(".") and part not in (".", "..") for part in key.split("/"))


def _resolve_input(url: str, cfg: Config) -> tuple[str, str | None]:
    """(input root, the one key when the input is a single file, else None)."""
    exts = tuple(e.lower() for e in cfg.enhance.extensions)
    if is_local(url):
        p = local_path(url)
        if p.is_file():
            return str(p.parent), p.name
        if not p.is_dir():
            raise EnhanceError(f"{url}: input not found; give a folder, an image or s3://...")
        return url, None
    split = split_url(url)
    if split and Path(split[1]).suffix.lower() in exts:
        store = open_storage(split[0], cfg.storage)
        if store.exists(split[1]):
            return split[0], split[1]
    return url, None


def _read_manifests(out: Storage) -> tuple[dict[str, dict[str, Any]], set[str]]:
    """({input_key: newest record + manifest facts}, ids of shards with a final manifest)."""
    records: dict[str, dict[str, Any]] = {}
    final: set[str] = set()
    for o in out.list(MANIFEST_DIR):
        if not o.key.endswith(".json"):
            continue
        try:
            m = json.loads(out.read_bytes(o.key))
            assert m.get("format") == MANIFEST_FORMAT
        except Exception as e:  # a damaged manifest only costs redoing its images
            log.warning("ignoring unreadable manifest %s: %s", out.url_for(o.key), e)
            continue
        if not o.key.endswith(".partial.json"):
            final.add(m["shard_id"])
        for r in m.get("images", []):
            r = {**r, "model_sha256": m["model"]["sha256"], "params_hash": m["params_hash"]}
            old = records.get(r["input_key"])
            if old is None or r["finished_at"] > old["finished_at"]:
                records[r["input_key"]] = r
    return records, final


def plan_job(cfg: Config) -> Job:
    """List `enhance.input`, filter by extension, cut deterministic shards and mark what a
    previous run already did. Reads only listings and manifests, not the images.

    Raises EnhanceError for a missing input or model, or an output equal to the input, and
    CheckpointError for a model file that is not a valid checkpoint (checked before any work).
    """
    from diffenhance.model import validate_checkpoint

    e = cfg.enhance
    m_file = model_file(e.model)
    validate_checkpoint(m_file)
    m_sha = model_sha256(m_file)
    params = output_params(cfg)
    p_hash = params_hash(params)
    in_url, single_key = _resolve_input(e.input, cfg)
    out_url, single_out = e.output, None
    if single_key is not None:
        split = split_url(e.output)
        if split and Path(split[1]).suffix.lower() in WRITABLE_SUFFIXES:
            out_url, single_out = split
    if normalize_url(in_url) == normalize_url(out_url) and single_key is None:
        raise EnhanceError(f"enhance.output {e.output!r} is the input folder; choose another one")
    excluded = ""  # the output's place inside the input, when it is there
    if normalize_url(out_url).startswith(normalize_url(in_url) + "/"):
        excluded = normalize_url(out_url)[len(normalize_url(in_url)) + 1 :] + "/"

    in_store = open_storage(in_url, cfg.storage)
    out_store = open_storage(out_url, cfg.storage)
    exts = {x.lower() for x in e.extensions}
    ignored: list[dict[str, str]] = []
    by_output: dict[str, str] = {}
    sources: list[Source] = []
    if single_key is not None:
        info = in_store.stat(single_key)
        assert info is not None
        listing: list[ObjectInfo] = [info]
    else:
        listing = sorted(in_store.list(""), key=lambda o: o.key)
    for o in listing:
        if single_key is None and (
            _hidden(o.key)
            or o.key.startswith(META_DIR + "/")
            or (excluded and o.key.startswith(excluded))
        ):
            continue
        if Path(o.key).suffix.lower() not in exts:
            ignored.append({"key": o.key, "reason": "extension not in enhance.extensions"})
            continue
        ok = single_out or _output_key(o.key, e.output_format)
        if ok in by_output:
            ignored.append({"key": o.key, "reason": _clash(o.key, by_output[ok], ok, e)})
            continue
        by_output[ok] = o.key
        sources.append(Source(o.key, o.size, _fingerprint(o), ok))

    records, final_ids = ({}, set()) if single_key is not None else _read_manifests(out_store)
    outputs = set() if not records else {o.key for o in out_store.list("")}
    shards = []
    n = e.shard_size
    for i in range(0, len(sources), n):
        chunk = tuple(sources[i : i + n])
        digest = hashlib.sha256("\n".join(s.key for s in chunk).encode()).hexdigest()[:10]
        sid = f"{i // n:05d}-{digest}"
        done, prior = [], []
        for s in chunk:
            r = records.get(s.key)
            if (
                not e.skip_done
                or r is None
                or (r["model_sha256"], r["params_hash"]) != (m_sha, p_hash)
            ):
                continue
            if r["output_key"] != s.output_key or s.output_key not in outputs:
                continue
            record = {k: v for k, v in r.items() if k not in ("model_sha256", "params_hash")}
            (done if r["fingerprint"] == s.fingerprint else prior).append(record)
        shards.append(Shard(sid, chunk, tuple(done), tuple(prior), sid in final_ids))
    return Job(
        input_url=in_url,
        output_url=out_url,
        model_path=str(m_file),
        model_sha256=m_sha,
        params=params,
        params_hash=p_hash,
        shards=tuple(shards),
        ignored=tuple(ignored),
        single=single_key is not None,
    )


# ----------------------------------------------------------------------------- model cache

_MODELS: dict[tuple[str, str, str], Any] = {}
_MODELS_LOCK = threading.Lock()
MODEL_LOADS = {"count": 0}  # loads in this process (a worker loads each model once)


def cached_restorer(path: str, sha256: str, device: Any) -> Any:
    """The Restorer of `path` on `device`, loaded once per process (keyed by path + sha256).

    Raises EnhanceError when the file here does not have the sha256 the job was planned with
    (a worker with other weights under the same path)."""
    from diffenhance.model import load_restorer

    key = (str(path), sha256, str(device))
    with _MODELS_LOCK:
        r = _MODELS.get(key)
        if r is None:
            got = model_sha256(path)
            if got != sha256:
                raise EnhanceError(
                    f"{path}: sha256 {got[:12]} on this worker, but the job was planned with "
                    f"{sha256[:12]}; give every worker the same model file"
                )
            r = _MODELS[key] = load_restorer(path, device)
            MODEL_LOADS["count"] += 1
        return r


# ----------------------------------------------------------------------------- one shard


def _reason(e: BaseException) -> str:
    if isinstance(e, ImageReadError):
        return e.reason
    return f"{type(e).__name__}: {e}"


def _sweep_temp(out: Storage, keys: list[str]) -> None:
    """Remove temp files a killed writer left beside these (local) outputs."""
    if not isinstance(out, LocalStorage):
        return  # an S3 PUT is atomic: nothing is left behind
    for k in keys:
        for t in temp_files(out.url_for(k)):
            t.unlink(missing_ok=True)


def _own_partial(out: Storage, key: str, job: Job) -> list[dict[str, Any]]:
    """Records of this shard's partial manifest made with the job's model and params."""
    try:
        m = json.loads(out.read_bytes(key))
    except Exception:  # none (the usual case) or unreadable: nothing to keep
        return []
    same = (m.get("model", {}).get("sha256"), m.get("params_hash")) == (
        job.model_sha256,
        job.params_hash,
    )
    return list(m.get("images", [])) if same else []


def _frames(path: Path) -> int:
    """Frames of an image file (1 unless animated); read_image decodes only the first."""
    from PIL import Image

    with Image.open(path) as im:
        return int(getattr(im, "n_frames", 1))


def _bit_depth(cfg: Config, info: dict[str, Any], output_key: str) -> int:
    suffix = Path(output_key).suffix.lower()
    if suffix not in _SIXTEEN_BIT_SUFFIXES:
        return 8
    return cfg.enhance.bit_depth or int(info["bit_depth"])


def run_shard(
    job: Job, shard: Shard, cfg: Config, *, on_image: OnImage | None = None, model: Any = None
) -> dict[str, Any]:
    """Enhance the images of `shard` not yet done, write each output atomically, record it,
    then write the shard's manifest. Returns the manifest (a JSON-able dict) with a `run`
    entry holding this run's counts and timings. Per-image failures are recorded in
    manifest["errors"] ({"input_key", "reason"}) and never raised.

    `model`: a `infer.TileModel` to use instead of the job's checkpoint (tests, benchmarks).
    """
    from diffenhance.infer import RestorerTiles, TiledEnhancer, resolve_device
    from diffenhance.restore import image_key, sampling_spec

    t0, started = time.perf_counter(), _now()
    in_store = open_storage(job.input_url, cfg.storage)
    out_store = open_storage(job.output_url, cfg.storage)
    records = {r["input_key"]: r for r in shard.done}
    prior = {r["input_key"]: r for r in shard.prior}
    errors: dict[str, str] = {}
    stats = {"processed": 0, "reused": 0, "in_mpix": 0.0, "out_mpix": 0.0}
    todo = list(shard.todo)
    manifest_key = f"{MANIFEST_DIR}/{shard.id}.json"
    partial_key = f"{MANIFEST_DIR}/{shard.id}.partial.json"
    device = "cpu"
    engine_stats = None
    sampling_used: dict[str, int] | None = None

    def manifest(complete: bool) -> dict[str, Any]:
        return {
            "format": MANIFEST_FORMAT,
            "shard_id": shard.id,
            "complete": complete,
            "input": in_store.url_for(),
            "output": out_store.url_for(),
            "model": {"path": job.model_path, "sha256": job.model_sha256},
            "params_hash": job.params_hash,
            "params": job.params,
            "inputs": [s.key for s in shard.sources],
            "images": [records[k] for k in sorted(records)],
            "errors": [{"input_key": k, "reason": errors[k]} for k in sorted(errors)],
            "started_at": started,
            "finished_at": _now(),
            "seconds": round(time.perf_counter() - t0, 4),
            "device": device,
            # the steps/samples actually run (params may leave them to the checkpoint)
            "sampling": sampling_used,
            "engine": None if engine_stats is None else dict(vars(engine_stats)),
            "run": {
                "processed": stats["processed"],
                "reused": stats["reused"],
                "skipped": len(shard.done),
                "failed": len(errors),
                "input_megapixels": round(stats["in_mpix"], 6),
                "output_megapixels": round(stats["out_mpix"], 6),
                "seconds": round(time.perf_counter() - t0, 4),
            },
        }

    def save(key: str, complete: bool) -> None:
        if not job.single:
            out_store.write_bytes(key, json.dumps(manifest(complete), indent=1).encode())

    def report(src: Source, status: str, **extra: Any) -> None:
        if on_image is not None:
            on_image({"key": src.key, "output_key": src.output_key, "status": status, **extra})

    def fail(src: Source, e: BaseException) -> None:
        errors[src.key] = _reason(e)
        log.info("enhance: %s failed: %s", in_store.url_for(src.key), errors[src.key])
        save(partial_key, False)
        report(src, "failed", reason=errors[src.key])

    # keys from a listing are untrusted ('../x', '/x', 'a\\b'): a failure each, never an escape
    for src in [] if job.single else list(todo):
        try:
            safe_key("", src.key)
            safe_key("", src.output_key)
        except UnsafeKeyError as e:
            todo.remove(src)
            fail(src, e)
    if todo and not job.single:  # a retried task: keep what the failed attempt recorded
        for r in _own_partial(out_store, partial_key, job):
            src = next((s for s in todo if s.key == r["input_key"]), None)
            same = src is not None and r["fingerprint"] == src.fingerprint
            if same and src is not None and out_store.exists(src.output_key):
                records[src.key] = r
                todo.remove(src)
    if todo:
        _sweep_temp(out_store, [s.output_key for s in todo])
        spec: Any = cfg.infer  # an injected TileModel runs on the params as they are
        if model is None:  # the one restore path: SamplingSpec + the tiled engine
            dev = resolve_device(cfg.infer.device)
            r = cached_restorer(job.model_path, job.model_sha256, dev)
            spec = sampling_spec(r, cfg.infer)
            model = RestorerTiles.from_spec(r, spec)
        device = str(model.device)
        if isinstance(model, RestorerTiles):
            sampling_used = {"steps": model.steps, "samples": model.samples}
        engine = TiledEnhancer(model, spec)
        engine_stats = engine.stats
        local_in = isinstance(in_store, LocalStorage)
        with tempfile.TemporaryDirectory(prefix="diffenhance-enhance-") as tmp:

            def jobs() -> Iterator[tuple[tuple[Source, str, dict, tuple], str, Any]]:
                for src in todo:
                    path = Path(in_store.url_for(src.key)) if local_in else Path(tmp, "in")
                    try:
                        if not local_in:
                            in_store.download_file(src.key, path)
                        sha = file_sha256(path)
                        old = prior.get(src.key)
                        if old is not None and old["input_sha256"] == sha:  # touched, not changed
                            records[src.key] = {**old, "fingerprint": src.fingerprint}
                            stats["reused"] += 1
                            save(partial_key, False)
                            report(src, "done")
                            continue
                        info = read_image_info(path)
                        if Path(src.key).suffix.lower() == ".gif":
                            info = {**info, "frames": _frames(path)}
                        img = read_image(path, max_pixels=cfg.enhance.max_pixels)
                    except Exception as e:
                        fail(src, e)
                        continue
                    finally:
                        if not local_in:
                            path.unlink(missing_ok=True)
                    # noise key = the decoded pixels, as evaluate's (same input, same output)
                    yield (src, sha, info, img.shape[:2]), image_key(img), img

            for res in engine.stream(jobs()):
                src, sha, info, (ih, iw) = res.ident
                if res.error is not None:
                    fail(src, res.error)
                    continue
                try:
                    img = res.image
                    assert img is not None
                    depth = _bit_depth(cfg, info, src.output_key)
                    q = cfg.enhance.jpeg_quality
                    if isinstance(out_store, LocalStorage):
                        out_path = Path(out_store.url_for(src.output_key))
                        write_image(out_path, img, bit_depth=depth, quality=q)
                        out_sha = file_sha256(out_path)
                    else:
                        out_path = Path(tmp, "out" + Path(src.output_key).suffix.lower())
                        write_image(out_path, img, bit_depth=depth, quality=q)
                        out_sha = file_sha256(out_path)
                        out_store.upload_file(out_path, src.output_key, checksum=out_sha)
                        out_path.unlink()
                except Exception as e:
                    fail(src, e)
                    continue
                h, w = img.shape[:2]
                stats["processed"] += 1
                stats["in_mpix"] += iw * ih / 1e6
                stats["out_mpix"] += w * h / 1e6
                records[src.key] = {
                    "input_key": src.key,
                    "input_sha256": sha,
                    "fingerprint": src.fingerprint,
                    "input_size": [iw, ih],
                    "output_key": src.output_key,
                    "output_sha256": out_sha,
                    "output_size": [w, h],
                    "bit_depth": depth,
                    "seconds": round(res.seconds, 4),
                    "finished_at": _now(),
                }
                if info.get("frames", 1) > 1:
                    note = f"animated ({info['frames']} frames): only the first frame is enhanced"
                    records[src.key]["note"] = note
                    log.info("enhance: %s: %s", in_store.url_for(src.key), note)
                save(partial_key, False)
                report(src, "done", seconds=res.seconds)
    result = manifest(True)
    if not job.single:
        out_store.write_bytes(manifest_key, json.dumps(result, indent=1).encode())
        out_store.delete(partial_key)
    return result


# ----------------------------------------------------------------------------- summary


def summarize(
    job: Job,
    manifests: list[dict[str, Any]],
    seconds: float,
    shard_errors: Sequence[dict[str, str]] = (),
) -> dict[str, Any]:
    """The run's summary: counts, failures with reasons, images/s and megapixels/s.

    `manifests`: those returned by `run_shard` in this run; `seconds`: its wall time;
    `shard_errors`: {"shard_id", "reason"} of shards that crashed as a whole."""
    ran = {m["shard_id"] for m in manifests}
    skipped = sum(len(s.done) for s in job.shards if s.id not in ran)
    skipped += sum(m["run"]["skipped"] for m in manifests)
    processed = sum(m["run"]["processed"] for m in manifests)
    failures = [
        {"key": e["input_key"], "reason": e["reason"], "shard_id": m["shard_id"]}
        for m in manifests
        for e in m["errors"]
    ]
    out_mpix = sum(m["run"]["output_megapixels"] for m in manifests)
    in_mpix = sum(m["run"]["input_megapixels"] for m in manifests)
    secs = max(seconds, 1e-9)
    return {
        "input": job.input_url,
        "output": job.output_url,
        "model": {"path": job.model_path, "sha256": job.model_sha256},
        "params_hash": job.params_hash,
        "planned_at": job.planned_at,
        "finished_at": _now(),
        "images": job.n_sources,
        "shards": len(job.shards),
        "shards_run": len(manifests),
        "enhanced": processed,
        "skipped_done": skipped + sum(m["run"]["reused"] for m in manifests),
        "reused": sum(m["run"]["reused"] for m in manifests),  # touched inputs, same sha256
        "failed": len(failures),
        "failures": sorted(failures, key=lambda f: f["key"]),
        "ignored": list(job.ignored),
        "shard_errors": list(shard_errors),
        "seconds": round(seconds, 3),
        "images_per_s": round(processed / secs, 4),
        "input_megapixels": round(in_mpix, 4),
        "output_megapixels": round(out_mpix, 4),
        "megapixels_per_s": round(out_mpix / secs, 4),  # output megapixels
    }


def finish_job(job: Job, summary: dict[str, Any], cfg: Config) -> None:
    """Write the summary JSON; when every shard ran cleanly, drop manifests of shards that no
    longer exist (their records were carried into the current shards' manifests)."""
    if job.single:
        return
    out = open_storage(job.output_url, cfg.storage)
    out.write_bytes(SUMMARY_KEY, json.dumps(summary, indent=1).encode())
    if summary["shard_errors"]:
        return
    current = {s.id for s in job.shards}
    for o in list(out.list(MANIFEST_DIR)):
        sid = o.key.rsplit("/", 1)[-1].removesuffix(".json").removesuffix(".partial")
        if sid not in current:
            out.delete(o.key)


def run_job(
    cfg: Config, *, on_image: OnImage | None = None, model: Any = None, job: Job | None = None
) -> dict[str, Any]:
    """Plan and run every shard in this process, one after another; returns the summary.

    What `diffenhance enhance` runs; flows/enhance.py runs the same shards in parallel."""
    job = job or plan_job(cfg)
    t0 = time.perf_counter()
    manifests, shard_errors = [], []
    for shard in job.shards:
        if not shard.needs_run:
            continue
        try:
            manifests.append(run_shard(job, shard, cfg, on_image=on_image, model=model))
        except EnhanceError:
            raise
        except Exception as e:  # storage down, disk full: report the shard, go on
            shard_errors.append({"shard_id": shard.id, "reason": _reason(e)})
    summary = summarize(job, manifests, time.perf_counter() - t0, shard_errors)
    finish_job(job, summary, cfg)
    return summary
