"""Robust image reading and atomic writing used by every pipeline stage.

* `read_image` decodes PNG, JPEG, WebP, TIFF, BMP and the first frame of GIF into a float32
  RGB array of shape HxWx3 in [0, 1]. EXIF orientation is applied, alpha is composited over
  white, and 16-bit PNG/TIFF keep their 16-bit precision. Every failure (missing, empty,
  non-image, truncated, over the pixel limit) raises `ImageReadError` naming file and reason.
  `read_image_alpha` gives the colour and the alpha channel apart (`composite_over_white`
  joins them as `read_image` does).
* `write_image` encodes such an array by the path's suffix, 8 or 16 bits per channel, with an
  alpha channel where the format has one (`ALPHA_SUFFIXES`).
* `atomic_path` / `atomic_open` / `atomic_write_bytes` write through a hidden temporary file
  in the target's directory (named by `temp_name`, recognised by `is_temp_name`) that is
  fsync'ed and renamed onto the target, so readers never see partial files. The result has the
  permissions a plain `open(path, "w")` gives a new file (0o666 minus the umask). An OSError
  of the write (a full disk) names the target.
* `scratch_dir` is a private folder for temporary files, named for its process, that a later
  call sweeps once that process is gone (a kill -9 leaves it behind).
* `file_sha256` is the one content hash of a file every module uses.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import secrets
import shutil
import socket
import struct
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import tifffile
from PIL import Image, ImageFile, UnidentifiedImageError

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp", ".gif"}
)
log = logging.getLogger(__name__)
DEFAULT_MAX_PIXELS = 178_956_970  # Pillow's own DecompressionBombError threshold
# suffix -> the format `write_image` writes (.jpg and .jpeg, .tif and .tiff: one format each)
WRITE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}
WRITE_FORMATS |= {".tif": "TIFF", ".tiff": "TIFF", ".bmp": "BMP"}
# the suffixes `write_image` writes an alpha channel to (JPEG and BMP have none)
ALPHA_SUFFIXES: frozenset[str] = frozenset({".png", ".webp", ".tif", ".tiff"})
_GRAY16_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
GRAY_MODES = ("1", "L", "LA", "La", "F", *_GRAY16_MODES)  # read_image_info modes of gray files
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_TIFF_MAGIC = (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+")
PathLike = str | os.PathLike[str]


class _PathError(Exception):
    def __init__(self, path: PathLike, reason: str) -> None:
        self.path, self.reason = str(path), reason
        super().__init__(f"{self.path}: {reason}")


class ImageReadError(_PathError):
    """An image file could not be read; attributes `path`, `reason`; str() is "path: reason"."""


class ImageWriteError(_PathError):
    """A write request is invalid (suffix, bit depth, array); str() is "path: reason"."""


# ----------------------------------------------------------------------------------- reading
@contextlib.contextmanager
def _read_errors(path: PathLike) -> Iterator[None]:
    """Turn any decoding failure into an `ImageReadError` that names the file."""
    ImageFile.LOAD_TRUNCATED_IMAGES = False  # truncated data must fail, never decode silently
    try:
        with warnings.catch_warnings():  # our own max_pixels check replaces Pillow's warning
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            yield
    except ImageReadError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageReadError(path, f"over Pillow's pixel limit ({e})") from e
    except UnidentifiedImageError as e:
        raise ImageReadError(path, "not a recognised image file") from e
    except FileNotFoundError as e:
        raise ImageReadError(path, "file not found") from e
    except Exception as e:  # every decoder error becomes ImageReadError
        kind = "truncated file" if "truncated" in str(e) else "corrupt or unreadable image data"
        raise ImageReadError(path, f"{kind} ({type(e).__name__}: {e})") from e


def check_image_file(path: PathLike) -> Path:
    """`path` as a Path when it is a non-empty regular file, else ImageReadError saying what
    it is instead (a broken link, a folder, a FIFO that would block a reader)."""
    p = Path(path)
    if not p.exists():
        if p.is_symlink():
            raise ImageReadError(path, f"broken symbolic link (to {os.readlink(p)})")
        raise ImageReadError(path, "file not found")
    if not p.is_file():
        raise ImageReadError(path, "not a regular file")
    if p.stat().st_size == 0:
        raise ImageReadError(path, "empty file (0 bytes)")
    return p


def _check_pixels(path: PathLike, width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise ImageReadError(
            path,
            f"image is {width}x{height} = {width * height} pixels, over the limit "
            f"max_pixels={max_pixels}; pass a larger max_pixels to read it",
        )


def _is_tiff(p: Path) -> bool:
    with open(p, "rb") as f:
        return f.read(4) in _TIFF_MAGIC


def _tiff_bits(im: Image.Image) -> int:
    bps = im.tag_v2.get(258, 8)  # type: ignore[attr-defined]  # BitsPerSample
    return max(bps) if isinstance(bps, tuple) else int(bps)


def _read_tifffile(p: Path, max_pixels: int) -> tuple[np.ndarray, int]:
    """Decode page 0 of a TIFF that Pillow cannot keep at full precision (16-bit/float RGB)."""
    with tifffile.TiffFile(p) as tf:
        page = tf.pages.first
        _check_pixels(p, page.imagewidth, page.imagelength, max_pixels)
        rgb = page.photometric == tifffile.PHOTOMETRIC.RGB
        if not rgb and page.photometric != tifffile.PHOTOMETRIC.MINISBLACK:
            raise ImageReadError(p, f"unsupported TIFF photometric {page.photometric.name}")
        try:
            a = page.asarray()
        except (KeyError, ValueError) as e:
            if "imagecodecs" not in str(e):  # "<COMPRESSION.LZW: 5> requires the 'imagecodecs'"
                raise
            raise ImageReadError(
                p,
                f"TIFF compression {page.compression.name} needs the imagecodecs package "
                "(a dependency of this project: pip install imagecodecs), or save the file "
                "uncompressed or with ZIP",
            ) from None
        if page.planarconfig == tifffile.PLANARCONFIG.SEPARATE and a.ndim == 3:
            a = np.moveaxis(a, 0, -1)
        tag = page.tags.get(274)  # Orientation
        orientation = int(tag.value) if tag is not None else 1
        alpha = bool(page.extrasamples)
    a = a[..., None] if a.ndim == 2 else a
    a = a[..., : (3 if rgb else 1) + alpha]
    if a.dtype.kind == "f":
        a = np.nan_to_num(a.astype(np.float32))
    elif a.dtype.kind in "ui":
        a = a.astype(np.float32) / np.float32(np.iinfo(a.dtype).max)
    else:
        raise ImageReadError(p, f"unsupported TIFF sample type {a.dtype}")
    return np.clip(a, 0.0, 1.0), orientation


def _read_png16_color(p: Path, im: Image.Image) -> np.ndarray | None:
    """Full-precision 16-bit RGB(A) or gray + alpha PNG, which Pillow itself decodes to 8 bits.

    Pillow's PNG decoder unfilters the data and its 'RGB;16B' unpacker keeps the high byte of
    every big-endian sample; decoding a second time with 'RGB;16L' keeps the low byte instead.
    Returns uint16 HxWx3|4 (gray + alpha as RGBA), or None when `im` is not such a PNG.
    """
    tile = im.tile
    if im.format != "PNG" or len(tile) != 1:
        return None
    if tile[0].args == "LA;16B":  # gray + alpha, which Pillow opens as 8-bit RGBA: no
        import imagecodecs  # low-byte unpacker for it, so the whole file is decoded here

        gray, alpha = np.moveaxis(imagecodecs.png_decode(p.read_bytes()), -1, 0)
        return np.stack([gray, gray, gray, alpha], axis=-1)
    if tile[0].args not in ("RGB;16B", "RGBA;16B"):
        return None
    low_rawmode = tile[0].args.replace(";16B", ";16L")
    im.load()
    high = np.asarray(im, dtype=np.uint16)
    with Image.open(p) as again:
        again.tile = [again.tile[0]._replace(args=low_rawmode)]
        again.load()
        low = np.asarray(again, dtype=np.uint16)
    return (high << 8) | low


def _pil_to_float(im: Image.Image) -> np.ndarray:
    """Loaded Pillow image -> float32 HxWxC (C = 1 gray, 3 RGB, 4 RGBA) in [0, 1]."""
    if im.mode in _GRAY16_MODES:
        a = np.asarray(im).astype(np.float32) / np.float32(65535)
    elif im.mode == "F":
        a = np.nan_to_num(np.asarray(im, dtype=np.float32))
    else:
        has_alpha = im.mode in _ALPHA_MODES or "transparency" in im.info
        if im.mode != ("RGBA" if has_alpha else "RGB"):
            im = im.convert("RGBA" if has_alpha else "RGB")
        return np.asarray(im).astype(np.float32) / np.float32(255)
    return np.clip(a, 0.0, 1.0)[..., None]


def _orient(a: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation (1-8) to HxWxC, as PIL.ImageOps.exif_transpose does."""
    ops = {
        2: lambda x: x[:, ::-1],
        3: lambda x: x[::-1, ::-1],
        4: lambda x: x[::-1],
        5: lambda x: x.transpose(1, 0, 2),
        6: lambda x: np.rot90(x, -1),
        7: lambda x: x[::-1, ::-1].transpose(1, 0, 2),
        8: lambda x: np.rot90(x, 1),
    }
    return ops[orientation](a) if orientation in ops else a


def _decode(path: PathLike, max_pixels: int) -> np.ndarray:
    """The oriented pixels of an image file: float32 HxWxC in [0, 1], C = 1 gray, 2 gray +
    alpha, 3 RGB, 4 RGBA (see `read_image`)."""
    with _read_errors(path):
        p = check_image_file(path)
        try:
            im = Image.open(p)
        except UnidentifiedImageError:
            if not _is_tiff(p):  # e.g. float RGB TIFF, which Pillow cannot identify
                raise
            a, orientation = _read_tifffile(p, max_pixels)
        else:
            with im:
                _check_pixels(path, im.width, im.height, max_pixels)
                if (
                    im.format == "TIFF"
                    and im.mode not in _GRAY16_MODES + ("F",)
                    and (_tiff_bits(im) > 8)
                ):
                    a, orientation = _read_tifffile(p, max_pixels)
                else:
                    orientation = int(_header_orientation(im))  # as read_image_info sees it
                    a16 = _read_png16_color(p, im)
                    if a16 is not None:
                        a = a16.astype(np.float32) / np.float32(65535)
                    else:
                        im.load()
                        a = _pil_to_float(im)
    return _orient(a, orientation)


def read_image_alpha(
    path: PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS
) -> tuple[np.ndarray, np.ndarray | None]:
    """Read an image file as (colour, alpha): float32 RGB HxWx3 in [0, 1], not composited,
    and float32 HxW in [0, 1] (0 = transparent), or None when the file has no alpha channel
    (RGBA, LA, a palette or colour key with transparency, TIFF with an extra sample).

    Decodes as `read_image` does (formats, orientation, 16-bit precision of the colour and
    the alpha, errors); `composite_over_white(colour, alpha)` is `read_image`'s array."""
    a = _decode(path, max_pixels)
    alpha = None
    if a.shape[-1] in (2, 4):
        a, alpha = a[..., :-1], np.ascontiguousarray(a[..., -1], dtype=np.float32)
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    out = np.ascontiguousarray(a, dtype=np.float32)
    assert out.ndim == 3 and out.shape[-1] == 3, out.shape
    return out, alpha


def composite_over_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Colour HxWx3 over a white background with alpha HxW (both float in [0, 1]):
    c * alpha + 1 * (1 - alpha), float32 HxWx3."""
    a = np.asarray(alpha, dtype=np.float32)[..., None]
    return np.ascontiguousarray(rgb * a + (np.float32(1) - a), dtype=np.float32)


def read_image(path: PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read an image file as float32 RGB of shape HxWx3 with values in [0, 1].

    Supports PNG, JPEG, WebP, TIFF, BMP and the first frame of GIF. EXIF orientation is applied.
    Gray becomes three equal channels; alpha is composited over white (`read_image_alpha`
    keeps it); CMYK, YCbCr and paletted images are converted to RGB; 16-bit PNG/TIFF keep
    16-bit precision (value/65535); float TIFF is clipped into [0, 1]. Images with more than
    `max_pixels` pixels are refused before decoding (Pillow's own ceiling of
    2 * PIL.Image.MAX_IMAGE_PIXELS still applies).

    Raises ImageReadError (attributes `path`, `reason`) for every failure: missing or empty file,
    not an image, truncated or corrupt data, or too many pixels.
    """
    rgb, alpha = read_image_alpha(path, max_pixels=max_pixels)
    return rgb if alpha is None else composite_over_white(rgb, alpha)


def read_mask(
    path: PathLike,
    size: tuple[int, int] | None = None,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Read an inpainting mask as float32 HxW in {0, 1}: 1 (white, or any light pixel:
    mean of RGB >= 0.5) = fill, 0 (black) = keep. Any image format `read_image` reads; a mask
    with an alpha channel counts transparent pixels as keep (composited over black, not white).

    `size` = (height, width) of the image it belongs to. Raises ImageReadError naming the file
    when it cannot be read, its size differs from `size`, or it masks no pixel at all."""
    with _read_errors(path):
        p = check_image_file(path)
        with Image.open(p) as im:
            _check_pixels(path, im.width, im.height, max_pixels)
            alpha = im.mode in _ALPHA_MODES or "transparency" in im.info
            if alpha:
                orientation = int(_header_orientation(im))
                im.load()
                rgba = np.asarray(im.convert("RGBA"), dtype=np.float32) / 255.0
                gray = _orient(rgba[..., :3].mean(-1, keepdims=True) * rgba[..., 3:],
                               orientation)[..., 0]  # fmt: skip
    if not alpha:
        gray = read_image(path, max_pixels=max_pixels).mean(-1)
    mask = (gray >= 0.5).astype(np.float32)
    if size is not None and mask.shape != tuple(size):
        raise ImageReadError(
            path,
            f"mask is {mask.shape[1]}x{mask.shape[0]} but its image is {size[1]}x{size[0]} "
            "(width x height); a mask must have exactly the image's size",
        )
    if not mask.any():
        raise ImageReadError(
            path, "the mask is empty (no white pixel): paint the region to fill in white"
        )
    return mask


def read_image_info(path: PathLike) -> dict[str, Any]:
    """Header facts without decoding pixels: ``format`` (Pillow name, e.g. 'PNG'), ``mode``,
    ``size`` (width, height) as displayed, which is `read_image`'s (an EXIF orientation that
    turns the image, 5-8, swaps the stored width and height), and ``bit_depth`` (16 if any
    sample has more than 8 bits, else 8).

    Raises ImageReadError when the file is missing, empty or not an image.
    """
    with _header(path) as im:
        if not isinstance(im, Image.Image):  # a TIFF page (tifffile)
            mode = "RGB" if im.photometric == tifffile.PHOTOMETRIC.RGB else "L"
            tag = im.tags.get(274)  # Orientation
            size = _oriented((im.imagewidth, im.imagelength), tag.value if tag else 1)
            return {"format": "TIFF", "mode": mode, "size": size, "bit_depth": 16}
        rawmode = im.tile[0].args if im.tile else ""
        deep = im.mode in _GRAY16_MODES + ("F",) or ";16" in str(rawmode)
        deep = deep or (im.format == "TIFF" and _tiff_bits(im) > 8)
        return {
            "format": im.format,
            "mode": "LA" if rawmode == "LA;16B" else im.mode,  # Pillow says RGBA
            "size": _oriented(im.size, _header_orientation(im)),
            "bit_depth": 16 if deep else 8,
        }


@contextlib.contextmanager
def _header(path: PathLike) -> Iterator[Any]:
    """`path` opened for its header, pixels not decoded: a Pillow image, or the first page of
    a TIFF Pillow cannot open (tifffile). ImageReadError when the file is missing, empty or
    not an image."""
    with _read_errors(path):
        p = check_image_file(path)
        try:
            im = Image.open(p)
        except UnidentifiedImageError:
            if not _is_tiff(p):
                raise
            with tifffile.TiffFile(p) as tf:
                yield tf.pages.first
            return
        with im:
            yield im


def _header_orientation(im: Image.Image) -> Any:
    """The EXIF orientation an opened, not yet loaded, image declares in its header: what
    read_image_info, read_image and read_mask all apply. A PNG's eXIf chunk counts only when
    it comes before the pixels (as browsers read it): Pillow decodes the whole image to look for
    one after them (a 16 MP header check would decode 16 MP; a truncated bomb would fail)."""
    if im.format == "PNG" and "exif" not in im.info:
        return 1
    return im.getexif().get(0x0112, 1)


def _oriented(size: tuple[int, int], orientation: Any) -> tuple[int, int]:
    """(width, height) of a stored `size` once EXIF `orientation` is applied (`_orient`)."""
    w, h = size
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def read_icc_profile(path: PathLike) -> bytes | None:
    """The embedded ICC colour profile of an image file (PNG iCCP, JPEG APP2, WebP, TIFF tag
    34675), or None. Enhance writes it into the output, so a Display P3 or Adobe RGB photo
    keeps its colours (its pixels are restored in their own space, not converted). Raises
    ImageReadError as `read_image_info` does."""
    with _header(path) as im:
        if not isinstance(im, Image.Image):  # a TIFF page (tifffile)
            tag = im.tags.get(34675)  # InterColorProfile
            return bytes(tag.value) if tag is not None else None
        return im.info.get("icc_profile") or None


# ----------------------------------------------------------------------------------- writing
_TEMP_SUFFIX = ".tmp"
_TEMP_NAME = re.compile(r"\.(?P<target>.+)\.[0-9a-f]{8}\.tmp")


def temp_name(name: str) -> str:
    """A fresh hidden temporary file name for an atomic write of a file called `name`:
    ``.<name, at most 100 chars>.<8 hex digits>.tmp``."""
    return f".{name[:100]}.{secrets.token_hex(4)}{_TEMP_SUFFIX}"


def is_temp_name(name: str) -> bool:
    """True for a half-written file of an atomic write: a hidden name ending in ``.tmp``
    (every `temp_name`). Listings, sweeps and publishing skip such files."""
    return name.startswith(".") and name.endswith(_TEMP_SUFFIX)


def temp_files(path: PathLike) -> list[Path]:
    """The temporary files that atomic writes of `path` left beside it (a killed writer),
    sorted; [] when there are none or the folder does not exist."""
    target = Path(path)
    if not target.parent.is_dir():
        return []
    stem = target.name[:100]
    return sorted(
        p
        for p in target.parent.iterdir()
        if (m := _TEMP_NAME.fullmatch(p.name)) is not None and m["target"] == stem
    )


def file_sha256(path: PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in `chunk`-byte blocks (memory bounded)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path (same directory, hidden, ``.tmp`` suffix, not yet created) to
    write to; on clean exit it is fsync'ed and renamed onto `path`. On any exception the
    temporary file is removed and `path` is left untouched. Parent directories are created.
    Create the file with a plain `open` (as every writer does), so it gets the umask's mode."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(temp_name(target.name))
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, target)
    except BaseException as e:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if isinstance(e, OSError) and _unnamed(e, tmp):  # ENOSPC from an encoder: say where
            raise OSError(e.errno, e.strerror, str(target)) from e
        raise
    with contextlib.suppress(OSError):  # persist the rename; not possible on every platform
        _fsync(target.parent)


@contextlib.contextmanager
def atomic_open(path: PathLike) -> Iterator[BinaryIO]:
    """Yield a new binary file open for writing (its temporary path is ``f.name``); on clean
    exit it is closed, fsync'ed and renamed onto `path`, as `atomic_path` does."""
    with atomic_path(path) as tmp, open(tmp, "xb") as f:
        yield f


def _unnamed(e: OSError, tmp: Path) -> bool:
    """A plain OSError with an errno that names no file, or only the hidden temp file."""
    if e.errno is None or type(e).__module__ != "builtins":
        return False
    name = e.filename
    return name is None or (isinstance(name, str | os.PathLike) and os.fspath(name) == str(tmp))


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    """Write `data` to `path` atomically (see `atomic_path`); returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


_QUANTISE_BLOCK = 1 << 20  # values per float64 block: 8 MB of temporaries, whatever the image


def _quantise(img: np.ndarray, maxval: int, dtype: type[np.unsignedinteger]) -> np.ndarray:
    """round(clip(img, 0, 1) * maxval) in float64, a block of rows at a time (a 100 MP image
    would otherwise need several float64 copies of itself)."""
    a = np.asarray(img)
    if a.ndim == 0:
        a = a[None]
    out = np.empty(a.shape, dtype)
    rows = max(1, _QUANTISE_BLOCK * len(a) // max(1, a.size))  # rows per block
    for i in range(0, len(a), rows):
        block = np.asarray(a[i : i + rows], dtype=np.float64)
        if not np.isfinite(block).all():
            raise ValueError("image contains NaN or infinite values")
        out[i : i + rows] = np.round(np.clip(block, 0.0, 1.0) * maxval).astype(dtype)
    return out.reshape(np.shape(img))


def to_uint8(img: np.ndarray) -> np.ndarray:
    """Float image in [0, 1] (any shape) -> uint8 0..255, clipped and rounded to nearest."""
    return _quantise(img, 255, np.uint8)


def to_uint16(img: np.ndarray) -> np.ndarray:
    """Float image in [0, 1] (any shape) -> uint16 0..65535, clipped and rounded to nearest."""
    return _quantise(img, 65535, np.uint16)


def quantise(img: np.ndarray, bit_depth: int) -> np.ndarray:
    """Float image in [0, 1] -> codes of `bit_depth` bits: `to_uint16` for 16, else `to_uint8`."""
    return to_uint16(img) if bit_depth == 16 else to_uint8(img)


def _encode_png16(a: np.ndarray, icc_profile: bytes | None = None) -> bytes:
    """uint16 HxW (gray) or HxWxC (C = 2 gray + alpha, 3 RGB, 4 RGBA) -> PNG bytes, 16 bits
    per sample, no filtering; with `icc_profile`, its iCCP chunk."""
    h, w = a.shape[:2]
    rows = np.ascontiguousarray(a, dtype=">u2").reshape(h, -1).view(np.uint8)
    raw = np.concatenate([np.zeros((h, 1), np.uint8), rows], axis=1)  # filter byte 0 per row

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    color_type = {1: 0, 2: 4, 3: 2, 4: 6}[a.shape[-1] if a.ndim == 3 else 1]
    ihdr = struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0)
    idat = zlib.compress(raw.tobytes(), 6)
    iccp = (
        b"" if not icc_profile else chunk(b"iCCP", b"ICC profile\0\0" + zlib.compress(icc_profile))
    )
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + iccp + chunk(b"IDAT", idat)
        + chunk(b"IEND", b"")
    )  # fmt: skip


def write_image(
    path: PathLike,
    img: np.ndarray,
    *,
    alpha: np.ndarray | None = None,
    bit_depth: int = 8,
    quality: int = 95,
    quantised: bool = False,
    icc_profile: bytes | None = None,
) -> Path:
    """Write a float image (HxWx3 RGB or HxW gray, values in [0, 1]) atomically.

    The format follows the suffix: .png, .jpg/.jpeg, .webp, .tif/.tiff, .bmp. Values are
    clipped to [0, 1] and rounded to the nearest code; `quantised`: `img` holds those codes
    already (`to_uint8` / `to_uint16` of the float image: uint8 for bit_depth 8, uint16 for
    16) and is written as it is, the same bytes as the float image gives. `alpha` (float HxW
    in [0, 1], 0 = transparent) is written as the alpha channel (RGBA or gray + alpha) of
    .png, .webp and .tif/.tiff (`ALPHA_SUFFIXES`), at the image's bit depth. `bit_depth` 16 is
    allowed for PNG and TIFF only; `quality` (1-100) applies to JPEG (4:4:4 chroma) and WebP.
    `icc_profile` (`read_icc_profile` of the input) is embedded in PNG, JPEG, WebP and TIFF
    (BMP has no place for it) when it describes the output's colour space (RGB, or gray for a
    gray image; a CMYK photo's profile is dropped with a warning). Parent directories are
    created. Returns the path. Raises ImageWriteError for an invalid request.
    """
    suffix = Path(path).suffix.lower()
    fmt = WRITE_FORMATS.get(suffix)
    if fmt is None:
        raise ImageWriteError(
            path, f"unsupported suffix {suffix!r}; use one of {sorted(WRITE_FORMATS)}"
        )
    if bit_depth not in (8, 16):
        raise ImageWriteError(path, f"bit_depth must be 8 or 16, got {bit_depth!r}")
    if bit_depth == 16 and fmt not in ("PNG", "TIFF"):
        raise ImageWriteError(
            path,
            f"bit_depth=16 is only supported for .png and .tif/.tiff, not {suffix}; "
            "use bit_depth=8 or a PNG/TIFF path",
        )
    if not 1 <= quality <= 100:
        raise ImageWriteError(path, f"quality must be in 1..100, got {quality!r}")
    a = _check_image(path, img, bit_depth if quantised else None)
    icc_profile = _icc_for(path, icc_profile, gray=a.ndim == 2)
    data = a if quantised else quantise(a, bit_depth)
    if alpha is not None:
        al = quantise(_check_alpha(path, alpha, a), bit_depth)
        data = np.concatenate([data if data.ndim == 3 else data[..., None], al], -1)
    with atomic_path(path) as tmp:
        _encode(tmp, fmt, data, alpha=alpha is not None, quality=quality, icc=icc_profile)
    return Path(path)


def _encode(
    tmp: Path, fmt: str, data: np.ndarray, *, alpha: bool, quality: int, icc: bytes | None
) -> None:
    """Write the codes `data` (uint8 or uint16; `alpha`: its last channel is alpha) to `tmp`
    as `fmt` (a `WRITE_FORMATS` value), with the ICC profile `icc` unless None."""
    if fmt == "TIFF":
        photometric = "rgb" if data.ndim == 3 and data.shape[-1] >= 3 else "minisblack"
        extra: dict[str, Any] = {"extrasamples": ["unassalpha"]} if alpha else {}
        if icc:
            extra["iccprofile"] = icc
        tifffile.imwrite(tmp, data, photometric=photometric, compression="zlib", **extra)
    elif data.dtype == np.uint16:
        tmp.write_bytes(_encode_png16(data, icc))
    else:
        options = {"JPEG": {"quality": quality, "subsampling": 0}, "WEBP": {"quality": quality}}
        opts = options.get(fmt, {})
        if icc and fmt != "BMP":
            opts = {**opts, "icc_profile": icc}
        Image.fromarray(data).save(tmp, format=fmt, **opts)


def _icc_for(path: PathLike, icc: bytes | None, *, gray: bool) -> bytes | None:
    """`icc` when its colour space (header bytes 16-19) is the output's, RGB or gray, else None
    with a warning naming the file: a CMYK photo's profile must not tag the RGB output."""
    if not icc:
        return None
    space = icc[16:20]
    if space == (b"GRAY" if gray else b"RGB "):
        return icc
    log.warning(
        "%s: the input's ICC profile describes %r, not this %s output: written without a "
        "profile (read as sRGB)", path, space.decode("latin-1").strip(), "gray" if gray else "RGB",
    )  # fmt: skip
    return None


def _check_image(path: PathLike, img: np.ndarray, quantised: int | None = None) -> np.ndarray:
    """`write_image`'s image as float HxW or HxWx3 (`quantised` = its bit depth: uint8 or
    uint16 codes); ImageWriteError saying what is wrong."""
    a = np.asarray(img)
    if quantised is not None:
        want = np.dtype(np.uint16 if quantised == 16 else np.uint8)
        if a.dtype != want:
            raise ImageWriteError(
                path, f"quantised codes for bit_depth={quantised} are {want}, got {a.dtype}"
            )
    elif a.dtype.kind != "f":
        raise ImageWriteError(
            path,
            f"expected a float array in [0, 1], got dtype {a.dtype}; "
            "convert e.g. with img.astype(np.float32) / 255",
        )
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[-1] == 3)) or 0 in a.shape:
        raise ImageWriteError(path, f"expected shape HxWx3 or HxW, got {a.shape}")
    if quantised is None and not np.isfinite(a).all():
        raise ImageWriteError(path, "image contains NaN or infinite values")
    return a


def _check_alpha(path: PathLike, alpha: np.ndarray, img: np.ndarray) -> np.ndarray:
    """`write_image`'s alpha as float HxWx1; ImageWriteError saying what is wrong."""
    suffix = Path(path).suffix.lower()
    if suffix not in ALPHA_SUFFIXES:
        raise ImageWriteError(
            path,
            f"{suffix} has no alpha channel; composite the image first "
            f"(composite_over_white) or write one of {sorted(ALPHA_SUFFIXES)}",
        )
    al = np.asarray(alpha)
    if al.dtype.kind != "f" or al.shape != img.shape[:2]:
        raise ImageWriteError(
            path, f"alpha must be float HxW {img.shape[:2]}, got {al.dtype} {al.shape}"
        )
    if not np.isfinite(al).all():
        raise ImageWriteError(path, "alpha contains NaN or infinite values")
    return al[..., None]


# ----------------------------------------------------------------------------------- scratch
_SCRATCH_NAME = re.compile(r"(?P<pid>[0-9]+)-[0-9a-f]{8}@(?P<host>.+)")


def _running(pid: int) -> bool:
    """Whether process `pid` of this host exists (a zombie counts)."""
    if pid <= 0:
        return True  # not a process id: never take it for a finished one
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def sweep_scratch(parent: PathLike, prefix: str) -> list[Path]:
    """Remove the `scratch_dir` folders under `parent` of processes of this host that no
    longer run; returns them. Never a running process's, nor another host's (a shared disk)."""
    root, host, gone = Path(parent), socket.gethostname(), []
    if not root.is_dir():
        return []
    for p in sorted(root.iterdir()):
        m = _SCRATCH_NAME.fullmatch(p.name[len(prefix) :]) if p.name.startswith(prefix) else None
        if m is not None and m["host"] == host and p.is_dir() and not _running(int(m["pid"])):
            shutil.rmtree(p, ignore_errors=True)
            gone.append(p)
    return gone


@contextlib.contextmanager
def scratch_dir(parent: PathLike, prefix: str) -> Iterator[Path]:
    """A new private folder under `parent` (created) for temporary files, removed on exit.

    Named ``<prefix><pid>-<8 hex>@<host>``: the folders a killed process (kill -9) left there
    are swept first (`sweep_scratch`), while those of running processes, on this or another
    host, are left alone."""
    root = Path(parent)
    root.mkdir(parents=True, exist_ok=True)
    sweep_scratch(root, prefix)
    path = root / f"{prefix}{os.getpid()}-{secrets.token_hex(4)}@{socket.gethostname()}"
    path.mkdir(mode=0o700)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
