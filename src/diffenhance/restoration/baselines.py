"""Classical baselines the tasks are scored against (each task picks its own: `baselines`).

Images are float32 HxWx3 in [0, 1]; each function is pure.
"""

from __future__ import annotations

import importlib.util

import numpy as np
from PIL import Image

from diffenhance.degrade import resize

TELEA_RADIUS = 5  # px: the neighbourhood OpenCV's Telea inpainting averages over


def bicubic_upscale(lq: np.ndarray, scale: int) -> np.ndarray:
    """HxWx3 float32 [0,1] -> (H*scale)x(W*scale)x3: Keys cubic (a=-0.5), as MATLAB imresize."""
    return resize(lq, size=(lq.shape[0] * scale, lq.shape[1] * scale), method="bicubic")


def lanczos_upscale(lq: np.ndarray, scale: int) -> np.ndarray:
    """HxWx3 float32 [0,1] -> (H*scale)x(W*scale)x3: Lanczos-3 (Pillow, float per channel)."""
    h, w = lq.shape[:2]
    chans = [
        np.asarray(
            Image.fromarray(np.ascontiguousarray(lq[..., c], dtype=np.float32), mode="F").resize(
                (w * scale, h * scale), Image.Resampling.LANCZOS
            )
        )
        for c in range(3)
    ]
    return np.clip(np.stack(chans, axis=-1), 0.0, 1.0).astype(np.float32)


def bm3d_missing_reason() -> str | None:
    """None when the optional `bm3d` package can be imported, else why CBM3D is skipped."""
    if importlib.util.find_spec("bm3d") is None:
        return "the optional `bm3d` package is not installed (pip install -e .[quality] adds CBM3D)"
    return None


def cbm3d_denoise(noisy: np.ndarray, sigma: float) -> np.ndarray:
    """Colour BM3D of an HxWx3 float32 [0,1] image with Gaussian noise of `sigma` (0-255 scale).

    Needs the optional `bm3d` package (see `bm3d_missing_reason`)."""
    import bm3d  # optional dependency, checked by bm3d_missing_reason

    out = bm3d.bm3d_rgb(noisy.astype(np.float64), sigma_psd=sigma / 255.0)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def telea_inpaint(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """OpenCV's Telea inpainting (A. Telea, "An Image Inpainting Technique Based on the Fast
    Marching Method", 2004) of `image` HxWx3 inside `mask` HxW (>= 0.5 = fill): 8-bit, as
    OpenCV works, radius `TELEA_RADIUS`; the known pixels are returned unchanged."""
    import cv2  # opencv-python-headless: only the inpaint baseline needs it

    m = np.asarray(mask) >= 0.5
    u8 = (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)
    out = cv2.inpaint(u8, m.astype(np.uint8), TELEA_RADIUS, cv2.INPAINT_TELEA)
    filled = out.astype(np.float32) / 255.0
    return np.where(m[..., None], filled, image).astype(np.float32)
