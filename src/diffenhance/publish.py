"""Publish pipeline outputs (reports, checkpoints, batch results) to `storage.url`.

    result = publish(cfg, publish_sources(cfg.storage))   # or the Prefect flow `flows.publish`
    print(result)   # "12 objects: 3 uploaded (1234 bytes), 9 unchanged, 7 excluded -> s3://..."

Each local folder `<name>` goes to `<url>/<name>/<relative path>`. A file whose size and sha256
already match the stored object is skipped, so a second run with no changes uploads nothing
(not even the manifest). Every uploaded object is verified afterwards: the store's size and
sha256 must equal the local file's (`storage.py` also checks this inside each upload).

The manifest `<url>/<storage.manifest>` lists every published object (key, size, sha256, source
path, upload time) with the git commit. It is written LAST, in one atomic write, only after every
source folder was uploaded and verified; any failure raises `PublishError` before it, so a
manifest never claims an object that is not there. A byte-identical local copy is kept at
`storage.manifest_copy`. Nothing is ever deleted from the store.

The destination folder (when `storage.url` is local, e.g. `results/published`: not even walked),
the manifest copy, half-written temp files and keys matching `storage.publish_exclude` are never
published; the last are counted per folder ("excluded": in the result, the manifest and the
summary). By default those are resume state and the shipped `models/pretrained/` (already in
git: tens of MB).
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import subprocess
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from diffenhance.config import Config, StorageConfig
from diffenhance.markdown import markdown_table
from diffenhance.storage import (
    LocalStorage,
    ObjectNotFoundError,
    Storage,
    StorageError,
    local_files,
    open_storage,
    safe_key,
    special_file,
)

log = logging.getLogger(__name__)
MANIFEST_FORMAT = 1


class PublishError(StorageError):
    """Publishing stopped; the message says which folder/file/endpoint and what to fix.

    When raised, no manifest was written for this run.
    """


@dataclass(frozen=True)
class PublishedObject:
    key: str  # relative to storage.url, e.g. "models/sr4/model.safetensors"
    size: int  # bytes
    sha256: str  # hex of the content
    source: str  # local path, relative to the repo root when inside it
    uploaded_at: str  # ISO 8601 UTC: the stored object's modification time
    uploaded: bool = False  # True when this run sent it (not part of the manifest)

    def entry(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "size": self.size,
            "sha256": self.sha256,
            "source": self.source,
            "uploaded_at": self.uploaded_at,
        }


@dataclass
class SourceResult:
    """What happened to one local folder."""

    name: str  # key prefix under storage.url (the folder as configured)
    path: str  # the local folder (relative to the repo root when inside it)
    missing: bool = False  # the folder does not exist: nothing published from it
    objects: list[PublishedObject] = field(default_factory=list)
    excluded: int = 0  # files skipped by storage.publish_exclude

    @property
    def uploaded(self) -> int:
        return sum(o.uploaded for o in self.objects)

    @property
    def skipped(self) -> int:
        return len(self.objects) - self.uploaded

    @property
    def bytes_uploaded(self) -> int:
        return sum(o.size for o in self.objects if o.uploaded)


@dataclass
class PublishResult:
    url: str  # the store's display URL (never contains credentials)
    manifest_key: str
    manifest_written: bool  # False when the previous manifest already said exactly this
    manifest: dict[str, Any]  # the manifest now in the store
    sources: list[SourceResult]

    @property
    def uploaded(self) -> int:
        return sum(s.uploaded for s in self.sources)

    @property
    def skipped(self) -> int:
        return sum(s.skipped for s in self.sources)

    @property
    def bytes_uploaded(self) -> int:
        return sum(s.bytes_uploaded for s in self.sources)

    @property
    def excluded(self) -> int:
        return sum(s.excluded for s in self.sources)

    @property
    def missing(self) -> list[str]:
        return [s.name for s in self.sources if s.missing]

    def __str__(self) -> str:
        n = len(self.manifest["objects"])
        return (
            f"{n} objects: {self.uploaded} uploaded ({self.bytes_uploaded} bytes), "
            f"{self.skipped} unchanged, {self.excluded} excluded -> {self.url}"
            + ("" if self.manifest_written else " (manifest unchanged)")
        )


# ----------------------------------------------------------------------------- helpers


def _rel(path: Path, root: Path) -> str:
    """`path` relative to `root` ('/'-separated) when inside it, else absolute."""
    p, r = path.absolute(), root.absolute()
    try:
        return p.relative_to(r).as_posix()
    except ValueError:
        return p.as_posix()


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat(timespec="seconds")


def git_commit(root: str | os.PathLike = ".") -> tuple[str | None, bool | None]:
    """(HEAD commit hex, has uncommitted changes to tracked files) of the repo at `root`;
    (None, None) outside a git repository or without git."""
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}

    def git(*args: str) -> str | None:
        try:
            r = subprocess.run(
                ["git", *args], cwd=root, capture_output=True, text=True, timeout=20, env=env
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return r.stdout.strip() if r.returncode == 0 else None

    commit = git("rev-parse", "--verify", "HEAD")
    if not commit:
        return None, None
    status = git("status", "--porcelain", "--untracked-files=no")
    return commit, (bool(status) if status is not None else None)


def open_destination(cfg: StorageConfig, root: str | os.PathLike = ".") -> Storage:
    """The store at `cfg.url`; a relative local path is taken relative to `root`. PublishError
    for a local destination that is a published folder or holds one: each run would publish
    the last run's copy again (reports/reports/...), or a file onto itself. One inside a
    published folder (the default results/published) is fine: publish skips it."""
    url = cfg.url
    if "://" not in url and not Path(url).is_absolute():
        url = str(Path(root) / url)
    store = open_storage(url, cfg)
    if isinstance(store, LocalStorage):
        dest = store.root.resolve()
        for name, path in publish_sources(cfg, root).items():
            src = path.resolve()
            if src == dest or dest in src.parents:
                where = "is" if src == dest else "holds"
                raise PublishError(
                    f"storage.url {cfg.url!r} {where} the published folder {name!r}: each "
                    "publish would copy it into itself; choose a destination outside "
                    f"{', '.join(cfg.publish)} (e.g. results/published, the default)"
                )
    return store


def never_published(cfg: StorageConfig, store: Storage, root: str | os.PathLike) -> set[Path]:
    """Resolved local paths publish must skip: a local destination and the manifest copy."""
    skip = {(Path(root) / cfg.manifest_copy).resolve()}
    if isinstance(store, LocalStorage):
        skip.add(store.root.resolve())
    return skip


def publish_sources(cfg: StorageConfig, root: str | os.PathLike = ".") -> dict[str, Path]:
    """{key prefix: local folder} for every entry of `storage.publish` (existing or not)."""
    return {name: Path(root) / name for name in cfg.publish}


def _files(local_dir: Path, skip: set[Path]) -> list[tuple[str, Path]]:
    """(relative '/' path, path) of the files `storage.local_files` lists under `local_dir`
    (sorted, no temp files, linked folders followed), minus those in or under a `skip` path
    (a destination inside `local_dir` is never even walked) and those that are not regular
    files (a FIFO would block the read: logged, skipped)."""
    out = []
    for rel, path in local_files(local_dir, skip=skip):
        if special_file(path):
            log.warning("publish: skipped %s (not a regular file)", path)
            continue
        out.append((rel, path))
    return out


# ----------------------------------------------------------------------------- steps


def read_manifest(store: Storage, key: str) -> dict[str, Any] | None:
    """The manifest stored at `key`, or None when there is none (or it is unreadable JSON).

    This is also publish's first request, so a dead endpoint fails here, before any upload.
    """
    try:
        data = store.read_bytes(key)
    except ObjectNotFoundError:
        return None
    except StorageError as e:
        raise PublishError(f"publish to {store.url_for()} failed before uploading: {e}") from None
    try:
        manifest = json.loads(data)
    except ValueError:
        log.warning("%s is not valid JSON; it will be rewritten", store.url_for(key))
        return None
    return manifest if isinstance(manifest, dict) else None


def publish_source(
    store: Storage,
    name: str,
    local_dir: str | os.PathLike,
    *,
    exclude: tuple[str, ...] = (),
    skip: set[Path] | None = None,
    root: str | os.PathLike = ".",
) -> SourceResult:
    """Upload the files of `local_dir` to `<name>/<relative path>`, skipping unchanged ones.

    `exclude`: fnmatch patterns on the key (e.g. "models/*/state/*"); `skip`: resolved paths
    never published. Every upload is verified (size + sha256). A missing folder gives
    `SourceResult(missing=True)`. Raises `PublishError` naming the file or key on failure.
    """
    local = Path(local_dir)
    result = SourceResult(name=name, path=_rel(local, Path(root)))
    if not local.is_dir():
        log.warning("publish: %s does not exist; nothing published from it", local)
        result.missing = True
        return result
    safe_key(name, "x")  # refuse a bad prefix before touching the store
    for rel, path in _files(local, skip or set()):
        key = safe_key(name, rel)
        if any(fnmatch.fnmatchcase(key, p) for p in exclude):
            result.excluded += 1
            continue
        try:  # the step `diffenhance upload` takes too: verified, unchanged files skipped
            info, uploaded = store.sync_file(path, key)
        except OSError as e:
            raise PublishError(
                f"publish {name}/: cannot read {path}: {e.strerror or e}; fix the file or add "
                "a pattern for it to storage.publish_exclude. No manifest was written"
            ) from None
        except StorageError as e:
            raise PublishError(
                f"publish {name}/ stopped at {rel}: {e}. No manifest was written; "
                "rerun when the store is reachable (finished files are skipped then)"
            ) from None
        assert info.sha256 is not None  # sync_file compared or verified it
        result.objects.append(
            PublishedObject(
                key, info.size, info.sha256, _rel(path, Path(root)), _iso(info.mtime), uploaded
            )
        )
    log.info(
        "publish %s -> %s: %d uploaded, %d unchanged, %d excluded",
        local,
        store.url_for(name),
        result.uploaded,
        result.skipped,
        result.excluded,
    )
    return result


def build_manifest(
    store: Storage, sources: list[SourceResult], root: str | os.PathLike = "."
) -> dict[str, Any]:
    """The manifest dict for `sources` (objects sorted by key), stamped with git and time."""
    commit, dirty = git_commit(root)
    objects = sorted((o.entry() for s in sources for o in s.objects), key=lambda e: e["key"])
    return {
        "format": MANIFEST_FORMAT,
        "url": store.url_for(),
        "published_at": _iso(datetime.now(UTC)),
        "git_commit": commit,
        "git_dirty": dirty,
        "sources": {
            s.name: {
                "path": s.path,  # a missing folder reads as 0 files (so does an empty one)
                "excluded": s.excluded,
                "files": len(s.objects),
                "bytes": sum(o.size for o in s.objects),
            }
            for s in sources
        },
        "objects": objects,
    }


def _same(a: dict[str, Any] | None, b: dict[str, Any]) -> bool:
    """Equal apart from the publish time."""
    if a is None:
        return False
    strip = lambda m: {k: v for k, v in m.items() if k != "published_at"}  # noqa: E731
    return strip(a) == strip(b)


def finish(
    store: Storage,
    cfg: StorageConfig,
    sources: list[SourceResult],
    previous: dict[str, Any] | None,
    root: str | os.PathLike = ".",
) -> PublishResult:
    """Write the manifest (last, atomically; not at all when `previous` already says the same)
    and its local copy at `cfg.manifest_copy`. Call only after every source succeeded."""
    if not any(s.objects for s in sources):
        raise PublishError(
            f"nothing to publish: no files under {', '.join(s.path for s in sources)}; run the "
            "pipeline first (dvc repro) or list folders that have outputs in storage.publish"
        )
    manifest = build_manifest(store, sources, root)
    written = not _same(previous, manifest)
    if written:
        data = json.dumps(manifest, indent=1, ensure_ascii=False).encode() + b"\n"
        try:
            store.write_bytes(cfg.manifest, data)
        except StorageError as e:
            raise PublishError(f"writing the publish manifest failed: {e}") from None
    else:
        assert previous is not None
        manifest = previous
        data = json.dumps(previous, indent=1, ensure_ascii=False).encode() + b"\n"
    copy = Path(root) / cfg.manifest_copy
    if not copy.is_file() or copy.read_bytes() != data:
        LocalStorage(copy.parent).write_bytes(copy.name, data)
    result = PublishResult(store.url_for(), cfg.manifest, written, manifest, sources)
    log.info("publish: %s", result)
    return result


def publish(
    cfg: Config, sources: dict[str, Path] | None = None, *, root: str | os.PathLike = "."
) -> PublishResult:
    """Upload each `{key prefix: local folder}` (default: `storage.publish` under `root`) to
    `storage.url`, verify every object, then write the manifest. Sequential; the Prefect flow
    runs one task per folder instead. Raises `PublishError` (no manifest written) on failure."""
    scfg = cfg.storage
    store = open_destination(scfg, root)
    previous = read_manifest(store, scfg.manifest)
    skip = never_published(scfg, store, root)
    results = [
        publish_source(store, name, path, exclude=scfg.publish_exclude, skip=skip, root=root)
        for name, path in (sources if sources is not None else publish_sources(scfg, root)).items()
    ]
    return finish(store, scfg, results, previous, root)


def summary_markdown(result: PublishResult) -> str:
    """A markdown table of per-folder counts (for the Prefect artifact)."""
    header = ["folder", "local path", "objects", "uploaded", "unchanged", "excluded"]
    header.append("bytes uploaded")
    rows: list[list[Any]] = []
    for s in result.sources:
        counts = [len(s.objects), s.uploaded, s.skipped, s.excluded, s.bytes_uploaded]
        cells = ["missing", "", "", "", ""] if s.missing else counts
        rows.append([f"`{s.name}/`", f"`{s.path}`", *cells])
    m = result.manifest
    totals = [len(m["objects"]), result.uploaded, result.skipped, "", result.bytes_uploaded]
    rows.append(["**total**", "", *totals])
    lines = [f"# Publish to `{result.url}`", ""]
    lines += markdown_table(header, rows, align="llrrrrr")
    lines += [
        "",
        f"Manifest `{result.manifest_key}`: "
        + ("written" if result.manifest_written else "unchanged (nothing new to publish)")
        + f"; git commit `{m.get('git_commit') or 'n/a'}`"
        + (" (uncommitted changes)" if m.get("git_dirty") else "")
        + f"; published at {m['published_at']}.",
    ]
    return "\n".join(lines) + "\n"
