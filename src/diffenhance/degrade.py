"""Pure, seeded image degradations: the LQ side of every (LQ, HQ) pair.

One function per operation, BasicSR-style, composed by each restoration task's `synthesise`
(`diffenhance.restoration`: one file per task). Images are numpy
float32 HxWxC (C = 3, or 1 where noted) in [0, 1]; all randomness comes from an injected
`np.random.Generator`, so the same input and seed give a bit-identical output in any process
(no global RNG, no thread-count-dependent maths). Training calls these in DataLoader workers
with a per-sample `pair_seed`; the `degrade` stage calls them with a fixed validation seed.

The `blind` task is a simplified version of the second-order pipeline of Real-ESRGAN
(X. Wang, L. Xie, C. Dong, Y. Shan, "Real-ESRGAN: Training Real-World Blind Super-Resolution
with Pure Synthetic Data", ICCVW 2021) as implemented in BasicSR
(https://github.com/XPixelGroup/BasicSR): twice [blur -> random resize -> Gaussian/Poisson
noise -> JPEG], the second time with weaker parameters, then resize to HR / blind_scale and a
final JPEG. The ranges are Real-ESRGAN's defaults (module constants below: `BLIND_STAGE1`,
`BLIND_STAGE2`, `KERNEL_PROBS`); plateau kernels are folded into the generalised ones and the
sinc (ringing) filters are left out.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from PIL import Image, ImageDraw

ResizeMethod = Literal["bicubic", "bilinear", "area"]
RESIZE_METHODS: tuple[str, ...] = ("bicubic", "bilinear", "area")

# Real-ESRGAN kernel types and probabilities (plateau_iso/aniso mass moved to generalised).
KERNEL_PROBS: dict[str, float] = {
    "iso": 0.45,
    "aniso": 0.25,
    "generalized_iso": 0.24,
    "generalized_aniso": 0.06,
}
KERNEL_SIZES: tuple[int, ...] = (7, 9, 11, 13, 15, 17, 19, 21)
POISSON_PEAK = 256.0  # photon count of intensity 1.0 (Real-ESRGAN's value for 8-bit images)

# Real-ESRGAN defaults (options/train_realesrgan_x4plus.yml). resize_probs = (up, down, keep).
BLIND_STAGE1: dict[str, object] = {
    "blur_prob": 1.0,
    "blur_sigma": (0.2, 3.0),
    "beta": (0.5, 4.0),
    "resize_probs": (0.2, 0.7, 0.1),
    "resize_range": (0.15, 1.5),
    "gaussian_noise_prob": 0.5,
    "noise_sigma": (1.0, 30.0),  # 0-255 scale
    "poisson_scale": (0.05, 3.0),
    "gray_noise_prob": 0.4,
    "jpeg_quality": (30, 95),
}
BLIND_STAGE2: dict[str, object] = {
    "blur_prob": 0.8,
    "blur_sigma": (0.2, 1.5),
    "beta": (0.5, 4.0),
    "resize_probs": (0.3, 0.4, 0.3),
    "resize_range": (0.3, 1.2),  # relative to the final LQ size, as in Real-ESRGAN
    "gaussian_noise_prob": 0.5,
    "noise_sigma": (1.0, 25.0),
    "poisson_scale": (0.05, 2.5),
    "gray_noise_prob": 0.4,
    "jpeg_quality": (30, 95),
}


def as_image(img: np.ndarray, name: str = "img", channels: tuple[int, ...] = (1, 3)) -> np.ndarray:
    """Validate an HxWxC float image and return it as contiguous float32."""
    if not isinstance(img, np.ndarray):
        raise TypeError(f"{name} must be a numpy array (HxWxC float32 in [0, 1]), got {type(img)}")
    if img.ndim != 3 or img.shape[2] not in channels or 0 in img.shape:
        raise ValueError(f"{name} must have shape HxWxC with C in {channels}, got {img.shape}")
    if not np.issubdtype(img.dtype, np.floating):
        raise TypeError(f"{name} must be float in [0, 1], got {img.dtype} (divide uint8 by 255)")
    return np.ascontiguousarray(img, dtype=np.float32)


# ----------------------------------------------------------------------------- kernels


def _quad_form(size: int, sigma_x: float, sigma_y: float | None, theta: float) -> np.ndarray:
    """x^T Sigma^-1 x on a size x size grid centred at 0, Sigma = R diag(sx^2, sy^2) R^T."""
    if size < 1 or size % 2 == 0:
        raise ValueError(f"kernel size must be a positive odd integer, got {size}")
    sigma_y = sigma_x if sigma_y is None else sigma_y
    if sigma_x <= 0 or sigma_y <= 0:
        raise ValueError(f"kernel sigmas must be > 0, got ({sigma_x}, {sigma_y})")
    c, s = math.cos(theta), math.sin(theta)
    rot = np.array([[c, -s], [s, c]])
    inv = np.linalg.inv(rot @ np.diag([sigma_x**2, sigma_y**2]) @ rot.T)
    r = np.arange(size, dtype=np.float64) - size // 2
    xx, yy = np.meshgrid(r, r)  # xx varies along columns (x), yy along rows (y)
    xy = np.stack([xx, yy], -1)
    return np.einsum("...i,ij,...j->...", xy, inv, xy)


def gaussian_kernel(
    size: int, sigma_x: float, sigma_y: float | None = None, theta: float = 0.0
) -> np.ndarray:
    """Bivariate Gaussian kernel, float64 size x size, sums to 1.

    Isotropic when sigma_y is None (or equal to sigma_x); `theta` (radians) rotates the
    sigma_x axis counter-clockwise from the x (column) axis.
    """
    k = np.exp(-0.5 * _quad_form(size, sigma_x, sigma_y, theta))
    return k / k.sum()


def generalized_gaussian_kernel(
    size: int, sigma_x: float, sigma_y: float, theta: float, beta: float
) -> np.ndarray:
    """Generalised Gaussian exp(-0.5 (x^T Sigma^-1 x)^beta), float64 size x size, sums to 1.

    beta = 1 is the Gaussian; beta < 1 has heavier tails, beta > 1 a flatter top (BasicSR).
    """
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    k = np.exp(-0.5 * np.power(_quad_form(size, sigma_x, sigma_y, theta), beta))
    return k / k.sum()


def random_kernel(
    rng: np.random.Generator,
    *,
    sigma_range: tuple[float, float] = (0.2, 3.0),
    beta_range: tuple[float, float] = (0.5, 4.0),
    sizes: tuple[int, ...] = KERNEL_SIZES,
    probs: dict[str, float] | None = None,
) -> np.ndarray:
    """A random Real-ESRGAN blur kernel (iso / aniso / generalised), float64, sums to 1."""
    probs = KERNEL_PROBS if probs is None else probs
    kinds = list(probs)
    p = np.array([probs[k] for k in kinds], dtype=np.float64)
    kind = kinds[int(rng.choice(len(kinds), p=p / p.sum()))]
    size = int(sizes[int(rng.integers(len(sizes)))])
    sx = float(rng.uniform(*sigma_range))
    if kind.endswith("aniso"):
        sy, theta = float(rng.uniform(*sigma_range)), float(rng.uniform(-math.pi, math.pi))
    else:
        sy, theta = sx, 0.0
    if not kind.startswith("generalized"):
        return gaussian_kernel(size, sx, sy, theta)
    # Real-ESRGAN: half the time a heavy-tailed beta < 1, half the time a flat-top beta > 1
    lo, hi = beta_range
    beta = rng.uniform(lo, 1.0) if rng.uniform() < 0.5 else rng.uniform(1.0, hi)
    return generalized_gaussian_kernel(size, sx, sy, theta, float(beta))


def blur(img: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Convolve each channel with a 2-D kernel; mirror padding (cv2 BORDER_REFLECT_101,
    torch 'reflect'); same-size float32 output, clipped to [0, 1]."""
    img = as_image(img)
    kernel = np.asarray(kernel, dtype=np.float64)
    if kernel.ndim != 2:
        raise ValueError(f"kernel must be 2-D, got shape {kernel.shape}")
    from scipy import ndimage  # here: a third of a second that every CLI command would pay

    out = np.empty_like(img)
    for c in range(img.shape[2]):
        out[..., c] = ndimage.convolve(img[..., c], kernel, mode="mirror")
    return np.clip(out, 0.0, 1.0)


# ----------------------------------------------------------------------------- resize


def modcrop(img: np.ndarray, scale: int) -> np.ndarray:
    """Crop the bottom/right so that height and width are multiples of `scale` (BasicSR)."""
    if scale < 1:
        raise ValueError(f"scale must be >= 1, got {scale}")
    h, w = img.shape[:2]
    if h < scale or w < scale:
        raise ValueError(f"image {w}x{h} is smaller than the scale {scale}")
    return img[: h - h % scale, : w - w % scale]


def resize(
    img: np.ndarray,
    scale: float | None = None,
    size: tuple[int, int] | None = None,
    method: ResizeMethod = "bicubic",
) -> np.ndarray:
    """Resize HxWxC float32 -> hxwxC float32, clipped to [0, 1].

    Give exactly one of `scale` (a size multiplier as in MATLAB imresize: 0.25 is a x4
    downscale; output side = round(side * scale)) or `size` = (height, width).
    'bicubic' is Keys' cubic with a = -0.5 and, when downscaling, the kernel widened by
    1/scale (antialias) - identical to MATLAB imresize and Pillow's BICUBIC (the test checks
    Pillow to 1e-5). 'bilinear' is antialiased likewise; 'area' is a box average (upscaling
    with it replicates pixels, as torch's mode='area' does in Real-ESRGAN).
    """
    img = as_image(img)
    h, w = img.shape[:2]
    if (scale is None) == (size is None):
        raise ValueError("resize: give exactly one of `scale` or `size`")
    if scale is not None:
        if not scale > 0:
            raise ValueError(f"resize: scale must be > 0, got {scale}")
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
    oh, ow = int(size[0]), int(size[1])
    if oh < 1 or ow < 1:
        raise ValueError(f"resize: size must be positive (height, width), got {size}")
    if method not in RESIZE_METHODS:
        raise ValueError(f"resize: method must be one of {RESIZE_METHODS}, got {method!r}")
    if (oh, ow) == (h, w):
        return img.copy()
    x = torch.from_numpy(img).permute(2, 0, 1)[None]
    if method == "area":
        y = F.interpolate(x, size=(oh, ow), mode="area")
    else:
        y = F.interpolate(x, size=(oh, ow), mode=method, align_corners=False, antialias=True)
    return np.ascontiguousarray(y[0].permute(1, 2, 0).clamp_(0.0, 1.0).numpy())


# ----------------------------------------------------------------------------- noise, JPEG


def _gray(img: np.ndarray) -> np.ndarray:
    """HxWx1 BT.601 luma of an RGB image (the image itself when single-channel)."""
    if img.shape[2] == 1:
        return img
    return (img @ np.array([0.299, 0.587, 0.114], dtype=np.float32))[..., None]


def add_gaussian_noise(
    img: np.ndarray, sigma: float, rng: np.random.Generator, gray: bool = False
) -> np.ndarray:
    """Add N(0, (sigma/255)^2) noise; `sigma` is on the 0-255 scale. gray=True draws one
    noise plane shared by all channels. Returns float32 clipped to [0, 1]."""
    img = as_image(img)
    if sigma < 0:
        raise ValueError(f"noise sigma must be >= 0 (0-255 scale), got {sigma}")
    shape = (*img.shape[:2], 1 if gray else img.shape[2])
    noise = rng.standard_normal(shape, dtype=np.float32) * np.float32(sigma / 255.0)
    return np.clip(img + noise, 0.0, 1.0)


def add_poisson_noise(
    img: np.ndarray, scale: float, rng: np.random.Generator, gray: bool = False
) -> np.ndarray:
    """Add signal-dependent shot noise: img + scale * (Poisson(img * P) / P - img), P = 256.

    The noise has zero mean and std scale * sqrt(img / 256) (Real-ESRGAN's `poisson_scale`).
    gray=True computes one noise plane from the BT.601 luma. Returns float32 in [0, 1].
    """
    img = as_image(img)
    if scale < 0:
        raise ValueError(f"poisson scale must be >= 0, got {scale}")
    base = _gray(img) if gray else img
    lam = np.clip(base, 0.0, 1.0).astype(np.float64) * POISSON_PEAK
    noise = (rng.poisson(lam) - lam) / POISSON_PEAK
    return np.clip(img + np.float32(scale) * noise.astype(np.float32), 0.0, 1.0)


def jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    """JPEG round trip through Pillow in memory (8-bit, 4:2:0 chroma for RGB, Pillow's
    default); deterministic. HxWx{1,3} float32 in [0, 1] -> same shape float32."""
    img = as_image(img)
    if not isinstance(quality, int | np.integer) or not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must be an integer in 1..100, got {quality!r}")
    u8 = (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    pil = Image.fromarray(u8[..., 0] if u8.shape[2] == 1 else u8)
    buf = io.BytesIO()
    pil.save(buf, format="JPEG", quality=int(quality))
    out = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert(pil.mode), dtype=np.float32)
    return (out.reshape(img.shape) / 255.0).astype(np.float32)


# ----------------------------------------------------------------------------- inpainting masks

HOLE_FILL = 0.5  # value of the holes of an image without any known pixel (mid grey)
MAX_MASK_SHAPES = 64  # strokes/boxes drawn at most while growing a mask to its coverage


def _stroke(draw: ImageDraw.ImageDraw, rng: np.random.Generator, h: int, w: int) -> None:
    """One free-form brush stroke (Palette / LaMa style): a random walk of 2-8 segments,
    width 5-20% of the short side, round joints."""
    side = min(h, w)
    width = max(1, int(rng.uniform(0.05, 0.2) * side))
    x, y = float(rng.uniform(0, w)), float(rng.uniform(0, h))
    points = [(x, y)]
    for _ in range(int(rng.integers(2, 9))):
        angle, length = rng.uniform(0, 2 * math.pi), rng.uniform(0.1, 0.4) * side
        x = float(np.clip(x + length * math.cos(angle), 0, w - 1))
        y = float(np.clip(y + length * math.sin(angle), 0, h - 1))
        points.append((x, y))
    draw.line(points, fill=255, width=width, joint="curve")
    r = width / 2
    for px, py in points:  # round caps
        draw.ellipse((px - r, py - r, px + r, py + r), fill=255)


def _box(draw: ImageDraw.ImageDraw, rng: np.random.Generator, h: int, w: int) -> None:
    """One axis-aligned box, 10-50% of each side."""
    bh, bw = int(rng.uniform(0.1, 0.5) * h) + 1, int(rng.uniform(0.1, 0.5) * w) + 1
    top, left = int(rng.integers(0, max(1, h - bh + 1))), int(rng.integers(0, max(1, w - bw + 1)))
    draw.rectangle((left, top, left + bw - 1, top + bh - 1), fill=255)


def random_mask(
    h: int, w: int, rng: np.random.Generator, coverage: tuple[float, float] = (0.05, 0.5)
) -> np.ndarray:
    """A seeded inpainting mask, float32 HxW in {0, 1} (1 = fill), as in Palette and LaMa:
    free-form brush strokes (70%) and boxes (30%) drawn until the covered share reaches a target
    drawn from U(coverage); a shape that overshoots the upper bound is undone, so the share lies
    within `coverage` except for tiny images (at least one pixel is always masked)."""
    if h < 1 or w < 1:
        raise ValueError(f"mask size must be positive, got {w}x{h}")
    lo, hi = coverage
    target = rng.uniform(lo, hi)
    mask = Image.new("L", (w, h), 0)
    for _ in range(MAX_MASK_SHAPES):
        trial = mask.copy()
        (_stroke if rng.uniform() < 0.7 else _box)(ImageDraw.Draw(trial), rng, h, w)
        share = float(np.count_nonzero(np.asarray(trial))) / (h * w)
        if share > hi and np.asarray(mask).any():
            continue
        mask = trial
        if share >= target:
            break
    out = (np.asarray(mask) > 127).astype(np.float32)
    if not out.any():
        out[h // 2, w // 2] = 1.0
    return out


def fill_holes(img: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """A smooth first guess for the holes: push-pull normalised averaging (Gortler et al. 1996,
    "The Lumigraph"). Known pixels are averaged over blocks of 2, 4, 8, ... px (weights = the
    known share) and bilinearly upsampled; each hole pixel takes the finest level that reaches
    it. Deterministic, O(pixels), independent of tiling (computed on the whole image); known
    pixels are returned unchanged. img HxWx3 float32, hole HxW bool (True = fill)."""
    h, w = hole.shape
    if not hole.any():
        return img.copy()
    if hole.all():
        return np.full_like(img, HOLE_FILL)
    known = torch.from_numpy((~hole).astype(np.float32))[None, None]
    x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None] * known
    out = x.clone()
    todo = torch.from_numpy(hole)[None, None]
    k = 2
    while todo.any():
        num, den = (
            F.interpolate(F.avg_pool2d(t, k, k, ceil_mode=True), size=(h, w), mode="bilinear",
                          align_corners=False)
            for t in (x, known)
        )  # fmt: skip
        ok = todo & (den > 1e-6)
        out = torch.where(ok, num / den.clamp_min(1e-12), out)
        todo = todo & ~ok
        k *= 2
    return np.ascontiguousarray(out[0].permute(1, 2, 0).clamp_(0, 1).numpy())


# ----------------------------------------------------------------------------- blind pipeline


def _stage(
    img: np.ndarray, rng: np.random.Generator, p: dict, size_ref: tuple[int, int]
) -> np.ndarray:
    """One Real-ESRGAN degradation round: blur -> random resize -> noise -> JPEG."""
    if rng.uniform() < p["blur_prob"]:
        img = blur(img, random_kernel(rng, sigma_range=p["blur_sigma"], beta_range=p["beta"]))
    updown = int(rng.choice(3, p=p["resize_probs"]))
    lo, hi = p["resize_range"]
    factor = [rng.uniform(1.0, hi), rng.uniform(lo, 1.0), 1.0][updown]
    method = RESIZE_METHODS[int(rng.integers(len(RESIZE_METHODS)))]
    size = (max(1, int(size_ref[0] * factor)), max(1, int(size_ref[1] * factor)))
    img = resize(img, size=size, method=method)
    gray = bool(rng.uniform() < p["gray_noise_prob"])
    if rng.uniform() < p["gaussian_noise_prob"]:
        img = add_gaussian_noise(img, float(rng.uniform(*p["noise_sigma"])), rng, gray=gray)
    else:
        img = add_poisson_noise(img, float(rng.uniform(*p["poisson_scale"])), rng, gray=gray)
    q_lo, q_hi = p["jpeg_quality"]
    return jpeg(img, int(rng.integers(q_lo, q_hi + 1)))


def degrade_blind(hr: np.ndarray, rng: np.random.Generator, scale: int) -> np.ndarray:
    """Real-ESRGAN-like two-stage degradation; output (H/scale, W/scale), float32 [0, 1]."""
    h, w = hr.shape[:2]
    out_size = (h // scale, w // scale)
    img = _stage(hr, rng, BLIND_STAGE1, (h, w))  # stage 1 resizes relative to the input
    img = _stage(img, rng, BLIND_STAGE2, out_size)  # stage 2 relative to the final LQ size
    method = RESIZE_METHODS[int(rng.integers(len(RESIZE_METHODS)))]
    img = resize(img, size=out_size, method=method)
    q_lo, q_hi = BLIND_STAGE2["jpeg_quality"]
    return jpeg(img, int(rng.integers(q_lo, q_hi + 1)))


def pair_seed(base_seed: int, *keys: str | int) -> int:
    """Stable 63-bit seed from a base seed and keys, identical in every process and platform.

    SHA-256 of the canonical JSON list [base_seed, *keys] (so 1 and "1" differ); Python's
    hash() is salted per process and must not be used. E.g. pair_seed(seed, "val", task, sha).
    """
    canon: list[int | str] = []
    for k in (base_seed, *keys):
        if isinstance(k, bool) or not isinstance(k, int | np.integer | str):
            raise TypeError(f"pair_seed keys must be int or str, got {k!r} ({type(k).__name__})")
        canon.append(k if isinstance(k, str) else int(k))
    blob = json.dumps(canon, separators=(",", ":")).encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:8], "big") >> 1
