"""metrics.hf_energy_ratio: matches a numpy reference, 1 for identical images, falls with blur."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from diffenhance.metrics import hf_energy_ratio


def reference(pred: np.ndarray, target: np.ndarray, cutoff: float) -> float:
    """Straight numpy: Y (BT.601), mean removed, Hann window, |FFT|^2 above cutoff x Nyquist."""

    def hf(img: np.ndarray) -> float:
        y = (16.0 + img.astype(np.float64) @ np.array([65.481, 128.553, 24.966])) / 255.0
        h, w = y.shape
        z = (y - y.mean()) * np.outer(np.hanning(h), np.hanning(w))
        power = np.abs(np.fft.fft2(z)) ** 2
        r = np.hypot(np.fft.fftfreq(h)[:, None], np.fft.fftfreq(w)[None, :]) / 0.5
        return float(power[r > cutoff].sum())

    return hf(pred) / hf(target)


def photo_like(seed: int, h: int = 48, w: int = 40) -> np.ndarray:
    """HxWx3 float32 in [0, 1] with a 1/f-like spectrum (edges and texture at all scales)."""
    rng = np.random.default_rng(seed)
    spec = np.fft.fft2(rng.standard_normal((h, w, 3)), axes=(0, 1))
    r = np.hypot(np.fft.fftfreq(h)[:, None], np.fft.fftfreq(w)[None, :])[..., None]
    img = np.real(np.fft.ifft2(spec / np.maximum(r, 1.0 / max(h, w)), axes=(0, 1)))
    img = (img - img.min()) / (img.max() - img.min())
    return img.astype(np.float32)


@pytest.mark.parametrize("cutoff", [0.1, 0.25, 0.5])
def test_matches_numpy_reference(cutoff):
    target, pred = photo_like(0), photo_like(1)
    got = hf_energy_ratio(pred, target, cutoff=cutoff)
    assert got.shape == (1,) and got.dtype == torch.float64
    assert float(got[0]) == pytest.approx(reference(pred, target, cutoff), rel=1e-9)


def test_identical_is_one_and_batch_is_per_image():
    a, b = photo_like(2), photo_like(3)
    batch_t = torch.from_numpy(np.stack([a, b])).permute(0, 3, 1, 2)
    got = hf_energy_ratio(batch_t, batch_t.flip(0))
    assert float(got[0]) == pytest.approx(reference(a, b, 0.25), rel=1e-9)
    assert float(got[1]) == pytest.approx(reference(b, a, 0.25), rel=1e-9)
    assert torch.allclose(hf_energy_ratio(batch_t, batch_t), torch.ones(2, dtype=torch.float64))


def test_blur_lowers_it_monotonically_and_noise_raises_it():
    hr = torch.from_numpy(photo_like(4, 64, 64)).permute(2, 0, 1)[None]
    values = [float(hf_energy_ratio(hr, hr)[0])]
    x = hr
    for _ in range(4):  # repeated 3x3 box blur: ever blurrier
        x = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
        values.append(float(hf_energy_ratio(x, hr)[0]))
    assert all(a > b for a, b in zip(values, values[1:], strict=False)), values
    assert values[-1] < 0.1
    bicubic = F.interpolate(
        F.interpolate(hr, scale_factor=0.25, mode="bicubic", antialias=True),
        scale_factor=4,
        mode="bicubic",
    ).clamp(0, 1)
    assert float(hf_energy_ratio(bicubic, hr)[0]) < 0.2  # x4 SR's missing band
    noisy = (hr + 0.05 * torch.randn(hr.shape, generator=torch.Generator().manual_seed(0))).clamp(
        0, 1
    )
    assert float(hf_energy_ratio(noisy, hr)[0]) > 1.0


def test_crop_and_errors():
    hr = torch.from_numpy(photo_like(5, 32, 32)).permute(2, 0, 1)[None]
    scaled = hf_energy_ratio(hr * 0.5 + 0.25, hr, crop=4)
    assert float(scaled[0]) == pytest.approx(0.25, rel=1e-6)  # energy scales with amplitude^2
    a, b = photo_like(6, 32, 32), photo_like(7, 32, 32)
    assert float(hf_energy_ratio(a, b, crop=4)[0]) == pytest.approx(
        reference(a[4:-4, 4:-4], b[4:-4, 4:-4], 0.25), rel=1e-9
    )
    with pytest.raises(ValueError, match="cutoff"):
        hf_energy_ratio(hr, hr, cutoff=1.5)
    with pytest.raises(ValueError, match="shapes differ"):
        hf_energy_ratio(hr, hr[..., :16])
