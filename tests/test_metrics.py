"""PSNR/SSIM against an independent numpy implementation, crops, Y conversion, protocols."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from diffenhance.config import DegradeConfig
from diffenhance.metrics import (
    PSNR_CAP_DB,
    Protocol,
    mean_psnr,
    psnr,
    rgb_to_y,
    ssim,
    to_tensor,
)
from diffenhance.restoration import get_task

# ----------------------------------------------------------------------------- numpy reference


def ref_y(img: np.ndarray) -> np.ndarray:
    """HxWx3 [0,1] -> HxW BT.601 Y [0,1], MATLAB rgb2ycbcr."""
    img = img.astype(np.float64)
    return (16.0 + 65.481 * img[..., 0] + 128.553 * img[..., 1] + 24.966 * img[..., 2]) / 255.0


def ref_psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return math.inf if mse == 0 else 10.0 * math.log10(1.0 / mse)


def ref_ssim_channel(a: np.ndarray, b: np.ndarray) -> float:
    """Wang et al. 2004 SSIM of one HxW channel: 11x11 Gaussian window (sigma 1.5), K1 0.01,
    K2 0.03, L = 1, mean over the 'valid' region (windows fully inside the image), as in the
    reference MATLAB ssim_index and BasicSR."""
    r = np.arange(11) - 5
    g = np.exp(-(r**2) / (2 * 1.5**2))
    win = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = 0.01**2, 0.03**2
    a, b = a.astype(np.float64), b.astype(np.float64)

    def filt(x: np.ndarray) -> np.ndarray:
        return ndimage.correlate(x, win, mode="constant")[5:-5, 5:-5]  # valid part only

    mu_a, mu_b = filt(a), filt(b)
    var_a = filt(a * a) - mu_a**2
    var_b = filt(b * b) - mu_b**2
    cov = filt(a * b) - mu_a * mu_b
    m = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / (
        (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    )
    return float(m.mean())


def ref_ssim(a: np.ndarray, b: np.ndarray) -> float:
    if a.ndim == 2:
        return ref_ssim_channel(a, b)
    return float(np.mean([ref_ssim_channel(a[..., c], b[..., c]) for c in range(a.shape[2])]))


# ----------------------------------------------------------------------------- test images


def image_pairs() -> list[tuple[str, np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(0)
    h, w = 48, 40
    y, x = np.mgrid[0:h, 0:w] / np.array([h, w]).reshape(2, 1, 1)
    grad = np.stack([x, y, 0.5 * (x + y)], -1)
    checker = ((np.indices((h, w)).sum(0) // 4) % 2).astype(np.float64)[..., None].repeat(3, -1)
    checker = 0.2 + 0.6 * checker
    pairs = [
        ("random", rng.random((h, w, 3)), rng.random((h, w, 3))),
        ("gradient+noise", grad, np.clip(grad + 0.05 * rng.standard_normal(grad.shape), 0, 1)),
        ("checker+noise", checker, np.clip(checker + 0.1 * rng.standard_normal(grad.shape), 0, 1)),
        ("checker-shifted", checker, np.roll(checker, 1, axis=1)),
    ]
    return [(n, a.astype(np.float32), b.astype(np.float32)) for n, a, b in pairs]


PAIRS = image_pairs()
IDS = [p[0] for p in PAIRS]

# Tolerances. `metrics` works in float64 like this reference (the inputs are float32 for both).
# SSIM: measured |diff| <= 3e-15; we allow 1e-8. PSNR: torchmetrics converts ln -> log10 with a
# float32 log(10), a relative error of ~5e-8 (measured |diff| <= 1.5e-6 dB at ~25 dB); we allow
# 1e-5 dB. For scale: the full reflect-padded SSIM map that torchmetrics averages by default
# differs from the valid-region mean by up to 2.7e-2 on these images.
PSNR_TOL = 1e-5
SSIM_TOL = 1e-8


# ----------------------------------------------------------------------------- tests


@pytest.mark.parametrize(("name", "a", "b"), PAIRS, ids=IDS)
@pytest.mark.parametrize("y_channel", [False, True])
def test_psnr_matches_reference(name, a, b, y_channel):
    ra, rb = (ref_y(a), ref_y(b)) if y_channel else (a, b)
    got = psnr(a, b, y_channel=y_channel)
    assert got.shape == (1,)
    assert abs(float(got[0]) - ref_psnr(ra, rb)) < PSNR_TOL


@pytest.mark.parametrize(("name", "a", "b"), PAIRS, ids=IDS)
@pytest.mark.parametrize("y_channel", [False, True])
def test_ssim_matches_reference(name, a, b, y_channel):
    # torchmetrics reflect-pads and averages the full-size map; `ssim` keeps the valid part,
    # which is what this reference computes. (The full-map mean differs by up to ~1e-2.)
    ra, rb = (ref_y(a), ref_y(b)) if y_channel else (a, b)
    got = ssim(a, b, y_channel=y_channel)
    assert got.shape == (1,)
    assert abs(float(got[0]) - ref_ssim(ra, rb)) < SSIM_TOL


def test_batch_is_per_image():
    a = torch.from_numpy(np.stack([p[1] for p in PAIRS])).permute(0, 3, 1, 2)
    b = torch.from_numpy(np.stack([p[2] for p in PAIRS])).permute(0, 3, 1, 2)
    got_p, got_s = psnr(a, b, crop=2), ssim(a, b, crop=2)
    assert got_p.shape == got_s.shape == (len(PAIRS),)
    for i, (_, x, y) in enumerate(PAIRS):
        assert abs(float(got_p[i]) - ref_psnr(x[2:-2, 2:-2], y[2:-2, 2:-2])) < PSNR_TOL
        assert abs(float(got_s[i]) - ref_ssim(x[2:-2, 2:-2], y[2:-2, 2:-2])) < SSIM_TOL


def test_crop_ignores_border():
    a = PAIRS[1][1]
    b = a.copy()
    b[:4] = 1.0 - b[:4]  # differences only in a 4-px border
    b[:, -4:] = 0.0
    assert math.isfinite(float(psnr(a, b)[0]))
    assert float(psnr(a, b, crop=4)[0]) == math.inf
    assert float(ssim(a, b, crop=4)[0]) == pytest.approx(1.0, abs=1e-12)
    assert float(ssim(a, b)[0]) < 0.99
    assert float(psnr(a, b, crop=3)[0]) < math.inf


def test_identical_images():
    a = PAIRS[0][1]
    assert float(psnr(a, a)[0]) == math.inf
    assert float(psnr(a, a, y_channel=True)[0]) == math.inf
    assert float(ssim(a, a)[0]) == pytest.approx(1.0, abs=1e-12)
    m = mean_psnr(torch.tensor([math.inf, 30.0]))
    assert PSNR_CAP_DB == 100.0 and m == pytest.approx((100.0 + 30.0) / 2)  # the cap: 100 dB
    assert mean_psnr([20.0, 30.0]) == pytest.approx(25.0)
    with pytest.raises(ValueError):
        mean_psnr([])


def test_y_golden_values():
    white = torch.ones(1, 3, 2, 2)
    black = torch.zeros(1, 3, 2, 2)
    assert torch.allclose(rgb_to_y(white), torch.full((1, 1, 2, 2), 235 / 255), atol=1e-6)
    assert torch.allclose(rgb_to_y(black), torch.full((1, 1, 2, 2), 16 / 255), atol=1e-7)
    rng = np.random.default_rng(3)
    img = rng.random((5, 7, 3)).astype(np.float32)
    got = rgb_to_y(to_tensor(img))[0, 0].numpy()
    assert np.abs(got - ref_y(img)).max() < 1e-6
    with pytest.raises(ValueError, match="N,3,H,W"):
        rgb_to_y(torch.zeros(1, 1, 4, 4))


def test_to_tensor_and_errors():
    img = np.zeros((8, 6, 3), np.float32)
    assert to_tensor(img).shape == (1, 3, 8, 6)
    assert to_tensor(np.full((8, 6, 3), 255, np.uint8)).max() == 1.0
    assert to_tensor(torch.zeros(3, 8, 6)).shape == (1, 3, 8, 6)
    with pytest.raises(ValueError, match="shapes differ"):
        psnr(img, np.zeros((8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="too small"):
        ssim(np.zeros((16, 16, 3), np.float32), np.zeros((16, 16, 3), np.float32), crop=3)
    with pytest.raises(TypeError):
        to_tensor([[0.0]])


def test_protocols():
    sr4 = get_task("sr4").protocols()
    assert [(p.name, p.y_channel, p.crop) for p in sr4] == [("rgb", False, 4), ("y", True, 4)]
    assert get_task("sr2").protocols()[0].crop == 2
    assert get_task("blind").protocols(DegradeConfig(blind_scale=2))[1].crop == 2
    assert get_task("blind").protocols(DegradeConfig(blind_scale=1))[1].crop == 0
    assert all(p.crop == 0 for t in ("denoise", "jpeg") for p in get_task(t).protocols())
    assert sr4[1].describe() == (
        "PSNR/SSIM on Y (BT.601, MATLAB rgb2ycbcr), 4 px border crop, data range [0,1]"
    )
    assert "no border crop" in get_task("denoise").protocols()[0].describe()
    p = Protocol("y", True, 4)
    a, b = PAIRS[1][1], PAIRS[1][2]
    assert float(p.psnr(a, b)[0]) == float(psnr(a, b, crop=4, y_channel=True)[0])
    assert float(p.ssim(a, b)[0]) == float(ssim(a, b, crop=4, y_channel=True)[0])
    with pytest.raises(ValueError, match="unknown task"):
        get_task("sr3").protocols()


def test_error_std_flat_against_an_independent_computation():
    """Flat = the 30% of pixels where the truth's 5x5-averaged gradient magnitude is lowest;
    noise added only there raises the flat std and the whole one as numpy computes them."""
    from diffenhance.metrics import error_std_flat

    rng = np.random.default_rng(0)
    h, w = 40, 40
    truth = np.full((h, w, 3), 0.5, np.float32)
    truth[:, 20:] = rng.random((h, 20, 1)).astype(np.float32)  # right half: texture (grey)
    err = np.zeros((h, w), np.float32)
    err[:, :8] = rng.normal(0, 3 / 255, (h, 8))  # noise on the left 8 columns (flat)
    pred = truth + err[..., None]  # the same error on R, G, B: Y error = 219/255 * err
    flat, whole = error_std_flat(pred, truth)
    y_err = err * 219.0  # (65.481 + 128.553 + 24.966) / 255 * 255: Y error in 0-255 units
    assert float(whole[0]) == pytest.approx(float(y_err.std()), rel=1e-4)
    # the truth's gradient is 0 up to column 16 (the 5x5 box centred at 17 reaches the step
    # from column 19 to 20); the flattest 30% (480 px) are 480 of those 680 zero-gradient
    # pixels, the first in row-major order (a stable sort of equal keys)
    zero = np.broadcast_to(np.arange(w)[None, :] < 17, (h, w)).ravel()
    idx = np.flatnonzero(zero)[: int(round(0.3 * h * w))]
    assert float(flat[0]) == pytest.approx(float(y_err.ravel()[idx].std()), rel=1e-4)
    assert float(flat[0]) > 0 and float(whole[0]) > 0
    none, _ = error_std_flat(truth, truth)
    assert float(none[0]) == 0.0


def _coherence_scipy(y: np.ndarray, sigma: float = 1.5) -> tuple[np.ndarray, np.ndarray]:
    """The structure-tensor coherence and trace of an HxW image computed with scipy (Sobel,
    Gaussian of radius 5 with replicate edges): an implementation independent of ours."""
    gx, gy = ndimage.sobel(y, axis=1, mode="nearest"), ndimage.sobel(y, axis=0, mode="nearest")
    j = [ndimage.gaussian_filter(a, sigma, mode="nearest", truncate=3.0)
         for a in (gx * gx, gy * gy, gx * gy)]  # fmt: skip
    tr = j[0] + j[1]
    return np.sqrt((j[0] - j[1]) ** 2 + 4 * j[2] ** 2) / tr, tr


def test_coherence_map_golden_and_against_scipy():
    """A linear ramp's gradients share one direction: coherence 1 everywhere; on a random
    image the map and the tensor's trace equal scipy's to 1e-10."""
    from diffenhance.metrics import coherence_map

    yy, xx = np.mgrid[0:32, 0:40].astype(np.float64)
    coh, energy = coherence_map(torch.from_numpy(0.01 * xx + 0.02 * yy)[None, None])
    # 6 px from the border (Sobel 1 + Gaussian radius 5) the replicated edge is out of reach
    assert np.allclose(coh[0, 0, 6:-6, 6:-6].numpy(), 1.0, atol=1e-12)
    # interior: Sobel of the ramp is (8 * 0.01, 8 * 0.02), its squared norm the trace
    assert float(energy[0, 0, 16, 20]) == pytest.approx(64 * (0.01**2 + 0.02**2), rel=1e-12)
    rng = np.random.default_rng(1)
    y = ndimage.gaussian_filter(rng.random((48, 56)), 1.0)
    coh, energy = coherence_map(torch.from_numpy(y)[None, None])
    want_coh, want_tr = _coherence_scipy(y)
    assert np.allclose(coh[0, 0].numpy(), want_coh, atol=1e-10)
    assert np.allclose(energy[0, 0].numpy(), want_tr, rtol=1e-10)
    flat, _ = coherence_map(torch.full((1, 1, 16, 16), 0.5, dtype=torch.float64))
    assert float(flat.abs().max()) == 0.0  # no gradient: 0, not nan


def test_edge_coherence_sees_speckle_along_edges():
    """1 for the truth itself; speckle laid only along the truth's edges (where the grain
    score does not look) drops it below 0.85, as the independent scipy computation says; with
    a mask only the masked pixels count."""
    from diffenhance.metrics import edge_coherence, error_std_flat

    rng = np.random.default_rng(2)
    yy, xx = np.mgrid[0:64, 0:64]
    truth = np.where(((xx - 32) ** 2 + (yy - 30) ** 2) < 20**2, 0.8, 0.2)
    truth += 0.05 * ndimage.gaussian_filter(rng.random((64, 64)), 2.0)  # no tied pixels
    truth = ndimage.gaussian_filter(truth, 1.0)[..., None].repeat(3, axis=2)
    assert float(edge_coherence(truth, truth)[0]) == 1.0
    edge = ndimage.binary_dilation(np.abs(np.gradient(truth[..., 0])[0]) + np.abs(
        np.gradient(truth[..., 0])[1]) > 0.02, iterations=2)  # fmt: skip
    speckle = np.where(edge, rng.normal(0, 0.08, (64, 64)), 0.0)[..., None]
    pred = np.clip(truth + speckle, 0, 1)
    got = float(edge_coherence(pred, truth)[0])
    assert got < 0.85
    # the same figure from scipy: Y = 16/255 + 219/255 * grey for grey images
    y_t, y_p = truth[..., 0] * 219 / 255 + 16 / 255, pred[..., 0] * 219 / 255 + 16 / 255
    c_t, tr = _coherence_scipy(y_t)
    c_p, _ = _coherence_scipy(y_p)
    top = np.argsort(-tr.ravel(), kind="stable")[: int(round(0.2 * tr.size))]
    assert got == pytest.approx(c_p.ravel()[top].mean() / c_t.ravel()[top].mean(), rel=1e-8)
    flat, whole = error_std_flat(pred, truth)  # the flat pixels never saw the speckle
    assert float(flat[0]) == 0.0 and float(whole[0]) > 0
    left = np.zeros((64, 64), np.float32)
    left[:, :20] = 1.0  # a hole that holds no speckle
    speck_right = np.where(xx[..., None] >= 40, pred, truth)
    assert float(edge_coherence(speck_right, truth, mask=left)[0]) == 1.0
    assert float(edge_coherence(pred, truth, mask=left)[0]) < 0.85
    with pytest.raises(ValueError, match="no pixel"):
        edge_coherence(pred, truth, mask=np.zeros((64, 64)))
