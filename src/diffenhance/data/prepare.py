"""The `prepare` stage: resolve the source images and cut them into sub-image crops.

    sources = list_sources(cfg)              # samples / folder / div2k -> [SourceImage]
    rows = [r for s in sources for r in prepare_one(s, cfg)]   # one image at a time
    write_manifest(rows, cfg)                # <prepared_dir>/manifest.csv

`prepare_dataset(cfg)` chains exactly these three, a batch (`batches`: a tenth of the images,
at least `BATCH_MIN`) at a time; the Prefect flow maps `prepare_batch` over the same batches
instead. Either logs one INFO line per batch (`log_progress`: about every 10 %, so DIV2K's 900
images give ten lines, not 900), each image at DEBUG, and one closing line (`summary`).
Output layout under `cfg.prepared_dir`:

* `{split}/{name}_s{idx:03d}.png` - the crops, 8-bit RGB PNG, `idx` in row-major box order;
* `manifest.csv` - one row per crop (`MANIFEST_COLUMNS`), sorted by `crop_path`; paths are
  POSIX, `crop_path` relative to `prepared_dir`, `source_path` as built from the config
  (relative paths stay relative, so the file is identical on every machine);
* `skipped.csv` - files that were not used (path, reason), written by `list_sources`.

Crops follow BasicSR's `extract_subimages`: positions 0, step, 2*step, ... plus one flush with
the far border when a remainder is left, so every pixel is covered (`crop_boxes`). A side
shorter than `crop_size` (but >= `min_size`, smaller images are skipped) is taken whole, so an
image smaller than `crop_size` on both sides becomes a single crop of the whole image, and a
long thin one a row of strips. Splits: samples use their fixed split (`samples.SAMPLE_SPLIT`),
DIV2K its official train (0001-0800) / valid (0801-0900) sets, a user folder the content hash
(`folder.split_for_hash`). Same inputs and config give byte-identical PNGs and manifest;
crops no longer listed in the manifest are deleted, so reruns with a new crop size stay clean.
The manifest is removed before the first crop is written and written last, so a stopped run
leaves none (never an old one describing new crops).
"""

from __future__ import annotations

import logging
import math
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from diffenhance.config import DataConfig
from diffenhance.data.div2k import fetch_div2k
from diffenhance.data.errors import DataError
from diffenhance.data.folder import (
    NotAFolderError,
    SkippedFile,
    scan_folder,
    split_for_hash,
    write_skip_report,
)
from diffenhance.data.samples import materialize_samples
from diffenhance.io import atomic_path, file_sha256, read_image, write_image

__all__ = [
    "BATCH_MIN",
    "MANIFEST",
    "MANIFEST_COLUMNS",
    "SKIPPED",
    "SPLITS",
    "NoImagesError",
    "NoManifestError",
    "SourceImage",
    "batches",
    "collect_sources",
    "crop_boxes",
    "list_sources",
    "load_manifest",
    "log_progress",
    "manifest_frame",
    "prepare_batch",
    "prepare_dataset",
    "prepare_one",
    "summary",
    "write_manifest",
]

log = logging.getLogger(__name__)

MANIFEST = "manifest.csv"
SKIPPED = "skipped.csv"
SPLITS: tuple[str, ...] = ("train", "val")
MANIFEST_COLUMNS: tuple[str, ...] = (
    "crop_path",
    "source_path",
    "source_sha256",
    "split",
    "top",
    "left",
    "height",
    "width",
    "crop_sha256",
)
Box = tuple[int, int, int, int]  # top, left, height, width
BATCH_MIN = 5  # images per batch at least: a small run logs a few progress lines, not one each


class NoImagesError(DataError, ValueError):
    """The configured source yielded no usable image (see skipped.csv for why)."""


class NoManifestError(DataError, FileNotFoundError):
    """No `<prepared_dir>/manifest.csv`: `prepare` has not run, or stopped before the end."""


@dataclass(frozen=True)
class SourceImage:
    """One validated source image: where it is, its split, content hash and output name."""

    path: Path
    split: str
    sha256: str
    name: str  # crop file stem, unique across the dataset


def _axis_positions(n: int, size: int, step: int, thresh_size: int) -> tuple[list[int], int]:
    if n <= size:
        return [0], n
    pos = list(range(0, n - size + 1, step))
    if n - (pos[-1] + size) > thresh_size:
        pos.append(n - size)
    return pos, size


def crop_boxes(h: int, w: int, size: int, step: int, thresh_size: int = 0) -> list[Box]:
    """Sub-image boxes (top, left, height, width) of an h x w image, row-major.

    Per axis (BasicSR `extract_subimages`): positions 0, step, 2*step, ... while the crop fits,
    plus `n - size` when more than `thresh_size` pixels would be left uncovered. A side with
    n <= size yields one position (0) and extent n.

    >>> crop_boxes(300, 451, 128, 64)[-1]
    (172, 323, 128, 128)
    """
    if h < 1 or w < 1 or size < 1 or step < 1:
        raise ValueError(
            f"crop_boxes: need positive sizes, got h={h} w={w} size={size} step={step}"
        )
    tops, ch = _axis_positions(h, size, step, thresh_size)
    lefts, cw = _axis_positions(w, size, step, thresh_size)
    return [(t, left, ch, cw) for t in tops for left in lefts]


def _safe_stem(path: Path) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", path.stem).strip(".") or "image"


def _folder_sources(cfg: DataConfig) -> tuple[list[tuple[Path, str, str]], list[SkippedFile]]:
    """([(path, split, sha256)], skipped) of `cfg.folder`: scanned recursively, leaving out
    the pipeline's outputs inside it (`prepared_dir`, `raw_dir`, any stage's output folder:
    `scan_folder`), and split by content hash. For a folder with >= 2 images where the hash
    split leaves one side empty, the image with the lowest (resp. highest) hash moves over, so
    both splits exist."""
    if not cfg.folder:
        raise ValueError("data.folder must be set when data.source is 'folder'")
    folder = Path(cfg.folder).expanduser()
    if not folder.is_dir():
        what = "is not a directory" if folder.exists() else "does not exist"
        raise NotAFolderError(
            f"data.folder={cfg.folder!r}: {folder} {what}; set data.folder to a folder of images"
        )
    own = {cfg.prepared_dir: "data.prepared_dir", cfg.raw_dir: "data.raw_dir"}
    scan = scan_folder(folder, max_pixels=cfg.max_pixels, min_size=cfg.min_size, outputs=own)
    found = [
        (im.path, split_for_hash(im.sha256, cfg.val_fraction), im.sha256) for im in scan.images
    ]
    splits = Counter(s for _, s, _ in found)
    if len(found) >= 2 and cfg.val_fraction > 0 and len(splits) == 1:
        want = "val" if "train" in splits else "train"
        pick = (min if want == "val" else max)(found, key=lambda f: f[2])
        log.warning("hash split left '%s' empty; moving %s there", want, pick[0])
        found = [(p, want if (p, s, h) == pick else s, h) for p, s, h in found]
    return found, scan.skipped


def collect_sources(
    cfg: DataConfig, *, base_url_override: str | None = None
) -> tuple[list[SourceImage], list[SkippedFile]]:
    """Resolve `cfg.source` into validated, unique source images and the skipped files.

    samples: materialised to `<raw_dir>/samples/{train,val}`; div2k: downloaded and extracted
    to `<raw_dir>/div2k` (`base_url_override` replaces `cfg.div2k_url`); folder: `cfg.folder`
    scanned recursively and split by content hash (`_folder_sources`).
    """
    found: list[tuple[Path, str, str]] = []  # path, split, sha256
    skipped: list[SkippedFile] = []
    if cfg.source == "folder":
        found, skipped = _folder_sources(cfg)
    else:
        if cfg.source == "samples":
            root = Path(cfg.raw_dir) / "samples"
            materialize_samples(root)
            dirs = {"train": root / "train", "val": root / "val"}
        elif cfg.source == "div2k":
            dirs = fetch_div2k(cfg, base_url=base_url_override)
        else:
            raise ValueError(f"data.source {cfg.source!r}: expected samples, folder or div2k")
        for split in SPLITS:
            scan = scan_folder(dirs[split], max_pixels=cfg.max_pixels, min_size=cfg.min_size)
            skipped += scan.skipped
            found += [(im.path, split, im.sha256) for im in scan.images]

    stems = Counter(_safe_stem(p) for p, _, _ in found)
    sources = [
        SourceImage(
            p,
            split,
            sha,
            _safe_stem(p) if stems[_safe_stem(p)] == 1 else f"{_safe_stem(p)}-{sha[:8]}",
        )
        for p, split, sha in found
    ]
    names = Counter(s.name for s in sources)
    if clash := [n for n, c in names.items() if c > 1]:
        raise ValueError(f"crop names are not unique: {clash[:5]}")
    sources.sort(key=lambda s: (s.split, s.name))
    return sources, skipped


def list_sources(cfg: DataConfig, *, base_url_override: str | None = None) -> list[SourceImage]:
    """`collect_sources`, plus `<prepared_dir>/skipped.csv` written as a side effect; the start
    of the stage, so it also removes `<prepared_dir>/manifest.csv`: `prepare_one` rewrites crops
    in place, and a run stopped before `write_manifest` must leave no index describing files it
    did not write (loading then says to rerun `prepare`).

    Raises NoImagesError (after writing skipped.csv, the previous dataset left as it was) when
    no image is usable."""
    sources, skipped = collect_sources(cfg, base_url_override=base_url_override)
    report = write_skip_report(skipped, Path(cfg.prepared_dir) / SKIPPED)
    if skipped:
        log.warning("%d file(s) skipped, see %s", len(skipped), report)
    if not sources:
        raise NoImagesError(
            f"data.source={cfg.source!r}: no usable image found ({len(skipped)} skipped, "
            f"reasons in {report})"
        )
    (Path(cfg.prepared_dir) / MANIFEST).unlink(missing_ok=True)
    return sources


def prepare_one(src: SourceImage, cfg: DataConfig) -> list[dict[str, object]]:
    """Crop one source image into `<prepared_dir>/<split>/`; return its manifest rows.

    Decodes only this image (memory bounded by one image); rewrites its crops atomically.
    Raises RuntimeError when the file changed since `list_sources` hashed it."""
    if (now := file_sha256(src.path)) != src.sha256:
        raise RuntimeError(f"{src.path}: changed since it was listed ({src.sha256} -> {now})")
    img = read_image(src.path, max_pixels=cfg.max_pixels)
    h, w = img.shape[:2]
    if min(h, w) < cfg.min_size:
        return []
    rows: list[dict[str, object]] = []
    for idx, (top, left, ch, cw) in enumerate(crop_boxes(h, w, cfg.crop_size, cfg.crop_step)):
        rel = f"{src.split}/{src.name}_s{idx:03d}.png"
        out = Path(cfg.prepared_dir) / rel
        write_image(out, np.ascontiguousarray(img[top : top + ch, left : left + cw]))
        rows.append(
            {
                "crop_path": rel,
                "source_path": Path(src.path).as_posix(),
                "source_sha256": src.sha256,
                "split": src.split,
                "top": top,
                "left": left,
                "height": ch,
                "width": cw,
                "crop_sha256": file_sha256(out),
            }
        )
    log.debug("prepare: %s -> %d crops", src.path, len(rows))
    return rows


def batches(sources: list[SourceImage]) -> list[list[SourceImage]]:
    """`sources` in consecutive batches of a tenth of them (at least `BATCH_MIN` images): the
    stage's unit of progress (one INFO line each) and the flow's unit of work (one task each)."""
    size = max(BATCH_MIN, math.ceil(len(sources) / 10))
    return [sources[i : i + size] for i in range(0, len(sources), size)]


def prepare_batch(batch: list[SourceImage], cfg: DataConfig) -> list[dict[str, object]]:
    """`prepare_one` over `batch`, in order; their manifest rows."""
    return [row for src in batch for row in prepare_one(src, cfg)]


def log_progress(done: int, total: int) -> None:
    """The stage's INFO progress line, after each batch: images cropped so far."""
    log.info("prepare: %d/%d images cropped (%d%%)", done, total, 100 * done // max(total, 1))


def _flatten(rows: Iterable[dict[str, object] | Iterable[dict[str, object]]]) -> list[dict]:
    flat: list[dict] = []
    for r in rows:
        if isinstance(r, dict):
            flat.append(r)
        else:  # a list of rows, e.g. one mapped Prefect result per image
            flat.extend(r)
    return flat


def manifest_frame(rows: Iterable[dict[str, object] | Iterable[dict[str, object]]]) -> pd.DataFrame:
    """Rows (flat, or one list per image) -> the manifest DataFrame, sorted by crop_path."""
    df = pd.DataFrame(_flatten(rows), columns=list(MANIFEST_COLUMNS))
    dup = df["crop_path"][df["crop_path"].duplicated()]
    if len(dup):
        raise ValueError(f"duplicate crop paths in manifest rows: {list(dup[:5])}")
    return df.sort_values("crop_path", kind="stable").reset_index(drop=True)


def write_manifest(
    rows: Iterable[dict[str, object] | Iterable[dict[str, object]]],
    cfg: DataConfig,
    *,
    prune: bool = True,
) -> Path:
    """Write `<prepared_dir>/manifest.csv` atomically (sorted, so the order rows arrive in does
    not matter); with `prune`, delete crop PNGs in the split folders that it does not list."""
    df = manifest_frame(rows)
    prepared = Path(cfg.prepared_dir)
    out = prepared / MANIFEST
    with atomic_path(out) as tmp:
        df.to_csv(tmp, index=False, lineterminator="\n")
    if prune:
        keep = set(df["crop_path"])
        for split in SPLITS:
            d = prepared / split
            if not d.is_dir():
                continue
            for f in sorted(d.glob("*.png")):
                if f"{split}/{f.name}" not in keep:
                    f.unlink()
    return out


def load_manifest(prepared_dir: str | Path) -> pd.DataFrame:
    """Read `<prepared_dir>/manifest.csv` (NoManifestError naming the stage to run)."""
    path = Path(prepared_dir) / MANIFEST
    if not path.is_file():
        raise NoManifestError(
            f"{path}: no manifest: the `prepare` stage has not run (or stopped before it "
            "finished); run `diffenhance prepare` (or `dvc repro prepare`) first"
        )
    return pd.read_csv(path, dtype={"source_sha256": str, "crop_sha256": str})


def summary(rows: list[dict[str, object]], images: int, cfg: DataConfig) -> str:
    """The stage's closing line: images, crops per split, files skipped (counted from the
    `skipped.csv` that `list_sources` wrote) and where the manifest is."""
    splits = Counter(str(r["split"]) for r in rows)
    skipped = len(pd.read_csv(Path(cfg.prepared_dir) / SKIPPED))
    per_split = ", ".join(f"{splits[s]} {s}" for s in SPLITS)
    return (
        f"prepare: {images} images -> {len(rows)} crops ({per_split}), {skipped} file(s) "
        f"skipped -> {Path(cfg.prepared_dir) / MANIFEST}"
    )


def prepare_dataset(cfg: DataConfig, *, base_url_override: str | None = None) -> pd.DataFrame:
    """list_sources -> prepare_batch for each of `batches` (in order; `log_progress` after
    each) -> write_manifest -> `summary` logged; return the manifest."""
    sources = list_sources(cfg, base_url_override=base_url_override)
    rows: list[dict[str, object]] = []
    done = 0
    for batch in batches(sources):
        rows += prepare_batch(batch, cfg)
        done += len(batch)
        log_progress(done, len(sources))
    write_manifest(rows, cfg)
    log.info("%s", summary(rows, len(sources), cfg))
    return manifest_frame(rows)
