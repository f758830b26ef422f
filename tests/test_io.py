"""Tests for diffenhance.io: decoding edge cases, precision, error reporting, atomic writes."""

from __future__ import annotations

import errno
import hashlib
import os
import signal
import socket
import stat
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image, ImageFile, ImageOps

from diffenhance.io import (
    ALPHA_SUFFIXES,
    IMAGE_EXTENSIONS,
    ImageReadError,
    ImageWriteError,
    atomic_open,
    atomic_path,
    atomic_write_bytes,
    composite_over_white,
    file_sha256,
    is_temp_name,
    read_icc_profile,
    read_image,
    read_image_alpha,
    read_image_info,
    scratch_dir,
    sweep_scratch,
    temp_files,
    temp_name,
    to_uint8,
    to_uint16,
    write_image,
)

RNG = np.random.default_rng(1234)


def _rand_u8(h: int = 12, w: int = 17, c: int = 3) -> np.ndarray:
    return RNG.integers(0, 256, (h, w, c), dtype=np.uint8)


def _rand_u16(shape: tuple[int, ...]) -> np.ndarray:
    a = RNG.integers(0, 65536, shape, dtype=np.uint16)
    a.flat[:4] = [0, 65535, 1, 257 * 100 + 1]  # extremes and a value 8 bits cannot hold
    return a


def _assert_16bit_exact(img: np.ndarray, expected_u16: np.ndarray) -> None:
    np.testing.assert_array_equal(to_uint16(img), expected_u16)
    np.testing.assert_allclose(img, expected_u16 / 65535, rtol=0, atol=1e-7)
    # really 16-bit: many values are far from any 8-bit code
    assert np.abs(img - np.round(img * 255) / 255).max() > 1e-3


def _no_tmp_left(d: Path) -> bool:
    return not [p for p in d.iterdir() if p.name.endswith(".tmp")]


# ---------------------------------------------------------------------------- round trips
def test_png8_round_trip_exact(tmp_path: Path) -> None:
    u8 = _rand_u8()
    out = write_image(tmp_path / "a.png", u8.astype(np.float32) / 255)
    assert out == tmp_path / "a.png"
    img = read_image(out)
    assert img.dtype == np.float32 and img.shape == (12, 17, 3)
    np.testing.assert_array_equal(to_uint8(img), u8)
    assert read_image_info(out) == {
        "format": "PNG",
        "mode": "RGB",
        "size": (17, 12),
        "bit_depth": 8,
    }


@pytest.mark.parametrize("suffix", [".png", ".tif", ".tiff"])
@pytest.mark.parametrize("shape", [(9, 14, 3), (9, 14)])
def test_16bit_round_trip_keeps_precision(tmp_path: Path, suffix: str, shape: tuple) -> None:
    u16 = _rand_u16(shape)
    path = write_image(tmp_path / f"a{suffix}", u16 / 65535.0, bit_depth=16)
    img = read_image(path)
    expected = u16 if len(shape) == 3 else np.repeat(u16[..., None], 3, axis=-1)
    _assert_16bit_exact(img, expected)
    info = read_image_info(path)
    assert info["bit_depth"] == 16 and info["size"] == (14, 9)


def test_16bit_png_is_a_valid_png(tmp_path: Path) -> None:
    path = write_image(tmp_path / "a.png", _rand_u16((5, 6, 3)) / 65535.0, bit_depth=16)
    with Image.open(path) as im:  # Pillow parses it (CRCs, IHDR) and decodes 8-bit RGB
        im.load()
        assert im.mode == "RGB" and im.size == (6, 5)


def _png16_up_filtered(a: np.ndarray) -> bytes:
    """Another encoder's 16-bit RGB PNG: every row uses filter 2 (Up)."""
    h = a.shape[0]
    rows = a.astype(">u2").reshape(h, -1).view(np.uint8).astype(np.int16)
    up = np.diff(rows, axis=0, prepend=0) % 256
    raw = np.concatenate([np.full((h, 1), 2), up], axis=1).astype(np.uint8).tobytes()

    def chunk(k: bytes, d: bytes) -> bytes:
        return struct.pack(">I", len(d)) + k + d + struct.pack(">I", zlib.crc32(k + d))

    ihdr = struct.pack(">IIBBBBB", a.shape[1], h, 16, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def test_16bit_png_with_row_filters(tmp_path: Path) -> None:
    u16 = _rand_u16((7, 11, 3))
    path = tmp_path / "f.png"
    path.write_bytes(_png16_up_filtered(u16))
    _assert_16bit_exact(read_image(path), u16)


def test_16bit_gray_png_from_pillow(tmp_path: Path) -> None:
    u16 = _rand_u16((6, 8))
    Image.fromarray(u16).save(tmp_path / "g.png")  # mode I;16
    _assert_16bit_exact(read_image(tmp_path / "g.png"), np.repeat(u16[..., None], 3, axis=-1))


def test_16bit_rgba_tiff_and_float_tiff(tmp_path: Path) -> None:
    rgba = _rand_u16((4, 5, 4))
    rgba[..., 3] = 65535
    tifffile.imwrite(tmp_path / "a.tif", rgba, photometric="rgb", extrasamples=["unassalpha"])
    _assert_16bit_exact(read_image(tmp_path / "a.tif"), rgba[..., :3])
    f = np.array([[[-0.5, 0.25, 1.5]]], dtype=np.float32).repeat(3, axis=1)
    tifffile.imwrite(tmp_path / "f.tif", f, photometric="rgb")  # Pillow cannot identify this
    np.testing.assert_array_equal(read_image(tmp_path / "f.tif")[0, 0], [0.0, 0.25, 1.0])
    Image.fromarray(np.array([[-1.0, 0.5, 2.0]], np.float32)).save(tmp_path / "m.tif")  # mode F
    np.testing.assert_array_equal(read_image(tmp_path / "m.tif")[0, :, 0], [0.0, 0.5, 1.0])


def test_16bit_tiff_with_lzw_packbits_or_jpeg_reads_at_full_precision(tmp_path: Path) -> None:
    """Photo tools write LZW (Lightroom, Photoshop); tifffile decodes it with imagecodecs."""
    rgb = _rand_u16((6, 5, 3))
    for c in ("lzw", "packbits", "zlib"):
        tifffile.imwrite(tmp_path / f"{c}.tif", rgb, photometric="rgb", compression=c)
        _assert_16bit_exact(read_image(tmp_path / f"{c}.tif"), rgb)


def test_a_tiff_codec_that_is_missing_is_named(tmp_path: Path) -> None:
    """Without imagecodecs (a machine set up by hand) an LZW TIFF is one clear error."""
    import subprocess
    import sys

    tifffile.imwrite(tmp_path / "a.tif", _rand_u16((4, 4, 3)), photometric="rgb", compression="lzw")
    code = (
        "import sys; sys.modules['imagecodecs'] = None\n"
        "from diffenhance.io import ImageReadError, read_image\n"
        "try:\n    read_image(sys.argv[1])\nexcept ImageReadError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "a.tif")],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert out.startswith(f"{tmp_path / 'a.tif'}: TIFF compression LZW needs the imagecodecs")


def test_16bit_gray_alpha_png_keeps_16_bits(tmp_path: Path) -> None:
    """Pillow opens a 16-bit gray + alpha PNG as 8-bit RGBA (off by up to 255 codes of 65535):
    read exactly, and reported as LA (a gray image) of 16 bits."""
    import imagecodecs

    a = np.random.default_rng(0).integers(0, 65536, (5, 7, 2), dtype=np.uint16)
    (tmp_path / "la.png").write_bytes(imagecodecs.png_encode(a))
    rgb, alpha = read_image_alpha(tmp_path / "la.png")
    np.testing.assert_array_equal(rgb * 65535, np.repeat(a[..., :1], 3, axis=2).astype(np.float32))
    np.testing.assert_array_equal(alpha * 65535, a[..., 1].astype(np.float32))
    assert read_image_info(tmp_path / "la.png") == {
        "format": "PNG", "mode": "LA", "size": (7, 5), "bit_depth": 16,
    }  # fmt: skip


@pytest.mark.parametrize(
    ("name", "depth"),
    [("o.png", 8), ("o.png", 16), ("o.jpg", 8), ("o.webp", 8), ("o.tif", 8), ("o.tif", 16)],
)
def test_an_icc_profile_is_written_and_read_back(tmp_path: Path, name: str, depth: int) -> None:
    """A photo's colour profile (Display P3 from a phone, Adobe RGB from a camera) goes into
    the output, byte for byte, in every format that has a place for it; BMP has none."""
    from PIL import ImageCms

    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    img = np.linspace(0.1, 0.9, 6 * 5 * 3, dtype=np.float32).reshape(6, 5, 3)  # smooth: JPEG too
    write_image(tmp_path / name, img, bit_depth=depth, icc_profile=icc)
    assert read_icc_profile(tmp_path / name) == icc
    np.testing.assert_allclose(read_image(tmp_path / name), img, atol=0.1)  # still decodes
    write_image(tmp_path / name, img, bit_depth=depth)
    assert read_icc_profile(tmp_path / name) is None
    write_image(tmp_path / "o.bmp", img, icc_profile=icc)
    assert read_icc_profile(tmp_path / "o.bmp") is None
    cmyk = icc[:16] + b"CMYK" + icc[20:]  # a CMYK photo's profile must not tag an RGB output
    write_image(tmp_path / name, img, bit_depth=depth, icc_profile=cmyk)
    assert read_icc_profile(tmp_path / name) is None
    gray = icc[:16] + b"GRAY" + icc[20:]  # ... nor a gray one; a gray output keeps it
    write_image(tmp_path / name, img, bit_depth=depth, icc_profile=gray)
    assert read_icc_profile(tmp_path / name) is None
    write_image(tmp_path / name, img[..., 0], bit_depth=depth, icc_profile=gray)
    assert read_icc_profile(tmp_path / name) == gray


def test_gray_png_gives_three_equal_channels(tmp_path: Path) -> None:
    g = _rand_u8(c=1)[..., 0]
    Image.fromarray(g, mode="L").save(tmp_path / "g.png")
    img = read_image(tmp_path / "g.png")
    assert img.shape == (12, 17, 3)
    for c in range(3):
        np.testing.assert_array_equal(to_uint8(img[..., c]), g)


def test_alpha_is_composited_over_white(tmp_path: Path) -> None:
    rgba = np.array([[[0, 0, 0, 128], [255, 0, 0, 255], [10, 20, 30, 0]]], dtype=np.uint8)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    img = read_image(tmp_path / "a.png")
    a = 128 / 255
    np.testing.assert_allclose(img[0, 0], [1 - a] * 3, atol=1e-6)  # black at 50% -> mid gray
    np.testing.assert_allclose(img[0, 1], [1, 0, 0], atol=1e-6)
    np.testing.assert_allclose(img[0, 2], [1, 1, 1], atol=1e-6)
    la = np.array([[[0, 128]]], dtype=np.uint8)
    Image.fromarray(la, mode="LA").save(tmp_path / "la.png")
    np.testing.assert_allclose(read_image(tmp_path / "la.png")[0, 0], [1 - a] * 3, atol=1e-6)


def test_read_image_alpha_keeps_what_read_image_composites(tmp_path: Path) -> None:
    """RGBA, LA and a palette with transparency give their alpha apart; compositing it gives
    read_image's array exactly; an image without alpha gives None."""
    rgba = _rand_u8(5, 6, 4)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    rgb, alpha = read_image_alpha(tmp_path / "a.png")
    np.testing.assert_array_equal(to_uint8(rgb), rgba[..., :3])
    np.testing.assert_array_equal(to_uint8(alpha), rgba[..., 3])
    assert alpha.shape == (5, 6) and alpha.dtype == np.float32
    np.testing.assert_array_equal(composite_over_white(rgb, alpha), read_image(tmp_path / "a.png"))
    Image.fromarray(rgba[..., 2:], mode="LA").save(tmp_path / "la.png")
    rgb, alpha = read_image_alpha(tmp_path / "la.png")
    assert rgb.shape == (5, 6, 3) and (rgb[..., 0] == rgb[..., 2]).all()
    np.testing.assert_array_equal(to_uint8(alpha), rgba[..., 3])
    im = Image.new("P", (3, 2), 0)
    im.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    im.putpixel((1, 0), 1)
    im.save(tmp_path / "p.png", transparency=0)
    rgb, alpha = read_image_alpha(tmp_path / "p.png")
    np.testing.assert_array_equal(alpha, [[0, 1, 0], [0, 0, 0]])
    np.testing.assert_array_equal(rgb[0, 1], [0, 1, 0])
    write_image(tmp_path / "rgb.png", rgb)
    assert read_image_alpha(tmp_path / "rgb.png")[1] is None


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16bit_rgba_keeps_16_bits_in_colour_and_alpha(tmp_path: Path, suffix: str) -> None:
    u16 = _rand_u16((6, 7, 4))
    path = write_image(
        tmp_path / f"a{suffix}", u16[..., :3] / 65535.0, alpha=u16[..., 3] / 65535.0, bit_depth=16
    )
    assert read_image_info(path)["bit_depth"] == 16
    rgb, alpha = read_image_alpha(path)
    _assert_16bit_exact(rgb, u16[..., :3])
    _assert_16bit_exact(np.repeat(alpha[..., None], 3, -1), np.repeat(u16[..., 3:], 3, -1))


@pytest.mark.parametrize("suffix", sorted(ALPHA_SUFFIXES))
def test_write_image_with_alpha_8_bit(tmp_path: Path, suffix: str) -> None:
    u8 = _rand_u8(8, 9, 4)
    u8[..., 3] = 255
    u8[0, :, 3] = 0  # a transparent row and a half one
    u8[1, :, 3] = 128
    path = write_image(tmp_path / f"a{suffix}", u8[..., :3] / 255.0, alpha=u8[..., 3] / 255.0)
    with Image.open(path) as im:
        assert im.mode == "RGBA"
    rgb, alpha = read_image_alpha(path)
    np.testing.assert_array_equal(to_uint8(alpha), u8[..., 3])  # WebP keeps alpha lossless
    if suffix != ".webp":
        np.testing.assert_array_equal(to_uint8(rgb), u8[..., :3])
    gray = write_image(tmp_path / f"g{suffix}", u8[..., 0] / 255.0, alpha=u8[..., 3] / 255.0)
    np.testing.assert_array_equal(to_uint8(read_image_alpha(gray)[1]), u8[..., 3])


def test_write_image_refuses_alpha_where_the_format_has_none(tmp_path: Path) -> None:
    img, alpha = np.zeros((4, 4, 3), np.float32), np.ones((4, 4), np.float32)
    for suffix in (".jpg", ".bmp"):
        with pytest.raises(ImageWriteError, match=f"{suffix} has no alpha channel"):
            write_image(tmp_path / f"a{suffix}", img, alpha=alpha)
    with pytest.raises(ImageWriteError, match="alpha must be float HxW"):
        write_image(tmp_path / "a.png", img, alpha=np.ones((4, 5), np.float32))
    with pytest.raises(ImageWriteError, match="alpha contains NaN"):
        write_image(tmp_path / "a.png", img, alpha=np.full((4, 4), np.nan, np.float32))
    assert list(tmp_path.iterdir()) == []


def test_gif_reads_first_frame(tmp_path: Path) -> None:
    red = Image.new("RGB", (8, 6), (255, 0, 0))
    blue = Image.new("RGB", (8, 6), (0, 0, 255))
    red.save(tmp_path / "a.gif", save_all=True, append_images=[blue], duration=100, loop=0)
    with Image.open(tmp_path / "a.gif") as im:
        assert im.n_frames == 2
    img = read_image(tmp_path / "a.gif")
    assert img.shape == (6, 8, 3)
    np.testing.assert_allclose(img, np.broadcast_to([1.0, 0.0, 0.0], img.shape), atol=1e-6)


def test_paletted_png_with_transparency(tmp_path: Path) -> None:
    im = Image.new("P", (3, 2), 0)
    im.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    im.putpixel((1, 0), 1)
    im.save(tmp_path / "p.png", transparency=0)
    img = read_image(tmp_path / "p.png")
    np.testing.assert_allclose(img[0, 0], [1, 1, 1])  # transparent -> white
    np.testing.assert_allclose(img[0, 1], [0, 1, 0])


def test_cmyk_jpeg_becomes_rgb(tmp_path: Path) -> None:
    Image.new("CMYK", (10, 8), (0, 255, 255, 0)).save(tmp_path / "c.jpg", quality=95)
    img = read_image(tmp_path / "c.jpg")
    assert img.shape == (8, 10, 3)
    np.testing.assert_allclose(img.mean(axis=(0, 1)), [1, 0, 0], atol=0.03)


@pytest.mark.parametrize(
    ("suffix", "atol"), [(".webp", 0.08), (".bmp", 0), (".tif", 0), (".jpg", 0.08)]
)
def test_other_formats_round_trip(tmp_path: Path, suffix: str, atol: float) -> None:
    yy, xx = np.mgrid[0:32, 0:48]
    smooth = np.stack([xx / 47, yy / 31, (xx + yy) / 78], axis=-1).astype(np.float32)
    path = write_image(tmp_path / f"a{suffix}", smooth)
    img = read_image(path)
    assert img.shape == smooth.shape
    tol = atol or 0.5 / 255 + 1e-6
    np.testing.assert_allclose(img, smooth, atol=tol)
    assert suffix in IMAGE_EXTENSIONS


def test_gray_write_and_rounding(tmp_path: Path) -> None:
    g = np.array([[0.6 / 255, 0.4 / 255, -0.3, 1.7]], dtype=np.float64)
    np.testing.assert_array_equal(to_uint8(g), [[1, 0, 0, 255]])  # rounded, not truncated
    path = write_image(tmp_path / "sub" / "dir" / "g.png", g)  # creates parent dirs
    with Image.open(path) as im:
        assert im.mode == "L"
    np.testing.assert_array_equal(to_uint8(read_image(path))[0, :, 1], [1, 0, 0, 255])


# ---------------------------------------------------------------------------- orientation
def test_exif_orientation_6_jpeg(tmp_path: Path) -> None:
    stored = np.zeros((24, 40, 3), dtype=np.uint8)  # H=24, W=40
    stored[:8, :8] = 255  # marked top-left corner (one JPEG block, white: no chroma bleed)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(tmp_path / "o.jpg", exif=exif, quality=95)
    img = read_image(tmp_path / "o.jpg")
    assert img.shape == (40, 24, 3)  # rotated 90 degrees clockwise for display
    expected = np.rot90(stored, k=-1)
    assert expected[0, -1, 0] == 255  # the mark moves to the top-right corner
    assert img[:8, -8:].mean() > 0.9 and img[:8, :8].mean() < 0.1 and img[-8:, -8:].mean() < 0.1
    np.testing.assert_allclose(img, expected / 255, atol=0.1)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pillow(tmp_path: Path, orientation: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(_rand_u8(5, 7)).save(tmp_path / "o.png", exif=exif)
    with Image.open(tmp_path / "o.png") as im:
        expected = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    np.testing.assert_array_equal(to_uint8(read_image(tmp_path / "o.png")), expected)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_image_info_size_is_the_displayed_size(tmp_path: Path, orientation: int) -> None:
    """read_image_info's size is read_image's (w, h): a mask drawn on a photo as it is shown
    (EXIF 6, stored 7x5) is checked against the size it is shown at, not the stored one."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(_rand_u8(5, 7)).save(tmp_path / "o.jpg", exif=exif)
    h, w = read_image(tmp_path / "o.jpg").shape[:2]
    assert read_image_info(tmp_path / "o.jpg")["size"] == (w, h)
    assert (w, h) == ((5, 7) if orientation >= 5 else (7, 5))


def test_a_png_exif_chunk_after_the_pixels_is_read_the_same_everywhere(tmp_path: Path) -> None:
    """An eXIf chunk after IDAT (orientation 6): the header check and the decoder agree on one
    size (both ignore it, as browsers do), so a mask checked against the header fits the image
    as decoded."""
    import struct
    import zlib

    Image.fromarray(_rand_u8(5, 7)).save(tmp_path / "p.png")
    exif = Image.Exif()
    exif[0x0112] = 6
    data = (tmp_path / "p.png").read_bytes()
    body = exif.tobytes()
    chunk = (
        struct.pack(">I", len(body))
        + b"eXIf"
        + body
        + struct.pack(">I", zlib.crc32(b"eXIf" + body))
    )
    (tmp_path / "late.png").write_bytes(data[:-12] + chunk + data[-12:])  # before IEND
    with Image.open(tmp_path / "late.png") as im:
        im.load()
        assert im.getexif().get(0x0112) == 6  # Pillow finds it, after the pixels
    h, w = read_image(tmp_path / "late.png").shape[:2]
    assert read_image_info(tmp_path / "late.png")["size"] == (w, h) == (7, 5)


# ---------------------------------------------------------------------------- bad inputs
def _truncated(tmp_path: Path, suffix: str) -> Path:
    src = tmp_path / f"full{suffix}"
    Image.fromarray(_rand_u8(64, 64)).save(src)
    data = src.read_bytes()
    bad = tmp_path / f"cut{suffix}"
    bad.write_bytes(data[: len(data) // 2])
    return bad


@pytest.mark.parametrize("case", ["missing", "empty", "text", "trunc_png", "trunc_jpg", "dir"])
def test_bad_inputs_raise_image_read_error(tmp_path: Path, case: str) -> None:
    if case == "missing":
        path = tmp_path / "nope.png"
    elif case == "empty":
        path = tmp_path / "empty.png"
        path.write_bytes(b"")
    elif case == "text":
        path = tmp_path / "notes.png"
        path.write_text("this is not an image\n")
    elif case == "dir":
        path = tmp_path / "folder.png"
        path.mkdir()
    else:
        path = _truncated(tmp_path, ".png" if case == "trunc_png" else ".jpg")
    with pytest.raises(ImageReadError) as ei:
        read_image(path)
    err = ei.value
    assert err.path == str(path) and err.reason
    assert str(err).startswith(f"{path}: ")
    if case == "empty":
        assert "empty" in err.reason
    if case.startswith("trunc"):
        assert "truncated" in err.reason or "corrupt" in err.reason
    if case != "trunc_jpg":  # header-level failures also fail read_image_info
        if case == "trunc_png":
            return
        with pytest.raises(ImageReadError):
            read_image_info(path)


def test_truncated_detected_even_if_someone_enabled_load_truncated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(ImageReadError, match="cut.jpg"):
        read_image(_truncated(tmp_path, ".jpg"))


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_pixel_limit_checked(tmp_path: Path, suffix: str) -> None:
    path = write_image(tmp_path / f"big{suffix}", np.zeros((11, 10, 3)), bit_depth=16)
    with pytest.raises(ImageReadError, match="max_pixels=100") as ei:
        read_image(path, max_pixels=100)
    assert ei.value.path == str(path)
    assert read_image(path, max_pixels=110).shape == (11, 10, 3)


# ---------------------------------------------------------------------------- writing
def test_write_rejects_bad_requests(tmp_path: Path) -> None:
    img = np.zeros((4, 4, 3), np.float32)
    with pytest.raises(ImageWriteError, match="bit_depth=16"):
        write_image(tmp_path / "a.jpg", img, bit_depth=16)
    with pytest.raises(ImageWriteError, match="unsupported suffix"):
        write_image(tmp_path / "a.gif", img)
    with pytest.raises(ImageWriteError, match="float"):
        write_image(tmp_path / "a.png", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ImageWriteError, match="shape"):
        write_image(tmp_path / "a.png", np.zeros((4, 4, 4), np.float32))
    with pytest.raises(ImageWriteError, match="NaN"):
        write_image(tmp_path / "a.png", np.full((4, 4), np.nan))
    with pytest.raises(ImageWriteError, match="quality"):
        write_image(tmp_path / "a.jpg", img, quality=0)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("existing", [False, True])
def test_write_is_atomic_when_encoder_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, existing: bool
) -> None:
    target = tmp_path / "out.png"
    if existing:
        target.write_bytes(b"old bytes")

    def broken_save(self: Image.Image, fp: object, *args: object, **kwargs: object) -> None:
        Path(str(fp)).write_bytes(b"\x89PNG partial")
        raise RuntimeError("encoder exploded")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(RuntimeError, match="exploded"):
        write_image(target, np.zeros((4, 4, 3)))
    assert (target.read_bytes() == b"old bytes") if existing else not target.exists()
    assert _no_tmp_left(tmp_path)


def test_write_is_atomic_when_rename_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "out.tif"
    target.write_bytes(b"old bytes")

    def broken_replace(src: object, dst: object) -> None:
        raise OSError("disk on fire")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk on fire"):
        write_image(target, np.zeros((4, 4, 3)), bit_depth=16)
    assert target.read_bytes() == b"old bytes"
    assert _no_tmp_left(tmp_path)


def test_a_full_disk_names_the_file_and_leaves_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An encoder's write gets ENOSPC without a file name: the error names the target."""
    target = tmp_path / "out.png"

    def full(self: Image.Image, fp: object, *args: object, **kwargs: object) -> None:
        Path(str(fp)).write_bytes(b"\x89PNG partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", full)
    with pytest.raises(OSError, match="No space left") as e:
        write_image(target, np.zeros((4, 4, 3)))
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(target)
    assert str(target) in str(e.value)
    assert not target.exists() and _no_tmp_left(tmp_path)


def test_atomic_helpers(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "x.json"
    assert atomic_write_bytes(target, b"{}") == target
    assert target.read_bytes() == b"{}"
    with pytest.raises(ValueError), atomic_path(target) as tmp:
        assert tmp.parent == target.parent
        assert tmp.name.startswith(".") and tmp.name.endswith(".tmp")
        tmp.write_text("half")
        raise ValueError("boom")
    assert target.read_bytes() == b"{}"
    assert _no_tmp_left(target.parent)
    with atomic_path(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new"
    assert _no_tmp_left(target.parent)


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_atomic_writes_get_the_mode_a_plain_open_gives(tmp_path: Path, umask_022: int) -> None:
    """The temp file renamed into place must not keep a private mode: 0o666 & ~umask."""
    plain = tmp_path / "plain.bin"
    plain.write_bytes(b"x")
    old = tmp_path / "old.bin"  # left 0600 by an earlier version: rewritten with the umask's
    old.write_bytes(b"old")
    old.chmod(0o600)
    atomic_write_bytes(tmp_path / "a.bin", b"x")
    atomic_write_bytes(old, b"new")
    with atomic_open(tmp_path / "b.bin") as f:
        f.write(b"x")
    with atomic_path(tmp_path / "c.txt") as tmp:
        tmp.write_text("x")
    write_image(tmp_path / "d.png", np.zeros((4, 4, 3)))
    written = ["a.bin", "old.bin", "b.bin", "c.txt", "d.png"]
    assert {n: _mode(tmp_path / n) for n in written} == dict.fromkeys(written, 0o644)
    assert _mode(plain) == 0o644
    os.umask(0o027)  # the umask decides, not a fixed mode
    atomic_write_bytes(tmp_path / "e.bin", b"x")
    assert _mode(tmp_path / "e.bin") == 0o640
    assert _no_tmp_left(tmp_path)


def test_atomic_open_replaces_only_on_success(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "x.bin"
    with atomic_open(target) as f:
        assert is_temp_name(Path(f.name).name) and Path(f.name).parent == target.parent
        f.write(b"one")
    with pytest.raises(RuntimeError), atomic_open(target) as f:
        f.write(b"two")
        raise RuntimeError("interrupted")
    assert target.read_bytes() == b"one" and _no_tmp_left(target.parent)


def test_temp_names_are_recognised_and_found_per_target(tmp_path: Path) -> None:
    target = tmp_path / "img.png"
    mine = tmp_path / temp_name(target.name)
    other = tmp_path / temp_name("img.png.x")  # another target's temp file
    long_target = tmp_path / ("n" * 150 + ".png")  # names are cut to 100 characters
    long_tmp = tmp_path / temp_name(long_target.name)
    for p in (mine, other, long_tmp, target):
        p.write_bytes(b"")
    assert all(is_temp_name(p.name) for p in (mine, other, long_tmp))
    assert not any(is_temp_name(n) for n in ("img.png", ".hidden.png", "x.tmp"))
    assert mine.name != temp_name(target.name)  # fresh every time
    assert temp_files(target) == [mine]
    assert temp_files(long_target) == [long_tmp]
    assert temp_files(tmp_path / "missing" / "x.png") == []


def test_file_sha256_streams_in_blocks(tmp_path: Path) -> None:
    data = RNG.bytes(10_000)
    (tmp_path / "f").write_bytes(data)
    want = hashlib.sha256(data).hexdigest()
    assert file_sha256(tmp_path / "f") == file_sha256(str(tmp_path / "f"), chunk=999) == want


# ---------------------------------------------------------------------------- scratch folders
def _dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    return int(proc.stdout)


def test_scratch_dir_left_by_kill_9_is_swept_and_a_live_ones_kept(tmp_path: Path) -> None:
    """A process killed inside `scratch_dir` leaves its folder; the next call removes it, but
    never the folder of a running process, of another host, or anything else there."""
    code = (
        "import os, signal, sys; from diffenhance.io import scratch_dir\n"
        "with scratch_dir(sys.argv[1], 'job-') as d:\n"
        "    (d / 'in').write_bytes(b'x'); print(d, flush=True)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True,
                          text=True)  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    killed = Path(proc.stdout.strip())
    assert killed.parent == tmp_path and (killed / "in").is_file()
    host = socket.gethostname()
    live = tmp_path / f"job-{os.getppid()}-0123abcd@{host}"  # a running process's
    other_host = tmp_path / f"job-{_dead_pid()}-0123abcd@{host}.elsewhere"
    other = [tmp_path / f"other-{_dead_pid()}-0123abcd@{host}", tmp_path / "job-notes"]
    for d in (live, other_host, *other):
        d.mkdir()
    with scratch_dir(tmp_path, "job-") as mine:
        assert mine.is_dir() and stat.S_IMODE(mine.stat().st_mode) == 0o700
        assert not killed.exists()
        assert sweep_scratch(tmp_path, "job-") == []  # this process runs: its own is kept
        assert mine.is_dir()
    assert not mine.exists()
    assert sorted(tmp_path.iterdir()) == sorted([live, other_host, *other])
