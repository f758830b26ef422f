"""A user's folder of images (`data.source: folder`): scan, validate, de-duplicate, split.

`scan_folder(root)` walks `root` recursively in sorted order (`storage.local_files`: linked
folders are followed, link loops are not) and returns every usable image once:

* only files whose suffix is in `diffenhance.io.IMAGE_EXTENSIONS` (case-insensitive) are
  considered; hidden files and directories (name starting with '.') are ignored silently;
* every candidate is fully decoded with `diffenhance.io.read_image`, so empty, truncated,
  non-image (a text file called x.jpg) and over-`max_pixels` files are *skipped* and listed
  with the reader's reason, as are images with a side below `min_size`, symbolic links whose
  target is missing and entries that are not regular files (a FIFO, socket or device with an
  image name: never opened, a read would block; reasons from `io.check_image_file`);
* duplicates are detected by the sha256 of the file bytes: the first path in sorted order is
  kept, the others are listed as skipped ("duplicate of ...");
* pipeline outputs inside `root` are left out, each folder listed once as skipped: the folders
  given as `outputs` (the prepare stage's own, even before a first run finished) and any
  subfolder holding a stage's resolved config (`config.RESOLVED`: the degraded pairs, models,
  reports), so a folder that holds the pipeline never reads its own crops back in.

The split is by content hash (`split_for_hash`), so it does not change when files are renamed,
moved or added.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import pandas as pd

from diffenhance.config import RESOLVED
from diffenhance.data.errors import DataError
from diffenhance.io import (
    IMAGE_EXTENSIONS,
    ImageReadError,
    atomic_path,
    check_image_file,
    file_sha256,  # re-exported: diffenhance.data.file_sha256
    read_image,
)
from diffenhance.storage import StorageError, local_files

__all__ = [
    "NotAFolderError",
    "UnreadableFolderError",
    "ScanResult",
    "ScannedImage",
    "SkippedFile",
    "file_sha256",
    "iter_image_files",
    "scan_folder",
    "split_for_hash",
    "write_skip_report",
]


log = logging.getLogger(__name__)


class NotAFolderError(DataError, NotADirectoryError):
    """The folder to scan does not exist or is not a directory."""


class UnreadableFolderError(DataError, PermissionError):
    """A folder under the one to scan cannot be listed (its permissions): never skipped in
    silence, and a dataset to fix (exit 2), not storage that failed."""


class ScannedImage(NamedTuple):
    """A usable, unique image: where it is, its content hash and decoded size."""

    path: Path
    sha256: str
    width: int
    height: int


class SkippedFile(NamedTuple):
    """A file that looked like an image but cannot be used, and why."""

    path: Path
    reason: str


@dataclass
class ScanResult:
    """Outcome of `scan_folder`: usable images and skipped files, both in sorted path order."""

    root: Path
    images: list[ScannedImage] = field(default_factory=list)
    skipped: list[SkippedFile] = field(default_factory=list)


def split_for_hash(sha256: str, val_fraction: float) -> str:
    """'val' when the first 32 bits of the hash, as a fraction of 2**32, are below
    `val_fraction`, else 'train'. Deterministic and independent of file names and order."""
    return "val" if int(sha256[:8], 16) / 2**32 < val_fraction else "train"


def iter_image_files(root: str | Path, refused: list[Path] | None = None) -> list[Path]:
    """Regular files under `root` with an image suffix, recursively, hidden entries pruned,
    sorted by their path relative to `root` (POSIX form, so the order is the same on every OS).

    The listing is `storage.local_files`: a symbolic link to a folder (a dataset linked in) is
    followed unless it loops. Entries with an image suffix that are not regular files (a
    symbolic link whose target is missing, a FIFO, socket or device) are appended to `refused`
    when a list is given (left out either way, never opened)."""
    root = Path(root)
    found: list[tuple[str, Path]] = []
    try:
        listed = list(local_files(root, hidden=[]))
    except StorageError as e:  # a subfolder that cannot be listed: the dataset is to fix
        raise UnreadableFolderError(f"image folder {root}: {e}") from None
    for rel, p in listed:
        if p.suffix.lower() not in IMAGE_EXTENSIONS:
            continue
        if p.is_file():
            found.append((rel, p))
        elif refused is not None:
            refused.append(p)
    return [p for _, p in sorted(found)]


def _output_folder(
    path: Path, root: Path, outputs: dict[Path, str], found: dict[Path, str | None]
) -> tuple[Path, str] | None:
    """(folder, why) when `path` lies in a pipeline output below `root`: a folder of `outputs`
    (keys resolved) or one holding `RESOLVED`; `found` caches the answer per folder."""
    for parent in path.relative_to(root).parents:
        if parent == Path("."):
            break
        folder = root / parent
        if folder not in found:
            real = folder.resolve()
            found[folder] = outputs.get(real) or (
                f"a stage's output (holds {RESOLVED})" if (folder / RESOLVED).is_file() else None
            )
        if (why := found[folder]) is not None:
            return folder, why
    return None


def scan_folder(
    root: str | Path,
    *,
    max_pixels: int = 178_956_970,
    min_size: int = 64,
    outputs: Mapping[str | Path, str] | None = None,
) -> ScanResult:
    """Scan `root` (see the module docstring). `outputs`: {folder: what it is, e.g.
    'data.prepared_dir'}, left out when inside `root`. Raises NotAFolderError (a DataError and
    a NotADirectoryError) when `root` is not a directory. Images are decoded one at a time, so
    memory stays bounded by the largest one."""
    root = Path(root)
    if not root.is_dir():
        what = "is not a directory" if root.exists() else "does not exist"
        raise NotAFolderError(f"{root}: image folder {what}")
    result = ScanResult(root=root)
    refused: list[Path] = []
    images = iter_image_files(root, refused)
    for path in refused:  # each raises, saying what it is instead of a file
        try:
            check_image_file(path)
        except ImageReadError as e:
            result.skipped.append(SkippedFile(path, str(e.reason)))
    named = {Path(f).expanduser().resolve(): why for f, why in (outputs or {}).items()}
    found: dict[Path, str | None] = {}
    left_out: dict[Path, str] = {}
    seen: dict[str, Path] = {}
    for path in images:
        if (out := _output_folder(path, root, named, found)) is not None:
            left_out.setdefault(*out)
            continue
        try:
            digest = file_sha256(path)
        except OSError as e:
            result.skipped.append(SkippedFile(path, f"unreadable: {e.strerror or e}"))
            continue
        if digest in seen:
            result.skipped.append(SkippedFile(path, f"duplicate of {seen[digest].as_posix()}"))
            continue
        try:
            img = read_image(path, max_pixels=max_pixels)
        except ImageReadError as e:
            result.skipped.append(SkippedFile(path, str(e.reason)))
            continue
        height, width = int(img.shape[0]), int(img.shape[1])
        del img
        if min(height, width) < min_size:
            result.skipped.append(
                SkippedFile(path, f"too small: {width}x{height}, min_size is {min_size}")
            )
            continue
        seen[digest] = path
        result.images.append(ScannedImage(path, digest, width, height))
    for folder, why in left_out.items():
        log.warning("%s: left out of the scan of %s: %s", folder, root, why)
        result.skipped.append(SkippedFile(folder, f"pipeline output left out: {why}"))
    result.skipped.sort(key=lambda f: f.path.relative_to(root).as_posix())
    return result


def write_skip_report(result: ScanResult | list[SkippedFile], path: str | Path) -> Path:
    """Write skipped files as CSV (columns: path, reason; POSIX paths), atomically.

    Accepts a ScanResult or a plain list of SkippedFile. An empty list still writes the header,
    so the file is always present for DVC."""
    skipped = result.skipped if isinstance(result, ScanResult) else list(result)
    df = pd.DataFrame(
        {
            "path": [Path(s.path).as_posix() for s in skipped],
            "reason": [s.reason for s in skipped],
        },
        columns=["path", "reason"],
    )
    out = Path(path)
    with atomic_path(out) as tmp:
        df.to_csv(tmp, index=False, lineterminator="\n")
    return out
