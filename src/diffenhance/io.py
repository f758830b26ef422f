"""Robust image reading and atomic writing used by every pipeline stage.

* `read_image` decodes PNG, JPEG, WebP, TIFF, BMP and the first frame of GIF into a float32
  RGB array of shape HxWx3 in [0, 1]. EXIF orientation is applied, alpha is composited over
  white, and 16-bit PNG/TIFF keep their 16-bit precision. Every failure (missing, empty,
  non-image, truncated, over the pixel limit) raises `ImageReadError` naming file and reason.
* `write_image` encodes such an array by the path's suffix, 8 or 16 bits per channel.
* `atomic_path` / `atomic_open` / `atomic_write_bytes` write through a hidden temporary file
  in the target's directory (named by `temp_name`, recognised by `is_temp_name`) that is
  fsync'ed and renamed onto the target, so readers never see partial files. The result has the
  permissions a plain `open(path, "w")` gives a new file (0o666 minus the umask).
* `file_sha256` is the one content hash of a file every module uses.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
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
DEFAULT_MAX_PIXELS = 178_956_970  # Pillow's own DecompressionBombError threshold
_WRITE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}
_WRITE_FORMATS |= {".tif": "TIFF", ".tiff": "TIFF", ".bmp": "BMP"}
_GRAY16_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
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


def _check_file(path: PathLike) -> Path:
    p = Path(path)
    if not p.exists():
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
        a = page.asarray()
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
    """Full-precision 16-bit RGB(A) PNG, which Pillow itself decodes to 8 bits.

    Pillow's PNG decoder unfilters the data and its 'RGB;16B' unpacker keeps the high byte of
    every big-endian sample; decoding a second time with 'RGB;16L' keeps the low byte instead.
    Returns uint16 HxWx3|4, or None when `im` is not such a PNG.
    """
    tile = im.tile
    if im.format != "PNG" or len(tile) != 1 or tile[0].args not in ("RGB;16B", "RGBA;16B"):
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


def read_image(path: PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read an image file as float32 RGB of shape HxWx3 with values in [0, 1].

    Supports PNG, JPEG, WebP, TIFF, BMP and the first frame of GIF. EXIF orientation is applied.
    Gray becomes three equal channels; alpha is composited over white; CMYK, YCbCr and
    paletted images are converted to RGB; 16-bit PNG/TIFF keep 16-bit precision (value/65535);
    float TIFF is clipped into [0, 1]. Images with more than `max_pixels` pixels are refused
    before decoding (Pillow's own ceiling of 2 * PIL.Image.MAX_IMAGE_PIXELS still applies).

    Raises ImageReadError (attributes `path`, `reason`) for every failure: missing or empty file,
    not an image, truncated or corrupt data, or too many pixels.
    """
    with _read_errors(path):
        p = _check_file(path)
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
                    a16 = _read_png16_color(p, im)
                    if a16 is not None:
                        a = a16.astype(np.float32) / np.float32(65535)
                    else:
                        im.load()
                        a = _pil_to_float(im)
                    orientation = int(im.getexif().get(0x0112, 1))
    if a.shape[-1] in (2, 4):  # composite over white: c * alpha + 1 * (1 - alpha)
        alpha = a[..., -1:]
        a = a[..., :-1] * alpha + (np.float32(1) - alpha)
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    out = np.ascontiguousarray(_orient(a, orientation), dtype=np.float32)
    assert out.ndim == 3 and out.shape[-1] == 3, out.shape
    return out


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
        p = _check_file(path)
        with Image.open(p) as im:
            _check_pixels(path, im.width, im.height, max_pixels)
            alpha = im.mode in _ALPHA_MODES or "transparency" in im.info
            if alpha:
                im.load()
                rgba = np.asarray(im.convert("RGBA"), dtype=np.float32) / 255.0
                gray = _orient(rgba[..., :3].mean(-1, keepdims=True) * rgba[..., 3:], int(
                    im.getexif().get(0x0112, 1)))[..., 0]  # fmt: skip
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
    ``size`` (width, height) and ``bit_depth`` (16 if any sample has more than 8 bits, else 8).

    Raises ImageReadError when the file is missing, empty or not an image.
    """
    with _read_errors(path):
        p = _check_file(path)
        try:
            im = Image.open(p)
        except UnidentifiedImageError:
            if not _is_tiff(p):
                raise
            with tifffile.TiffFile(p) as tf:
                page = tf.pages.first
                mode = "RGB" if page.photometric == tifffile.PHOTOMETRIC.RGB else "L"
                size = (page.imagewidth, page.imagelength)
                return {"format": "TIFF", "mode": mode, "size": size, "bit_depth": 16}
        with im:
            rawmode = im.tile[0].args if im.tile else ""
            deep = im.mode in _GRAY16_MODES + ("F",) or ";16" in str(rawmode)
            deep = deep or (im.format == "TIFF" and _tiff_bits(im) > 8)
            return {
                "format": im.format,
                "mode": im.mode,
                "size": im.size,
                "bit_depth": 16 if deep else 8,
            }


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
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise
    with contextlib.suppress(OSError):  # persist the rename; not possible on every platform
        _fsync(target.parent)


@contextlib.contextmanager
def atomic_open(path: PathLike) -> Iterator[BinaryIO]:
    """Yield a new binary file open for writing (its temporary path is ``f.name``); on clean
    exit it is closed, fsync'ed and renamed onto `path`, as `atomic_path` does."""
    with atomic_path(path) as tmp, open(tmp, "xb") as f:
        yield f


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


def _quantise(img: np.ndarray, maxval: int, dtype: type[np.unsignedinteger]) -> np.ndarray:
    a = np.asarray(img, dtype=np.float64)
    if not np.isfinite(a).all():
        raise ValueError("image contains NaN or infinite values")
    return np.round(np.clip(a, 0.0, 1.0) * maxval).astype(dtype)


def to_uint8(img: np.ndarray) -> np.ndarray:
    """Float image in [0, 1] (any shape) -> uint8 0..255, clipped and rounded to nearest."""
    return _quantise(img, 255, np.uint8)


def to_uint16(img: np.ndarray) -> np.ndarray:
    """Float image in [0, 1] (any shape) -> uint16 0..65535, clipped and rounded to nearest."""
    return _quantise(img, 65535, np.uint16)


def _encode_png16(a: np.ndarray) -> bytes:
    """uint16 HxW (gray) or HxWx3 (RGB) -> PNG bytes, 16 bits per sample, no filtering."""
    h, w = a.shape[:2]
    rows = np.ascontiguousarray(a, dtype=">u2").reshape(h, -1).view(np.uint8)
    raw = np.concatenate([np.zeros((h, 1), np.uint8), rows], axis=1)  # filter byte 0 per row

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    color_type = 2 if a.ndim == 3 else 0
    ihdr = struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0)
    idat = zlib.compress(raw.tobytes(), 6)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def write_image(path: PathLike, img: np.ndarray, *, bit_depth: int = 8, quality: int = 95) -> Path:
    """Write a float image (HxWx3 RGB or HxW gray, values in [0, 1]) atomically.

    The format follows the suffix: .png, .jpg/.jpeg, .webp, .tif/.tiff, .bmp. Values are
    clipped to [0, 1] and rounded to the nearest code. `bit_depth` 16 is allowed for PNG and
    TIFF only; `quality` (1-100) applies to JPEG (4:4:4 chroma) and WebP. Parent directories
    are created. Returns the path. Raises ImageWriteError for an invalid request.
    """
    suffix = Path(path).suffix.lower()
    fmt = _WRITE_FORMATS.get(suffix)
    if fmt is None:
        raise ImageWriteError(
            path, f"unsupported suffix {suffix!r}; use one of {sorted(_WRITE_FORMATS)}"
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
    a = np.asarray(img)
    if a.dtype.kind != "f":
        raise ImageWriteError(
            path,
            f"expected a float array in [0, 1], got dtype {a.dtype}; "
            "convert e.g. with img.astype(np.float32) / 255",
        )
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[-1] == 3)) or 0 in a.shape:
        raise ImageWriteError(path, f"expected shape HxWx3 or HxW, got {a.shape}")
    if not np.isfinite(a).all():
        raise ImageWriteError(path, "image contains NaN or infinite values")
    data = to_uint16(a) if bit_depth == 16 else to_uint8(a)
    with atomic_path(path) as tmp:
        if fmt == "TIFF":
            photometric = "rgb" if data.ndim == 3 else "minisblack"
            tifffile.imwrite(tmp, data, photometric=photometric, compression="zlib")
        elif bit_depth == 16:
            tmp.write_bytes(_encode_png16(data))
        else:
            options = {"JPEG": {"quality": quality, "subsampling": 0}, "WEBP": {"quality": quality}}
            Image.fromarray(data).save(tmp, format=fmt, **options.get(fmt, {}))
    return Path(path)
