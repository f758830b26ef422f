"""Uncertainty maps: where the model is guessing, from the spread of N samples of one input.

A diffusion restorer's samples of the same input differ where the input does not decide the
answer. The one restore path (`restore.restore_with_uncertainty`) returns, beside the output,

    std(p) = sqrt( mean over c in RGB of var_c(p) ),   var_c(p) = unbiased sample variance of
                                                       channel c at pixel p over the N samples

in [0, 1] intensity units (the output's range; 0.01 = 2.55 of 255 grey levels), from the
samples as the model drew them (clipped to [0, 1], before colour correction), with tiles
cross-faded like the output. This module turns such a map into files and into evidence:

* `<output stem>.uncertainty.npy` - the map itself, float32 HxW (`np.load`);
* `<output stem>.uncertainty.png` - the map to look at: 8-bit RGB, the perceptual `inferno`
  colour map (a 17-entry built-in LUT, linear in between) over the FIXED std range
  [0, `STD_FULL_SCALE`]: black = 0 (all samples agree), through purple and orange, to pale
  yellow at std >= 0.05 (~13 grey levels; saturated). The range is the same for every image,
  so maps are comparable across images, models and runs;
* `error_correlation` - Pearson and Spearman correlation between the std map and the absolute
  error of an output against its ground truth (the evidence that the map means something).

A dark corner, and why there is none (issue 23.5): the shipped sr4's maps used to be dark in
their bottom-right 16x16 px whatever the content (about half the std elsewhere, while the error
there is higher). Not the engine's variance path: it blends the tiles' variances with the
output's weights, and a uniform variance comes out uniform. It was the network's own
bottom-right edge: the stage-1 residual denoiser (the pmrf's frozen mean) hardly responds to its
start noise there, on any input (flip the input and the dark corner stays at the network's
bottom-right), and the engine put the image's bottom-right corner exactly there. The engine now
pads one size step of margin beyond the image on every axis (`infer.TiledEnhancer._axis`), so
no image ends on the network's edge (corner 0.94 of the median block instead of 0.48);
tests/test_uncertainty.py holds the check.
"""

from __future__ import annotations

import posixpath
from pathlib import Path
from typing import Any

import numpy as np

from diffenhance.io import atomic_open, write_image

STD_FULL_SCALE = 0.05  # std mapped to the top of the colour map ([0, 1] intensity units)
MAP_SUFFIX = ".uncertainty.png"  # colour-mapped std, 8-bit RGB
STD_SUFFIX = ".uncertainty.npy"  # float32 HxW std
COLORMAP = "inferno"
# matplotlib's inferno at 0, 1/16, ..., 1 as 8-bit RGB (within 7/255 of it when interpolated)
_INFERNO = (
    "000004 0b0724 210c4a 3d0965 57106e 71196e 8a226a a32c61 bc3754 d24644 e45a31 f1731d "
    "f98e09 fcac11 f9cb35 f2ea69 fcffa4"
)
LUT = np.array([[int(h[i : i + 2], 16) for i in (0, 2, 4)] for h in _INFERNO.split()],
               dtype=np.float32) / 255  # fmt: skip
DEFINITION = (
    "per pixel: sqrt of the mean over RGB of each channel's unbiased variance across the N "
    "samples, [0, 1] intensity units, samples clipped to [0, 1] before colour correction"
)


def colorize(std: np.ndarray, full_scale: float = STD_FULL_SCALE) -> np.ndarray:
    """HxW std -> HxWx3 float32 RGB in [0, 1]: `LUT` (inferno) at min(std / full_scale, 1)."""
    t = np.clip(np.asarray(std, np.float64) / full_scale, 0.0, 1.0)
    pos = np.linspace(0.0, 1.0, len(LUT))
    return np.stack([np.interp(t, pos, LUT[:, c]) for c in range(3)], axis=-1).astype(np.float32)


def scale_info(samples: int | None = None) -> dict[str, Any]:
    """How a map PNG is coloured and what the .npy holds (manifests, protocol.json)."""
    info: dict[str, Any] = {
        "colormap": COLORMAP,
        "std_range": [0.0, STD_FULL_SCALE],  # black .. pale yellow (saturated above)
        "definition": DEFINITION,
    }
    return info if samples is None else {"samples": samples, **info}


def uncertainty_keys(output_key: str) -> tuple[str, str]:
    """(map PNG key, std .npy key) beside an output: 'a/photo.jpg' -> 'a/photo.uncertainty.png',
    'a/photo.uncertainty.npy' (keys use '/', as storage keys and local paths alike)."""
    stem = posixpath.splitext(output_key)[0]
    return stem + MAP_SUFFIX, stem + STD_SUFFIX


def write_std(path: str | Path, std: np.ndarray) -> Path:
    """Write a std map as a float32 HxW .npy, atomically (temp file + rename)."""
    a = np.asarray(std, dtype=np.float32)
    if a.ndim != 2 or not np.isfinite(a).all():
        raise ValueError(f"{path}: a std map must be a finite HxW array, got {a.shape}")
    with atomic_open(path) as f:
        np.save(f, a, allow_pickle=False)
    return Path(path)


def write_map(path: str | Path, std: np.ndarray) -> Path:
    """Write the colour-mapped std (`colorize`) as an 8-bit RGB PNG, atomically."""
    return write_image(path, colorize(std), bit_depth=8)


# ----------------------------------------------------------------------------- evidence


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two flat arrays; NaN when either is constant."""
    a, b = a - a.mean(), b - b.mean()
    den = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / den) if den > 0 else float("nan")


def _ranks(a: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    return rankdata(a, method="average")  # ties share their mean rank


def abs_error(pred: np.ndarray, hr: np.ndarray) -> np.ndarray:
    """Per-pixel absolute error HxW: the mean over RGB of |pred - hr| (both HxWx3 in [0, 1])."""
    return np.abs(np.asarray(pred, np.float64) - np.asarray(hr, np.float64)).mean(axis=2)


def error_correlation(
    std: np.ndarray,
    pred: np.ndarray,
    hr: np.ndarray,
    crop: int = 0,
    mask: np.ndarray | None = None,
) -> dict[str, float]:
    """How well the std map predicts where the output is wrong, over the pixels of one image.

    std HxW (`restore_with_uncertainty`), pred and hr HxWx3 in [0, 1]; `crop` border pixels
    dropped on each side (the metric protocol's); `mask` HxW (inpainting's hole, 1 = counted):
    only those pixels (the known ones are exact and certain by construction, and would inflate
    the figure). Returns {pearson, spearman} between std and `abs_error(pred, hr)` (NaN when
    either is constant), std_mean and abs_error_mean."""
    err = abs_error(pred, hr)
    s = np.asarray(std, np.float64)
    if s.shape != err.shape:
        raise ValueError(f"std map {s.shape} and image {err.shape} differ in size")
    if mask is not None:
        keep = np.asarray(mask) >= 0.5
        s, err = s[keep], err[keep]
    elif crop:
        s, err = s[crop:-crop, crop:-crop], err[crop:-crop, crop:-crop]
    s, err = s.ravel(), err.ravel()
    return {
        "pearson": _pearson(s, err),
        "spearman": _pearson(_ranks(s), _ranks(err)),
        "std_mean": float(s.mean()),
        "abs_error_mean": float(err.mean()),
    }


__all__ = [
    "COLORMAP",
    "DEFINITION",
    "LUT",
    "MAP_SUFFIX",
    "STD_FULL_SCALE",
    "STD_SUFFIX",
    "abs_error",
    "colorize",
    "error_correlation",
    "scale_info",
    "uncertainty_keys",
    "write_map",
    "write_std",
]
