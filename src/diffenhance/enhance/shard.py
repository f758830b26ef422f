"""Running one shard: resume what an earlier attempt recorded, read each input, enhance it
through the one restore path, write each output atomically, record it at once in the shard's
partial manifest, and finish with the shard's manifest.

An input's alpha channel is kept where the output format has one (PNG, WebP, TIFF): the model
restores the colour and the alpha is resized bicubic to the output's size; other outputs
(JPEG, BMP) get the colour composited over white. Either way the image's record says which.
With enhance.outscale the model's output (and its alpha and uncertainty std) is resized to
round(input side * outscale) by the same filter (`_resize`), as Real-ESRGAN's --outscale.
A grayscale input (8 or 16 bits) gives a grayscale output: the mean of the model's three
channels, which it restores from the gray value copied into each (`_as_input_colour`).
A full disk stops the shard at once (`DiskFull`, naming the file)."""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from diffenhance.config import Config
from diffenhance.enhance.job import (
    MANIFEST_DIR,
    MANIFEST_FORMAT,
    SCRATCH_DIR,
    Job,
    OnImage,
    OnTiles,
    Shard,
    Source,
    disk_full,
    now,
    written_keys,
)
from diffenhance.enhance.masks import mask_sha256, with_mask
from diffenhance.enhance.models import cached_restorer
from diffenhance.io import (
    ALPHA_SUFFIXES,
    GRAY_MODES,
    ImageReadError,
    check_image_file,
    composite_over_white,
    file_sha256,
    read_icc_profile,
    read_image_alpha,
    read_image_info,
    scratch_dir,
    temp_files,
    write_image,
)
from diffenhance.storage import LocalStorage, Storage, UnsafeKeyError, open_storage, safe_key
from diffenhance.uncertainty import scale_info, uncertainty_keys, write_map, write_std

log = logging.getLogger(__name__)

_SIXTEEN_BIT_SUFFIXES = (".png", ".tif", ".tiff")
SCRATCH_PREFIX = "diffenhance-enhance-"  # `io.scratch_dir` folders of S3 inputs and outputs
# What the tiled engine carries for each image: (source, input sha256, info, input (h, w),
# its alpha channel HxW when the output keeps it).
_Ident = tuple[Source, str, dict[str, Any], tuple[int, int], Any]


def failure_reason(e: BaseException) -> str:
    """The one-line reason recorded for an image or shard that failed."""
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


def _frames(path: Path) -> int:
    """Frames of an image file (1 unless animated); read_image decodes only the first."""
    from PIL import Image

    with Image.open(path) as im:
        return int(getattr(im, "n_frames", 1))


def _alpha(output_key: str, rgb: Any, alpha: Any) -> tuple[Any, Any, dict[str, str]]:
    """(network input, the alpha to keep or None, {"alpha": what happens to it}) of an image
    read as `rgb` and `alpha` (`io.read_image_alpha`)."""
    if alpha is None:
        return rgb, None, {}
    suffix = Path(output_key).suffix.lower()
    if suffix in ALPHA_SUFFIXES:
        return rgb, alpha, {"alpha": "kept"}
    keep = ", ".join(sorted(ALPHA_SUFFIXES))
    why = f"composited over white: {suffix} has no alpha channel (outputs {keep} keep it)"
    return composite_over_white(rgb, alpha), None, {"alpha": why}


def _resize(img: Any, size: tuple[int, int]) -> Any:
    """HxW or HxWx3 float32 in [0, 1] at `size` (h, w): bicubic, antialiased when shrinking
    (`degrade.resize`, Pillow's BICUBIC), clipped. An output's colour, alpha and std map all
    go through it, so they stay aligned."""
    from diffenhance.degrade import resize

    if tuple(img.shape[:2]) == tuple(size):
        return img
    if img.ndim == 2:
        return resize(img[..., None], size=size)[..., 0]
    return resize(img, size=size)


def _outscaled_size(in_size: tuple[int, int], outscale: float | None) -> tuple[int, int] | None:
    """(h, w) = round(input side * enhance.outscale), None without outscale; ValueError when a
    side would be under 1 px."""
    if outscale is None:
        return None
    h, w = (round(n * outscale) for n in in_size)
    if h < 1 or w < 1:
        raise ValueError(
            f"--outscale {outscale:g} (enhance.outscale) makes this {in_size[1]}x{in_size[0]} "
            f"image {w}x{h} (width x height): under 1 px; use a larger outscale"
        )
    return h, w


def _as_input_colour(img: Any, info: dict[str, Any]) -> Any:
    """The model's RGB output `img` (float, or integer codes) as the input's colour: the mean
    of its channels for a gray input (HxW; its channels differ by a few codes: a tint), else
    itself."""
    if info.get("mode") not in GRAY_MODES or img.ndim != 3:
        return img
    if img.dtype.kind == "u":  # codes: the rounded mean, in the same dtype
        return ((img.sum(axis=2, dtype=np.uint32) + 1) // 3).astype(img.dtype)
    return img.mean(axis=2)


def _bit_depth(cfg: Config, info: dict[str, Any], output_key: str) -> int:
    suffix = Path(output_key).suffix.lower()
    if suffix not in _SIXTEEN_BIT_SUFFIXES:
        return 8
    return cfg.enhance.bit_depth or int(info["bit_depth"])


class ShardRun:
    """One run of one shard (guided-diffusion's TrainLoop shape: state here, one method a step).

    `run` drops unsafe keys, resumes the partial manifest of a failed attempt, enhances the
    rest and writes the manifest; per-image failures land in `errors`, never raised."""

    def __init__(
        self, job: Job, shard: Shard, cfg: Config, on_image: OnImage | None = None,
        on_tiles: OnTiles | None = None,
    ) -> None:  # fmt: skip
        self.job, self.shard, self.cfg, self.on_image = job, shard, cfg, on_image
        self.on_tiles = on_tiles
        self.t0, self.started = time.perf_counter(), now()
        self.in_store = open_storage(job.input_url, cfg.storage)
        self.out_store = open_storage(job.output_url, cfg.storage)
        self.records = {r["input_key"]: r for r in shard.done}
        self.prior = {r["input_key"]: r for r in shard.prior}
        self.errors: dict[str, str] = {}
        self.stats = {"processed": 0, "reused": 0, "in_mpix": 0.0, "out_mpix": 0.0}
        self.todo = list(shard.todo)
        self.manifest_key = f"{MANIFEST_DIR}/{shard.id}.json"
        self.partial_key = f"{MANIFEST_DIR}/{shard.id}.partial.json"
        self.device = "cpu"
        self.engine_stats: Any = None
        self.sampling_used: dict[str, int] | None = None  # steps/samples actually run
        self.uncertainty_info: dict[str, Any] | None = None

    def run(self, model: Any = None) -> dict[str, Any]:
        """Enhance what is left and write the manifest; returns it (see `run_shard`)."""
        if not self.job.single:
            self.drop_unsafe()
            if self.todo:  # a retried task: keep what the failed attempt recorded
                self.resume_partial()
        if self.todo:
            self.enhance(model)
        result = self.manifest(True)
        if not self.job.single:
            self.out_store.write_bytes(self.manifest_key, json.dumps(result, indent=1).encode())
            self.out_store.delete(self.partial_key)
        return result

    # ------------------------------------------------------------------ manifest + records

    def manifest(self, complete: bool) -> dict[str, Any]:
        """The shard's manifest as it stands (JSON-able)."""
        job, stats, errors = self.job, self.stats, self.errors
        seconds = round(time.perf_counter() - self.t0, 4)
        return {
            "format": MANIFEST_FORMAT,
            "shard_id": self.shard.id,
            "complete": complete,
            "input": self.in_store.url_for(),
            "output": self.out_store.url_for(),
            "model": {"path": job.model_path, "sha256": job.model_sha256},
            "params_hash": job.params_hash,
            "params": job.params,
            "inputs": [s.key for s in self.shard.sources],
            "images": [self.records[k] for k in sorted(self.records)],
            "errors": [{"input_key": k, "reason": errors[k]} for k in sorted(errors)],
            "started_at": self.started,
            "finished_at": now(),
            "seconds": seconds,
            "device": self.device,
            # the steps/samples actually run (params may leave them to the checkpoint)
            "sampling": self.sampling_used,
            # how each image's uncertainty map is made and coloured (null: none made)
            "uncertainty": self.uncertainty_info,
            "engine": None if self.engine_stats is None else dict(vars(self.engine_stats)),
            "run": {
                "processed": stats["processed"],
                "reused": stats["reused"],
                "skipped": len(self.shard.done),
                "failed": len(errors),
                "input_megapixels": round(stats["in_mpix"], 6),
                "output_megapixels": round(stats["out_mpix"], 6),
                "seconds": round(time.perf_counter() - self.t0, 4),
            },
        }

    def save_partial(self) -> None:
        """Record progress at once: a crash loses at most the image being written."""
        if not self.job.single:
            data = json.dumps(self.manifest(False), indent=1).encode()
            self.out_store.write_bytes(self.partial_key, data)

    def report(self, src: Source, status: str, **extra: Any) -> None:
        if self.on_image is not None:
            self.on_image({"key": src.key, "output_key": src.output_key, "status": status, **extra})

    def fail(self, src: Source, e: BaseException) -> None:
        """Record `src` as failed with its reason; the shard goes on, unless the disk is full
        (raises `DiskFull`: the next images would fail the same way)."""
        full = disk_full(e, self.out_store.url_for(src.output_key))
        if full is not None:
            raise full from e
        self.errors[src.key] = failure_reason(e)
        log.info("enhance: %s failed: %s", self.in_store.url_for(src.key), self.errors[src.key])
        self.save_partial()
        self.report(src, "failed", reason=self.errors[src.key])

    # ------------------------------------------------------------------ before enhancing

    def drop_unsafe(self) -> None:
        """Keys from a listing are untrusted ('../x', '/x', 'a\\b'): a failure each, never an
        escape."""
        for src in list(self.todo):
            try:
                safe_key("", src.key)
                safe_key("", src.output_key)
            except UnsafeKeyError as e:
                self.todo.remove(src)
                self.fail(src, e)

    def resume_partial(self) -> None:
        """Keep the records of this shard's partial manifest made with the job's model and
        params, for inputs that did not change and whose output exists."""
        try:
            m = json.loads(self.out_store.read_bytes(self.partial_key))
        except Exception:  # none (the usual case) or unreadable: nothing to keep
            return
        made_by = (m.get("model", {}).get("sha256"), m.get("params_hash"))
        if made_by != (self.job.model_sha256, self.job.params_hash):
            return
        for r in m.get("images", []):
            src = next((s for s in self.todo if s.key == r["input_key"]), None)
            same = src is not None and r["fingerprint"] == src.fingerprint
            if same and src is not None and all(map(self.out_store.exists, written_keys(r))):
                self.records[src.key] = r
                self.todo.remove(src)

    def engine(self, model: Any) -> Any:
        """The tiled engine: the job's checkpoint through the one restore path (SamplingSpec
        + RestorerTiles), or an injected `infer.TileModel` run on the params as they are."""
        from diffenhance.infer import TiledEnhancer, resolve_device, set_threads
        from diffenhance.restore import engine, sampling_spec

        set_threads(self.cfg.infer.threads)  # in the process that restores (a Dask worker too)
        unc = self.cfg.infer.uncertainty
        if model is None:  # the one restore path: what evaluate scores
            r = cached_restorer(
                self.job.model_path, self.job.model_sha256, resolve_device(self.cfg.infer.device)
            )
            spec = sampling_spec(r, self.cfg.infer)
            tiled = engine(r, spec, uncertainty=unc)
            self.sampling_used = {"steps": spec.steps, "samples": spec.samples}
        else:
            tiled = TiledEnhancer(model, self.cfg.infer, uncertainty=unc)
        if unc:
            self.uncertainty_info = scale_info((self.sampling_used or {}).get("samples"))
        self.device = str(tiled.model.device)
        self.engine_stats = tiled.stats
        tiled.progress = self.on_tiles
        return tiled

    # ------------------------------------------------------------------ enhancing

    def enhance(self, model: Any) -> None:
        """Enhance every image still to do; each output is written and recorded as it comes."""
        keys = [s.output_key for s in self.todo]
        if self.cfg.infer.uncertainty:
            keys += [k for s in self.todo for k in uncertainty_keys(s.output_key)]
        _sweep_temp(self.out_store, keys)
        engine = self.engine(model)
        with self.scratch() as tmp:
            for res in engine.stream(self.inputs(tmp), bit_depth=self.quantise_to):
                src, alpha = res.ident[0], res.ident[4]
                if res.error is not None:
                    self.fail(src, res.error)
                    continue
                try:
                    assert res.image is not None
                    size = _outscaled_size(res.ident[3], self.cfg.enhance.outscale)
                    img = res.image if size is None else _resize(res.image, size)
                    depth = _bit_depth(self.cfg, res.ident[2], src.output_key)
                    if alpha is not None:
                        alpha = _resize(alpha, img.shape[:2])
                    img = _as_input_colour(img, res.ident[2])
                    out_sha = self.write(
                        src, img, alpha, depth, tmp, res.ident[2].get("icc_profile")
                    )
                    std = None if res.std is None else _resize(res.std, img.shape[:2])
                    maps = None if std is None else self.write_uncertainty(src, std, tmp)
                except Exception as e:
                    self.fail(src, e)
                    continue
                self.record(res.ident, img, depth, out_sha, res.seconds, maps)

    def quantise_to(self, ident: _Ident) -> int | None:
        """The bit depth the engine hands an output over in (its stripes quantised as
        `write_image` would: no float copy of a whole 100 MP output); None (float) when
        enhance.outscale resizes it first."""
        if self.cfg.enhance.outscale is not None:
            return None
        return _bit_depth(self.cfg, ident[2], ident[0].output_key)

    def scratch(self) -> contextlib.AbstractContextManager[Path | None]:
        """Local room for S3 inputs and outputs (None when both are local folders): under a
        local output's `_diffenhance/tmp/`, else in the system temp folder; a folder that a
        killed run left there is swept by the next (`io.scratch_dir`)."""
        local_out = isinstance(self.out_store, LocalStorage)
        if local_out and isinstance(self.in_store, LocalStorage):
            return contextlib.nullcontext()
        if local_out and not self.job.single:  # one file out: nothing beside it but it
            return scratch_dir(self.out_store.url_for(SCRATCH_DIR), SCRATCH_PREFIX)
        return scratch_dir(tempfile.gettempdir(), SCRATCH_PREFIX)

    def inputs(self, tmp: Path | None) -> Iterator[tuple[_Ident, str, Any]]:
        """(ident, noise key, image) of each image to enhance, for `TiledEnhancer.stream`."""
        from diffenhance.restore import image_key

        for src in self.todo:
            got = self.read(src, tmp)
            if got is not None:
                ident, img = got
                # noise key = the decoded pixels, as evaluate's (same input, same output)
                yield ident, image_key(img), img

    def read(self, src: Source, tmp: Path | None) -> tuple[_Ident, Any] | None:
        """Read one input; None when it failed (recorded) or is an unchanged input only
        touched since its record (reused: no work)."""
        local_in = isinstance(self.in_store, LocalStorage)
        if local_in:
            path = Path(self.in_store.url_for(src.key))
        else:
            assert tmp is not None, "a scratch folder for S3 inputs"
            path = tmp / "in"
        try:
            if not local_in:
                self.in_store.download_file(src.key, path)
            check_image_file(path)  # before hashing: a FIFO would block, a broken link named
            sha = file_sha256(path)
            mask_sha = mask_sha256(self.cfg, src.key)
            old = self.prior.get(src.key)
            if (
                old is not None
                and old["input_sha256"] == sha
                and old.get("mask_sha256") == mask_sha
            ):  # touched, not changed
                self.records[src.key] = {**old, "fingerprint": src.fingerprint}
                self.stats["reused"] += 1
                self.save_partial()
                self.report(src, "done")
                return None
            info = {**read_image_info(path), "icc_profile": read_icc_profile(path)}
            if Path(src.key).suffix.lower() == ".gif":
                info = {**info, "frames": _frames(path)}
            rgb, alpha = read_image_alpha(path, max_pixels=self.cfg.enhance.max_pixels)
            _outscaled_size(rgb.shape[:2], self.cfg.enhance.outscale)  # under 1 px: before work
            img, alpha, alpha_info = _alpha(src.output_key, rgb, alpha)
            img, mask_info = with_mask(self.cfg, src.key, img, mask_sha)
            info = {**info, **mask_info, **alpha_info}
        except Exception as e:
            self.fail(src, e)
            return None
        finally:
            if not local_in:
                path.unlink(missing_ok=True)
        return (src, sha, info, img.shape[:2], alpha), img

    def put(self, key: str, save: Callable[[Path], Any], tmp: Path | None) -> str:
        """Write one file of the output atomically with `save(path)` (an atomic local writer;
        on S3 a temp file, then one PUT); its sha256."""
        if isinstance(self.out_store, LocalStorage):
            out_path = Path(self.out_store.url_for(key))
            save(out_path)
            return file_sha256(out_path)
        assert tmp is not None, "a scratch folder for S3 outputs"
        out_path = tmp / ("out" + Path(key).suffix.lower())
        save(out_path)
        out_sha = file_sha256(out_path)
        self.out_store.upload_file(out_path, key, checksum=out_sha)
        out_path.unlink()
        return out_sha

    def write(
        self, src: Source, img: Any, alpha: Any, depth: int, tmp: Path | None,
        icc_profile: bytes | None = None,
    ) -> str:  # fmt: skip
        """Write one output image (float, or codes of `depth` bits: `quantise_to`; with its
        alpha channel unless None, and the input's ICC profile unless None); its sha256."""
        q, codes = self.cfg.enhance.jpeg_quality, img.dtype.kind == "u"

        def save(path: Path) -> None:
            write_image(path, img, alpha=alpha, bit_depth=depth, quality=q, quantised=codes,
                        icc_profile=icc_profile)  # fmt: skip

        return self.put(src.output_key, save, tmp)

    def write_uncertainty(self, src: Source, std: Any, tmp: Path | None) -> dict[str, Any]:
        """Write an output's uncertainty map (PNG) and std (.npy) beside it; their record."""
        map_key, std_key = uncertainty_keys(src.output_key)
        return {
            "map": map_key,
            "map_sha256": self.put(map_key, lambda p: write_map(p, std), tmp),
            "std": std_key,
            "std_sha256": self.put(std_key, lambda p: write_std(p, std), tmp),
            "std_mean": round(float(std.mean()), 6),
            "std_max": round(float(std.max()), 6),
            "map_std_range": scale_info()["std_range"],  # black .. yellow of the PNG
        }

    def record(
        self, ident: _Ident, img: Any, depth: int, out_sha: str, seconds: float,
        uncertainty: dict[str, Any] | None = None,
    ) -> None:  # fmt: skip
        """Record a written output (and its uncertainty files) in the partial manifest and
        report it."""
        src, sha, info, (ih, iw), _ = ident
        h, w = img.shape[:2]
        self.stats["processed"] += 1
        self.stats["in_mpix"] += iw * ih / 1e6
        self.stats["out_mpix"] += w * h / 1e6
        self.records[src.key] = {
            "input_key": src.key,
            "input_sha256": sha,
            **{k: info[k] for k in ("mask_key", "mask_sha256") if k in info},
            "fingerprint": src.fingerprint,
            "input_size": [iw, ih],
            "output_key": src.output_key,
            "output_sha256": out_sha,
            "output_size": [w, h],
            "bit_depth": depth,
            "seconds": round(seconds, 4),
            "finished_at": now(),
        }
        if uncertainty is not None:
            self.records[src.key]["uncertainty"] = uncertainty
        if info.get("frames", 1) > 1:
            note = f"animated ({info['frames']} frames): only the first frame is enhanced"
            self.records[src.key]["note"] = note
            log.info("enhance: %s: %s", self.in_store.url_for(src.key), note)
        if "alpha" in info:  # "kept", or composited over white for JPEG/BMP: say which
            self.records[src.key]["alpha"] = info["alpha"]
            level = logging.INFO if info["alpha"] == "kept" else logging.WARNING
            log.log(level, "enhance: %s: alpha %s", self.in_store.url_for(src.key), info["alpha"])
        self.save_partial()
        self.report(src, "done", seconds=seconds)


def run_shard(
    job: Job, shard: Shard, cfg: Config, *, on_image: OnImage | None = None,
    model: Any = None, on_tiles: OnTiles | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Enhance the images of `shard` not yet done, write each output atomically, record it,
    then write the shard's manifest. Returns the manifest (a JSON-able dict) with a `run`
    entry holding this run's counts and timings. Per-image failures are recorded in
    manifest["errors"] ({"input_key", "reason"}) and never raised.

    `model`: a `infer.TileModel` to use instead of the job's checkpoint (tests, benchmarks);
    `on_image(event)` after each image, `on_tiles(done, total)` as its tiles run.
    """
    return ShardRun(job, shard, cfg, on_image, on_tiles).run(model)
