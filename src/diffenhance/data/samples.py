"""Bundled sample photos: the offline default dataset (`data.source: samples`).

Nine real colour photographs ship inside scikit-image (files in the `skimage.data` package
directory, installed with the wheel; nothing is downloaded). They give a tiny but genuine
dataset so the whole pipeline runs with no network and no user data.

The split is fixed and never depends on hashing or ordering:

========================  =====  ============================================
name                      split  content
========================  =====  ============================================
astronaut                 train  portrait (Eileen Collins), 512x512
coffee                    train  cup of coffee, 600x400
hubble_deep_field         train  Hubble deep field, 1000x872
ihc                       train  immunohistochemistry micrograph, 512x512
motorcycle_left           train  motorcycle, left stereo view, 741x500
motorcycle_right          train  same scene, right stereo view, 741x500
retina                    train  retina fundus photograph, 1411x1411
chelsea                   val    Chelsea the cat, 451x300
rocket                    val    SpaceX Falcon 9 launch, 640x427
========================  =====  ============================================

Both motorcycle views are in *train*: they show the same scene, so splitting them would leak
validation content into training. `materialize_samples(dest)` writes them as lossless PNG to
`dest/train/<name>.png` and `dest/val/<name>.png` (JPEG sources are decoded once and stored as
PNG, so later stages never re-decode JPEG).
"""

from __future__ import annotations

import io as _io
from pathlib import Path

from PIL import Image

from diffenhance.io import atomic_write_bytes

__all__ = [
    "SAMPLE_FILES",
    "SAMPLE_SPLIT",
    "TRAIN",
    "VALIDATION",
    "materialize_samples",
    "png_bytes",
    "sample_source_dir",
    "store_if_changed",
]

#: name -> file name inside the `skimage.data` directory.
SAMPLE_FILES: dict[str, str] = {
    "astronaut": "astronaut.png",
    "chelsea": "chelsea.png",
    "coffee": "coffee.png",
    "hubble_deep_field": "hubble_deep_field.jpg",
    "ihc": "ihc.png",
    "motorcycle_left": "motorcycle_left.png",
    "motorcycle_right": "motorcycle_right.png",
    "retina": "retina.jpg",
    "rocket": "rocket.jpg",
}

#: name -> licence of the photo, as scikit-image's docstrings state it (model cards cite these).
SAMPLE_LICENCES: dict[str, str] = {
    "astronaut": "NASA; public domain",
    "chelsea": "CC0 (Stefan van der Walt)",
    "coffee": "CC0 (Rachel Michetti; courtesy of Pikolo Espresso Bar)",
    "hubble_deep_field": "NASA; public domain",
    "ihc": "no known copyright restrictions (scikit-image)",
    "motorcycle_left": "Middlebury 2014 stereo data set (Scharstein et al., GCPR 2014), "
    "redistributed in scikit-image",
    "motorcycle_right": "Middlebury 2014 stereo data set (Scharstein et al., GCPR 2014), "
    "redistributed in scikit-image",
    "retina": "CC0 1.0 (Mikael Häggström)",
    "rocket": "SpaceX; public domain",
}

#: The held-out images (fixed forever: changing it changes every validation number).
VALIDATION: tuple[str, ...] = ("chelsea", "rocket")
#: Everything else; both motorcycle views stay here (same scene).
TRAIN: tuple[str, ...] = tuple(n for n in sorted(SAMPLE_FILES) if n not in VALIDATION)
#: name -> "train" | "val"
SAMPLE_SPLIT: dict[str, str] = {n: ("val" if n in VALIDATION else "train") for n in SAMPLE_FILES}


def sample_source_dir() -> Path:
    """Directory of scikit-image's bundled data files (no download, no pooch)."""
    import skimage.data

    return Path(skimage.data.__file__).parent


def png_bytes(raw: bytes, reduce: int = 1) -> bytes:
    """The bytes to store for one photo given its file's bytes: the file itself when it already
    is an RGB PNG (and `reduce` is 1), otherwise a deterministic lossless PNG encoding of the
    decoded RGB pixels, first shrunk by the integer factor `reduce` (Pillow's antialiased
    `Image.reduce`)."""
    with Image.open(_io.BytesIO(raw)) as im:
        if im.format == "PNG" and im.mode == "RGB" and reduce == 1:
            return raw
        rgb = im.convert("RGB")
    if reduce > 1:
        rgb = rgb.reduce(reduce)
    buf = _io.BytesIO()
    rgb.save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def store_if_changed(target: Path, data: bytes) -> Path:
    """Write `data` to `target` atomically unless it already holds exactly those bytes (then
    the file, and its mtime, are left alone); return `target`."""
    if not (target.is_file() and target.read_bytes() == data):
        atomic_write_bytes(target, data)
    return target


def materialize_samples(dest: str | Path) -> list[Path]:
    """Copy the nine sample photos to `dest/{train,val}/<name>.png`; return the paths, sorted.

    Idempotent: a file whose bytes already match is left untouched (mtime kept); a missing or
    different one is (re)written atomically. Raises FileNotFoundError when scikit-image's data
    directory lacks a sample (a stripped installation).
    """
    dest = Path(dest)
    src_dir = sample_source_dir()
    out: list[Path] = []
    for name in sorted(SAMPLE_FILES):
        src = src_dir / SAMPLE_FILES[name]
        if not src.is_file():
            raise FileNotFoundError(
                f"{src}: bundled sample '{name}' is missing from scikit-image's data directory"
            )
        out.append(
            store_if_changed(dest / SAMPLE_SPLIT[name] / f"{name}.png", png_bytes(src.read_bytes()))
        )
    return sorted(out)
