"""What a batch enhancement job is: its inputs, shards, output settings and layout constants."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from diffenhance.config import Config, to_dict

META_DIR = "_diffenhance"
MANIFEST_DIR = f"{META_DIR}/manifests"
SUMMARY_KEY = f"{META_DIR}/summary.json"
MANIFEST_FORMAT = "diffenhance-enhance-manifest-v1"
WRITABLE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp")
OnImage = Callable[[dict[str, Any]], None]


class EnhanceError(ValueError):
    """The job cannot start (missing input or model, output inside input...); says what to fix."""


class ShardsCrashed(RuntimeError):
    """Shards crashed as a whole (storage down, disk full); the others ran and were summarised."""


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


def output_params(cfg: Config) -> dict[str, Any]:
    """The settings that change output pixels or files (not tile_batch, device or workers).

    infer.uncertainty is left out while false, and infer.detail / infer.preset while null, so
    the hash of a job without them is the one it had before the settings existed (its outputs
    are not redone)."""
    infer = {k: v for k, v in to_dict(cfg.infer).items() if k not in ("tile_batch", "device")}
    if not infer["uncertainty"]:
        del infer["uncertainty"]
    for k in ("detail", "preset"):  # null: the hash a job had before the knob existed
        if infer[k] is None:
            del infer[k]
    e = cfg.enhance
    out = {"output_format": e.output_format, "bit_depth": e.bit_depth, "quality": e.jpeg_quality}
    return {"infer": infer, "output": out}


def written_keys(record: dict[str, Any]) -> list[str]:
    """Every file a manifest record says its image wrote: the output, then its uncertainty map
    and std (when made). A record counts as done only while all of them exist."""
    unc = record.get("uncertainty") or {}
    return [record["output_key"], *(unc[k] for k in ("map", "std") if k in unc)]


def params_hash(params: dict[str, Any]) -> str:
    """A short, stable hash of `output_params` (what a rerun compares)."""
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]
