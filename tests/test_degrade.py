"""Degradations: determinism, statistics, reference agreement and sizes."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from diffenhance.config import DegradeConfig
from diffenhance.degrade import (
    add_gaussian_noise,
    add_poisson_noise,
    blur,
    gaussian_kernel,
    generalized_gaussian_kernel,
    jpeg,
    modcrop,
    pair_seed,
    random_kernel,
    resize,
)
from diffenhance.restoration import get_task, task_names

CFG = DegradeConfig()
TASKS = task_names()


def smooth_image(h: int = 96, w: int = 64) -> np.ndarray:
    """Low-frequency colour image in [0.1, 0.9] (no bicubic overshoot past [0, 1])."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    chans = [
        0.5 + 0.2 * np.sin(2 * np.pi * x / 17 + c) + 0.2 * np.cos(2 * np.pi * y / 23 + 2 * c)
        for c in range(3)
    ]
    return np.stack(chans, -1).astype(np.float32)


def textured_image(h: int = 64, w: int = 64, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(smooth_image(h, w) + 0.1 * rng.standard_normal((h, w, 3)), 0, 1).astype(
        np.float32
    )


def pillow_bicubic(img: np.ndarray, h: int, w: int) -> np.ndarray:
    """Reference: Pillow BICUBIC (a = -0.5, antialiased) on float 'F' images, per channel."""
    chans = []
    for c in range(3):
        pil = Image.fromarray(np.ascontiguousarray(img[..., c], dtype=np.float32))
        assert pil.mode == "F"
        chans.append(np.asarray(pil.resize((w, h), Image.BICUBIC)))
    return np.stack(chans, -1)


# ----------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("validation", [False, True])
def test_degrade_deterministic(task, validation):
    hr = textured_image()
    a = get_task(task).degrade(hr, np.random.default_rng(7), CFG, validation=validation)
    b = get_task(task).degrade(hr, np.random.default_rng(7), CFG, validation=validation)
    assert a.dtype == np.float32 and np.array_equal(a, b)
    assert a.min() >= 0.0 and a.max() <= 1.0
    if task in ("sr2", "sr4") or (validation and task in ("jpeg",)):
        return  # no randomness at all
    outs = [
        get_task(task).degrade(hr, np.random.default_rng(s), CFG, validation=validation)
        for s in range(8, 12)
    ]
    assert any(not np.array_equal(a, o) for o in outs), "different seeds must differ"


def test_degrade_does_not_touch_input():
    hr = textured_image()
    before = hr.copy()
    for task in TASKS:
        get_task(task).degrade(hr, np.random.default_rng(0), CFG)
    assert np.array_equal(hr, before)


# ----------------------------------------------------------------------------- noise


def test_gaussian_noise_std():
    img = np.full((512, 512, 3), 0.5, np.float32)
    noisy = add_gaussian_noise(img, 10.0, np.random.default_rng(0))
    std = float(((noisy.astype(np.float64) - 0.5) * 255).std())
    assert abs(std - 10.0) / 10.0 < 0.02
    assert abs(float(noisy.mean()) - 0.5) < 1e-3


def test_gaussian_gray_noise_is_shared_across_channels():
    img = np.full((64, 64, 3), 0.5, np.float32)
    noisy = add_gaussian_noise(img, 10.0, np.random.default_rng(0), gray=True)
    assert np.array_equal(noisy[..., 0], noisy[..., 1]) and np.array_equal(
        noisy[..., 1], noisy[..., 2]
    )


def test_poisson_noise_mean_preserved():
    rng = np.random.default_rng(0)
    img = np.full((512, 512, 3), 0.5, np.float32)
    noisy = add_poisson_noise(img, 1.0, rng)
    assert abs(float(noisy.mean()) - 0.5) < 1e-3
    # std = scale * sqrt(x / 256) for shot noise with peak 256
    assert abs(float(noisy.std()) - np.sqrt(0.5 / 256)) / np.sqrt(0.5 / 256) < 0.02
    ramp = np.broadcast_to(
        np.linspace(0.2, 0.8, 512, dtype=np.float32)[None, :, None], (512, 512, 3)
    )
    noisy = add_poisson_noise(ramp, 2.0, rng, gray=True)
    assert abs(float(noisy.mean()) - float(ramp.mean())) < 2e-3


# ----------------------------------------------------------------------------- resize


@pytest.mark.parametrize("s", [2, 3, 4])
def test_bicubic_matches_pillow(s):
    # torch's antialiased bicubic and Pillow's BICUBIC are the same filter: they agree to float32
    # rounding (measured max |diff| ~5e-7) over the whole image, borders included.
    img = smooth_image()
    h, w = img.shape[0] // s, img.shape[1] // s
    ours = resize(img, scale=1 / s)
    assert ours.shape == (h, w, 3)
    diff = np.abs(ours - pillow_bicubic(img, h, w))
    assert diff.max() < 1e-5 and diff.mean() < 1e-6
    # on noise the only difference is our clipping to [0, 1]
    rnd = np.random.default_rng(0).random(img.shape, dtype=np.float32)
    ref = np.clip(pillow_bicubic(rnd, h, w), 0, 1)
    assert np.abs(resize(rnd, size=(h, w)) - ref).max() < 1e-5


def test_resize_sizes_and_methods():
    img = smooth_image(48, 64)
    for method in ("bicubic", "bilinear", "area"):
        assert resize(img, scale=0.25, method=method).shape == (12, 16, 3)
        assert resize(img, size=(50, 70), method=method).shape == (50, 70, 3)
    assert resize(img, scale=1 / 3).shape == (16, 21, 3)
    area = resize(img, scale=0.5, method="area")
    box = img.reshape(24, 2, 32, 2, 3).mean(axis=(1, 3))
    assert np.abs(area - box).max() < 1e-6
    with pytest.raises(ValueError, match="exactly one"):
        resize(img)
    with pytest.raises(ValueError, match="method"):
        resize(img, scale=0.5, method="lanczos")


def test_modcrop():
    img = np.zeros((65, 50, 3), np.float32)
    assert modcrop(img, 4).shape == (64, 48, 3)
    assert modcrop(img, 1).shape == img.shape


# ----------------------------------------------------------------------------- JPEG


def test_jpeg_quality_monotone():
    img = textured_image(96, 96)

    def nbytes(q: int) -> int:
        buf = io.BytesIO()
        Image.fromarray((img * 255 + 0.5).astype(np.uint8)).save(buf, format="JPEG", quality=q)
        return len(buf.getvalue())

    assert nbytes(10) < nbytes(50) < nbytes(90)
    err = {q: float(np.abs(jpeg(img, q) - img).mean()) for q in (10, 50, 90)}
    assert err[10] > err[50] > err[90]
    assert not np.array_equal(jpeg(img, 10), jpeg(img, 90))
    assert np.array_equal(jpeg(img, 30), jpeg(img, 30))
    assert jpeg(img, 30).dtype == np.float32
    with pytest.raises(ValueError, match="quality"):
        jpeg(img, 0)


# ----------------------------------------------------------------------------- tasks


def test_sizes():
    hr = textured_image(64, 48)
    assert get_task("sr4").degrade(hr, np.random.default_rng(0), CFG).shape == (16, 12, 3)
    assert get_task("sr2").degrade(hr, np.random.default_rng(0), CFG).shape == (32, 24, 3)
    for task in ("denoise", "jpeg"):
        assert get_task(task).degrade(hr, np.random.default_rng(0), CFG).shape == hr.shape
    for scale in (1, 2, 4):
        cfg = DegradeConfig(blind_scale=scale)
        for seed in range(6):
            lq = get_task("blind").degrade(hr, np.random.default_rng(seed), cfg)
            assert lq.shape == (64 // scale, 48 // scale, 3) and lq.dtype == np.float32
            assert lq.min() >= 0.0 and lq.max() <= 1.0


def test_task_scale_and_errors():
    assert [get_task(t).scale(CFG) for t in ("sr2", "sr4", "denoise", "jpeg")] == [2, 4, 1, 1]
    assert get_task("blind").scale(DegradeConfig(blind_scale=2)) == 2
    with pytest.raises(ValueError, match="unknown task"):
        get_task("sr8")
    with pytest.raises(ValueError, match="modcrop"):
        get_task("sr4").degrade(textured_image(30, 32), np.random.default_rng(0), CFG)
    with pytest.raises(ValueError, match="HxWxC"):
        get_task("sr2").degrade(np.zeros((32, 32), np.float32), np.random.default_rng(0), CFG)
    with pytest.raises(TypeError, match="255"):
        get_task("sr2").degrade(np.zeros((32, 32, 3), np.uint8), np.random.default_rng(0), CFG)


def test_validation_settings_fixed():
    hr = textured_image()
    val = get_task("jpeg").degrade(hr, np.random.default_rng(0), CFG, validation=True)
    assert np.array_equal(val, jpeg(hr, CFG.val_jpeg_quality))
    flat = np.full((256, 256, 3), 0.5, np.float32)
    noisy = get_task("denoise").degrade(flat, np.random.default_rng(0), CFG, validation=True)
    assert abs(float((noisy - 0.5).std() * 255) - CFG.val_noise_sigma) / CFG.val_noise_sigma < 0.02


# ----------------------------------------------------------------------------- seeds, kernels


def test_pair_seed_stable():
    # golden value: computed once; must never change (validation pairs depend on it)
    assert pair_seed(20261126, "val", "sr4", "abc") == 5771479020929213696
    s = pair_seed(0, "val", "sr4", "img")
    assert 0 <= s < 2**63
    assert s == pair_seed(0, "val", "sr4", "img")
    others = {
        pair_seed(1, "val", "sr4", "img"),
        pair_seed(0, "val", "sr2", "img"),
        pair_seed(0, "train", 1, 5),
        pair_seed(0, "train", "1", 5),
        pair_seed(0, "train", 5, 1),
    }
    assert s not in others and len(others) == 5
    with pytest.raises(TypeError):
        pair_seed(0, 1.5)


def test_kernels():
    iso = gaussian_kernel(21, 2.0)
    assert iso.shape == (21, 21) and abs(iso.sum() - 1) < 1e-12
    assert np.allclose(iso, iso.T) and np.allclose(iso, iso[::-1])
    aniso = gaussian_kernel(21, 3.0, 1.0, theta=0.0)
    assert abs(aniso.sum() - 1) < 1e-12
    var_x = (aniso.sum(0) * (np.arange(21) - 10) ** 2).sum()  # spread along columns (x)
    var_y = (aniso.sum(1) * (np.arange(21) - 10) ** 2).sum()
    assert var_x > 4 * var_y
    rot = gaussian_kernel(21, 3.0, 1.0, theta=np.pi / 2)
    assert np.allclose(rot, aniso.T)
    gen = generalized_gaussian_kernel(21, 2.0, 2.0, 0.0, 1.0)
    assert np.allclose(gen, iso)  # beta = 1 is the Gaussian
    for seed in range(20):
        k = random_kernel(np.random.default_rng(seed))
        assert k.ndim == 2 and k.shape[0] % 2 == 1 and abs(k.sum() - 1) < 1e-9
    with pytest.raises(ValueError, match="odd"):
        gaussian_kernel(4, 1.0)


def test_blur_preserves_flat_and_smooths():
    flat = np.full((32, 32, 3), 0.3, np.float32)
    k = gaussian_kernel(11, 2.0)
    assert np.abs(blur(flat, k) - 0.3).max() < 1e-6
    img = textured_image()
    assert blur(img, k).std() < img.std()
    assert blur(img, k).shape == img.shape


# Hashes every task's output for a few seeds; run here and in a fresh single-threaded process
# with another hash salt: DataLoader workers must produce the very same pairs.
_DIGEST_CODE = """
import hashlib
import numpy as np
from diffenhance.config import DegradeConfig
from diffenhance.restoration import get_task, task_names
hr = np.random.default_rng(1).random((64, 64, 3), dtype=np.float32)
h = hashlib.sha256()
for task in task_names():
    for seed in range(3):
        h.update(get_task(task).degrade(hr, np.random.default_rng(seed), DegradeConfig()).tobytes())
digest = h.hexdigest()
"""


def test_identical_across_processes_and_thread_counts():
    import os
    import subprocess
    import sys

    ns: dict = {}
    exec(_DIGEST_CODE, ns)
    code = "import torch; torch.set_num_threads(1)\n" + _DIGEST_CODE + "print(digest)"
    env = {**os.environ, "PYTHONHASHSEED": "12345", "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == ns["digest"]
