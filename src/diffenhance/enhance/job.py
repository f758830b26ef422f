"""What a batch enhancement job is: its inputs, shards, output settings and layout constants."""

from __future__ import annotations

import errno
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from diffenhance.config import Config, to_dict

META_DIR = "_diffenhance"
MANIFEST_DIR = f"{META_DIR}/manifests"
SUMMARY_KEY = f"{META_DIR}/summary.json"
SCRATCH_DIR = f"{META_DIR}/tmp"  # a local output's scratch folders (`io.scratch_dir`)
MANIFEST_FORMAT = "diffenhance-enhance-manifest-v1"
WRITABLE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp")
OnImage = Callable[[dict[str, Any]], None]
OnTiles = Callable[[int, int], None]  # (tiles done, tiles in all) of the image in flight
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class EnhanceError(ValueError):
    """The job cannot start (missing input or model, output inside input...); says what to fix."""


class ShardsCrashed(RuntimeError):
    """Shards crashed as a whole (storage down); the others ran and were summarised."""


class DiskFull(ShardsCrashed):
    """No space left where the job writes (ENOSPC, EDQUOT): the job stops at once (exit 1);
    the message names the file. What was written is recorded, so a rerun goes on from there."""


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
    planned_at: str = field(default_factory=lambda: now())

    @property
    def n_sources(self) -> int:
        return sum(len(s.sources) for s in self.shards)

    @property
    def n_todo(self) -> int:
        return sum(len(s.todo) for s in self.shards)


def now() -> str:
    """The current UTC time, ISO 8601 with milliseconds (manifests and summaries)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def output_params(
    cfg: Config, *, lossless: bool = False, implied_detail: float | None = None
) -> dict[str, Any]:
    """The settings that change output pixels or files: not how the work is run (tile_batch,
    threads, device, workers), which moves at most the last bit of a few pixels.

    infer.uncertainty is left out while false, infer.detail / infer.preset and
    enhance.outscale while null and enhance.suffix while empty, so the hash of a job without
    them is the one it had before the settings existed (its outputs are not redone).
    `lossless`: the model is an artifact remover (`RestorationTask.lossless_output`); with
    output_format 'same' its JPEG inputs are written as PNG, recorded as "jpeg_inputs".
    `implied_detail`: the detail the model runs at that no setting names (`restore.implied_detail`:
    steps alone on a posterior-mean preset), recorded as infer.detail, since it changes pixels
    (outputs of such a job from before steps implied it are redone)."""
    run_only = ("tile_batch", "threads", "device")
    infer = {k: v for k, v in to_dict(cfg.infer).items() if k not in run_only}
    if not infer["uncertainty"]:
        del infer["uncertainty"]
    if implied_detail is not None:
        infer["detail"] = implied_detail
    for k in ("detail", "preset"):  # null: the hash a job had before the knob existed
        if infer[k] is None:
            del infer[k]
    e = cfg.enhance
    out = {"output_format": e.output_format, "bit_depth": e.bit_depth, "quality": e.jpeg_quality}
    if e.outscale is not None:
        out["outscale"] = e.outscale
    if e.suffix:
        out["suffix"] = e.suffix
    if lossless and e.output_format == "same":
        out["jpeg_inputs"] = "png"
    return {"infer": infer, "output": out}


def disk_full(e: BaseException, path: str | None = None) -> DiskFull | None:
    """`e` as a `DiskFull` when it or an error that caused it is ENOSPC or EDQUOT: one line
    naming the file (the error's own, else `path`); None for any other error."""
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, DiskFull):
            return cur
        if isinstance(cur, OSError) and cur.errno in _DISK_FULL:
            name = cur.filename if cur.filename is not None else path
            where = os.fsdecode(name) if name is not None else "the output"
            return DiskFull(
                f"{where}: {os.strerror(cur.errno)} ({errno.errorcode[cur.errno]}); the job "
                "stopped there: free space (or choose another output), then rerun it to "
                "finish the rest"
            )
        cur = cur.__cause__ or cur.__context__
    return None


def written_keys(record: dict[str, Any]) -> list[str]:
    """Every file a manifest record says its image wrote: the output, then its uncertainty map
    and std (when made). A record counts as done only while all of them exist."""
    unc = record.get("uncertainty") or {}
    return [record["output_key"], *(unc[k] for k in ("map", "std") if k in unc)]


def params_hash(params: dict[str, Any]) -> str:
    """A short, stable hash of `output_params` (what a rerun compares)."""
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]
