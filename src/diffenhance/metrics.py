"""Full-reference image quality metrics (PSNR, SSIM) with explicit, documented protocols.

Both metrics go through torchmetrics and are computed per image, in float64, on images in
[0, 1] (data range 1.0). Conventions follow the SR literature (BasicSR, MATLAB):

* Y channel: BT.601 luma as MATLAB `rgb2ycbcr`, Y = (16 + 65.481 R + 128.553 G + 24.966 B) / 255
  with R, G, B in [0, 1], so Y lies in [16/255, 235/255].
* Border crop: `crop` pixels are removed from every side before computing (SR: the scale).
* SSIM: Gaussian window 11x11, sigma 1.5, K1 = 0.01, K2 = 0.03, averaged over the windows
  that lie entirely inside the (cropped) image - the 'valid' region of Wang et al.'s MATLAB
  `ssim_index` and of BasicSR. torchmetrics itself averages a reflect-padded, full-size SSIM
  map; we take its full map and drop the 5-pixel padded margin. RGB SSIM is the mean over
  the three channels.

Metrics are computed on the float values given; quantise to 8 bits first to reproduce
numbers computed from PNG files.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch

# torchmetrics is imported inside the functions that call it: importing it takes seconds
# (torchvision, scipy, matplotlib), and `diffenhance enhance` reaches this module through
# diffenhance.restoration before it checks its arguments (tests/test_layering.py guards it).

PSNR_CAP_DB = 100.0  # mean_psnr caps each value here, so identical images (inf) stay finite
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
_SSIM_PAD = (SSIM_WINDOW - 1) // 2
_Y_WEIGHTS = (65.481, 128.553, 24.966)


def to_tensor(img: np.ndarray | torch.Tensor) -> torch.Tensor:
    """HxWx3 numpy (or 3xHxW / Nx3xHxW tensor) in [0, 1] -> Nx3xHxW float tensor.

    uint8 numpy images are divided by 255; tensors are passed through (a batch dim is added).
    """
    if isinstance(img, torch.Tensor):
        t = img
        if t.ndim == 3:
            t = t[None]
    elif isinstance(img, np.ndarray):
        a = img.astype(np.float32) / 255.0 if img.dtype == np.uint8 else img
        if a.ndim == 3:
            a = a[None]
        if a.ndim != 4 or a.shape[-1] not in (1, 3):
            raise ValueError(f"numpy images must be HxWx3 (or NxHxWx3), got shape {img.shape}")
        t = torch.from_numpy(np.ascontiguousarray(a)).permute(0, 3, 1, 2)
    else:
        raise TypeError(f"expected a numpy array or torch tensor, got {type(img).__name__}")
    if t.ndim != 4:
        raise ValueError(f"tensors must be Nx3xHxW or 3xHxW, got shape {tuple(img.shape)}")
    if not t.is_floating_point():
        raise TypeError(f"tensors must be float in [0, 1], got {t.dtype}")
    return t


def rgb_to_y(img: torch.Tensor) -> torch.Tensor:
    """[N,3,H,W] RGB in [0, 1] -> [N,1,H,W] BT.601 Y in [16/255, 235/255] (MATLAB rgb2ycbcr)."""
    if img.ndim != 4 or img.shape[1] != 3:
        raise ValueError(f"rgb_to_y expects [N,3,H,W], got {tuple(img.shape)}")
    w = torch.tensor(_Y_WEIGHTS, dtype=img.dtype, device=img.device).view(1, 3, 1, 1)
    return (16.0 + (img * w).sum(dim=1, keepdim=True)) / 255.0


def _prepare(
    pred: np.ndarray | torch.Tensor,
    target: np.ndarray | torch.Tensor,
    crop: int,
    y_channel: bool,
    min_side: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Both images as float64 [N,C,H,W], cropped, optionally converted to Y."""
    p, t = to_tensor(pred), to_tensor(target)
    if p.shape != t.shape:
        raise ValueError(f"pred and target shapes differ: {tuple(p.shape)} vs {tuple(t.shape)}")
    p, t = p.to(torch.float64), t.to(device=p.device, dtype=torch.float64)
    if crop < 0:
        raise ValueError(f"crop must be >= 0, got {crop}")
    h, w = p.shape[-2:]
    if h - 2 * crop < min_side or w - 2 * crop < min_side:
        raise ValueError(
            f"image {w}x{h} is too small for a {crop}-pixel border crop "
            f"(need at least {min_side} px left on each side)"
        )
    if crop:
        p, t = p[..., crop:-crop, crop:-crop], t[..., crop:-crop, crop:-crop]
    if y_channel:
        if p.shape[1] != 3:
            raise ValueError("y_channel=True needs RGB images")
        p, t = rgb_to_y(p), rgb_to_y(t)
    return p, t


def psnr(
    pred: np.ndarray | torch.Tensor,
    target: np.ndarray | torch.Tensor,
    *,
    crop: int = 0,
    y_channel: bool = False,
) -> torch.Tensor:
    """Per-image PSNR in dB, float64 tensor [N]: 10 log10(1 / MSE), data range 1.0.

    pred/target: [N,3,H,W] / [3,H,W] tensors or HxWx3 numpy, in [0, 1]. Identical images
    give +inf (see `mean_psnr`).
    """
    from torchmetrics.functional.image import peak_signal_noise_ratio

    p, t = _prepare(pred, target, crop, y_channel)
    return peak_signal_noise_ratio(p, t, data_range=1.0, reduction="none", dim=(1, 2, 3))


def _mask_tensor(mask: np.ndarray | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A mask HxW / [N,1,H,W] (1 = counted) as float64 [N,1,H,W] on `like`'s device."""
    m = torch.as_tensor(np.asarray(mask) if not isinstance(mask, torch.Tensor) else mask)
    m = m.to(device=like.device, dtype=torch.float64)
    m = m.reshape(1, 1, *m.shape) if m.ndim == 2 else m
    if m.shape[-2:] != like.shape[-2:]:
        raise ValueError(f"mask {tuple(m.shape[-2:])} does not fit images {tuple(like.shape)}")
    return (m >= 0.5).to(torch.float64)


def masked_psnr(
    pred: np.ndarray | torch.Tensor,
    target: np.ndarray | torch.Tensor,
    mask: np.ndarray | torch.Tensor,
    *,
    y_channel: bool = False,
) -> torch.Tensor:
    """Per-image PSNR (RGB, or BT.601 Y with `y_channel`; dB, data range 1) over the pixels
    where `mask` >= 0.5 only: 10 log10(1 / MSE), the MSE averaged over those pixels and all
    channels (inpainting's inside-the-hole score). float64 [N]; +inf when they are identical
    there."""
    p, t = _prepare(pred, target, 0, y_channel)
    m = _mask_tensor(mask, p)
    n = m.sum(dim=(1, 2, 3)) * p.shape[1]
    if (n == 0).any():
        raise ValueError("masked_psnr: the mask selects no pixel")
    mse = ((p - t).square() * m).sum(dim=(1, 2, 3)) / n
    return 10 * torch.log10(1.0 / mse)


def ssim(
    pred: np.ndarray | torch.Tensor,
    target: np.ndarray | torch.Tensor,
    *,
    crop: int = 0,
    y_channel: bool = False,
) -> torch.Tensor:
    """Per-image SSIM, float64 tensor [N] (Gaussian window 11, sigma 1.5, data range 1.0,
    mean over the 'valid' windows - see the module docstring). Needs >= 11 px after the crop."""
    p, t = _prepare(pred, target, crop, y_channel, min_side=SSIM_WINDOW)
    return _ssim_map(p, t).flatten(1).mean(dim=1)


def _ssim_map(p: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The SSIM map of prepared images [N,C,H,W] over the 'valid' windows: torchmetrics' full,
    reflect-padded map less its padded margin, [N,C,H-10,W-10]."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    _, full = structural_similarity_index_measure(
        p,
        t,
        gaussian_kernel=True,
        sigma=SSIM_SIGMA,
        kernel_size=SSIM_WINDOW,
        data_range=1.0,
        reduction="none",
        return_full_image=True,
    )
    pad = _SSIM_PAD
    return full[..., pad:-pad, pad:-pad]


def masked_ssim(
    pred: np.ndarray | torch.Tensor,
    target: np.ndarray | torch.Tensor,
    mask: np.ndarray | torch.Tensor,
    *,
    y_channel: bool = False,
) -> torch.Tensor:
    """Per-image SSIM (RGB, or Y with `y_channel`) averaged over the windows centred on masked
    pixels (the map of `ssim`, same window and valid region). float64 [N]; NaN when no masked
    pixel lies in the valid region (within 5 px of the border only)."""
    p, t = _prepare(pred, target, 0, y_channel, min_side=SSIM_WINDOW)
    m = _mask_tensor(mask, p)
    pad = _SSIM_PAD
    full, m = _ssim_map(p, t), m[..., pad:-pad, pad:-pad]
    w = m.expand_as(full)
    return (full * w).flatten(1).sum(1) / w.flatten(1).sum(1)


def mean_psnr(values: Iterable[float] | torch.Tensor | np.ndarray) -> float:
    """Mean PSNR in dB with each value capped at PSNR_CAP_DB = 100 dB (identical images give
    +inf; 100 dB is an RMSE of 1e-5, far above any real restoration). Never NaN for valid input;
    an empty input raises ValueError."""
    v = np.asarray(
        values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else list(values),
        dtype=np.float64,
    ).ravel()
    if v.size == 0:
        raise ValueError("mean_psnr of no values")
    if np.isnan(v).any():
        raise ValueError("mean_psnr: input contains NaN (check the images for NaN)")
    return float(np.minimum(v, PSNR_CAP_DB).mean())


@dataclass(frozen=True)
class Protocol:
    """One evaluation convention: colour space and border crop, data range [0, 1]."""

    name: str  # 'rgb' or 'y'
    y_channel: bool
    crop: int

    def describe(self) -> str:
        space = "Y (BT.601, MATLAB rgb2ycbcr)" if self.y_channel else "RGB (mean over channels)"
        border = f"{self.crop} px border crop" if self.crop else "no border crop"
        return f"PSNR/SSIM on {space}, {border}, data range [0,1]"

    def psnr(
        self, pred: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor
    ) -> torch.Tensor:
        """Per-image PSNR [N] under this protocol."""
        return psnr(pred, target, crop=self.crop, y_channel=self.y_channel)

    def ssim(
        self, pred: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor
    ) -> torch.Tensor:
        """Per-image SSIM [N] under this protocol."""
        return ssim(pred, target, crop=self.crop, y_channel=self.y_channel)


__all__ = [
    "PSNR_CAP_DB",
    "Protocol",
    "hf_energy_ratio",
    "masked_psnr",
    "masked_ssim",
    "mean_psnr",
    "psnr",
    "rgb_to_y",
    "ssim",
    "to_tensor",
]


# ----------------------------------------------------------------------------- sharpness


def _hf_energy(y: torch.Tensor, cutoff: float) -> torch.Tensor:
    """High-frequency spectral energy per image of [N,1,H,W] float64: Hann-windowed, mean
    removed, sum of |FFT|^2 where the radial frequency exceeds `cutoff` x Nyquist."""
    h, w = y.shape[-2:]
    win = torch.outer(
        torch.hann_window(h, periodic=False, dtype=y.dtype, device=y.device),
        torch.hann_window(w, periodic=False, dtype=y.dtype, device=y.device),
    )
    z = (y - y.mean(dim=(-2, -1), keepdim=True)) * win
    power = torch.fft.fft2(z).abs().square()
    fy = torch.fft.fftfreq(h, dtype=y.dtype, device=y.device).view(-1, 1)
    fx = torch.fft.fftfreq(w, dtype=y.dtype, device=y.device).view(1, -1)
    mask = (fy.square() + fx.square()).sqrt() / 0.5 > cutoff  # 1 = Nyquist (0.5 cycles/px)
    return (power * mask).flatten(1).sum(dim=1)


def _hf_energy_in(y: torch.Tensor, cutoff: float, keep: torch.Tensor) -> torch.Tensor:
    """High-frequency energy of [N,1,H,W] float64 counted on the pixels `keep` ([N,1,H,W],
    0/1) only: the same radial band as `_hf_energy` applied as a filter to the whole image
    (mirror-extended to 2H x 2W, so there is no wrap-around edge; no window), its squared
    response summed over `keep` (by Parseval the spectral sum when `keep` is everything)."""
    h, w = y.shape[-2:]
    z = torch.cat([y, y.flip(-1)], dim=-1)
    z = torch.cat([z, z.flip(-2)], dim=-2)
    fy = torch.fft.fftfreq(2 * h, dtype=y.dtype, device=y.device).view(-1, 1)
    fx = torch.fft.fftfreq(2 * w, dtype=y.dtype, device=y.device).view(1, -1)
    band = (fy.square() + fx.square()).sqrt() / 0.5 > cutoff
    hp = torch.fft.ifft2(torch.fft.fft2(z) * band).real[..., :h, :w]
    return (hp.square() * keep).flatten(1).sum(dim=1)


def hf_energy_ratio(
    pred: np.ndarray | torch.Tensor,
    target: np.ndarray | torch.Tensor,
    *,
    cutoff: float = 0.25,
    crop: int = 0,
    mask: np.ndarray | torch.Tensor | None = None,
) -> torch.Tensor:
    """Sharpness of `pred` relative to `target`: per-image float64 [N], no learned weights.

    HF(pred) / HF(target), where HF is the spectral energy of the BT.601 Y channel (mean
    removed, 2-D Hann window against edge leakage) above `cutoff` x Nyquist in radial frequency.
    1 = as much fine detail as the ground truth, < 1 blurrier (bicubic x4 is far below 1), > 1
    more high-frequency energy than the truth (noise, ringing or invented texture). Measures
    the amount of detail, not its correctness: read it beside PSNR/SSIM. With cutoff 0.25 it
    counts exactly the band that x4 downsampling removes. pred/target as for `psnr`, [0, 1];
    `crop` border pixels dropped first. A target with no energy there gives inf (or nan).

    With a `mask` (HxW, 1 = counted; inpainting's hole; no crop) the energy is counted on the
    masked pixels only (`_hf_energy_in`: the same band as a filter over the whole image, its
    squared response summed in the mask), so pixels outside it do not dilute the ratio.
    """
    if not 0.0 < cutoff < 1.0:
        raise ValueError(f"cutoff must be in (0, 1) (a fraction of Nyquist), got {cutoff}")
    if mask is not None and crop:
        raise ValueError("hf_energy_ratio: a mask is scored without a border crop")
    p, t = _prepare(pred, target, crop, y_channel=True, min_side=8)
    if mask is not None:
        keep = _mask_tensor(mask, p)
        return _hf_energy_in(p, cutoff, keep) / _hf_energy_in(t, cutoff, keep)
    return _hf_energy(p, cutoff) / _hf_energy(t, cutoff)


# ----------------------------------------------------------------------------- grain

FLAT_SHARE = 0.3  # the share of pixels, lowest local gradient of the truth, that count as flat
MAX_GRAIN_SCORE = 1.1  # issue 21's bar: a preset's grain score is at most this


def error_std_flat(
    pred: np.ndarray | torch.Tensor,
    target: np.ndarray | torch.Tensor,
    *,
    crop: int = 0,
    flat_share: float = FLAT_SHARE,
    window: int = 5,
    mask: np.ndarray | torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Where the error sits: (std of Y error on the flat pixels, std of Y error on all pixels),
    per image float64 [N] each, in 8-bit units (0-255).

    The Y error is pred - target (BT.601, `crop` border pixels dropped). Flat pixels: the
    `flat_share` of each image whose truth has the lowest local gradient (|finite-difference
    gradient| averaged over a `window` x `window` box). Detail that a restorer adds where the
    truth has detail raises both figures alike; noise (grain) raises the flat one more: the
    ratio (flat_b / flat_a) / (all_b / all_a) of two settings a -> b is about 1 for a true
    posterior sample over the posterior mean (its error grows by sqrt(2) everywhere) and well
    above 1 for added grain. pred/target as for `psnr`, [0, 1].

    With a `mask` (HxW, 1 = counted; inpainting's hole; no crop) both figures are over the
    masked pixels only: the flat ones are the `flat_share` of the masked pixels with the lowest
    local gradient (computed on the whole truth), so pixels outside the mask never count.
    """
    if not 0.0 < flat_share <= 1.0:
        raise ValueError(f"flat_share must be in (0, 1], got {flat_share}")
    p, t = _prepare(pred, target, crop, y_channel=True, min_side=window)
    gy = torch.nn.functional.pad(t[..., 1:, :] - t[..., :-1, :], (0, 0, 0, 1), mode="replicate")
    gx = torch.nn.functional.pad(t[..., :, 1:] - t[..., :, :-1], (0, 1, 0, 0), mode="replicate")
    grad = torch.nn.functional.avg_pool2d(
        (gy.square() + gx.square()).sqrt(), window, stride=1, padding=window // 2,
        count_include_pad=False,
    ).flatten(1)  # fmt: skip
    err = ((p - t) * 255.0).flatten(1)
    if mask is not None:
        if crop:
            raise ValueError("error_std_flat: a mask is scored without a border crop")
        keep = _mask_tensor(mask, p).expand_as(p).flatten(1) > 0
        if not keep.any(dim=1).all():
            raise ValueError("error_std_flat: the mask selects no pixel")
        flat_s, whole_s = [], []
        for e, g, m in zip(err, grad, keep, strict=True):
            e, g = e[m], g[m]
            n = max(1, int(round(flat_share * g.numel())))
            flat_s.append(e[g.argsort(stable=True)[:n].sort().values].std(correction=0))
            whole_s.append(e.std(correction=0))
        return torch.stack(flat_s), torch.stack(whole_s)
    k = max(1, int(round(flat_share * grad.shape[1])))
    flat = torch.zeros_like(grad, dtype=torch.bool)
    flat.scatter_(1, grad.argsort(dim=1, stable=True)[:, :k], True)
    flat_std = torch.stack([e[m].std(correction=0) for e, m in zip(err, flat, strict=True)])
    return flat_std, err.std(dim=1, correction=0)


def grain_score(flat: float, whole: float, ref_flat: float, ref_whole: float) -> float:
    """(flat / ref_flat) / (whole / ref_whole): how much more a setting's error grew on the flat
    pixels than on all, against a reference setting (both from `error_std_flat`). About 1 for
    a posterior sample over the posterior mean, above 1 for grain (issue 21's bar: <= 1.1)."""
    return (flat / ref_flat) / (whole / ref_whole)


# ----------------------------------------------------------------------------- edge coherence

EDGE_SHARE = 0.2  # the share of pixels, most structure in the truth, whose coherence counts
# A preset's edge coherence is at least this: on issue 21's held-out photos the settings that
# looked clean scored 0.90-1.04, the beaded and speckled ones 0.61-0.82 (RESULTS.md).
MIN_EDGE_COHERENCE = 0.85
COHERENCE_SIGMA = 1.5  # px: the Gaussian that averages the structure tensor


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """`degrade.gaussian_kernel` (radius ceil(3 sigma)) over [N,1,H,W], replicate padding."""
    from diffenhance.degrade import gaussian_kernel

    r = max(1, int(np.ceil(3 * sigma)))
    k = torch.from_numpy(gaussian_kernel(2 * r + 1, sigma)).to(x)
    z = torch.nn.functional.pad(x, (r, r, r, r), mode="replicate")
    return torch.nn.functional.conv2d(z, k.view(1, 1, 2 * r + 1, 2 * r + 1))


def coherence_map(y: torch.Tensor, sigma: float = COHERENCE_SIGMA) -> tuple[torch.Tensor, ...]:
    """(coherence, structure energy) of [N,1,H,W] float64, each [N,1,H,W].

    The structure tensor J = G_sigma * (grad y grad y^T), grad by 3x3 Sobel (replicate
    padding); coherence = (l1 - l2) / (l1 + l2) of its eigenvalues = sqrt((Jxx - Jyy)^2 +
    4 Jxy^2) / (Jxx + Jyy): 1 where the gradients around a pixel share one direction (an
    edge, a stroke of fur), 0 where they point every way (noise, speckle); the energy is the
    trace Jxx + Jyy. Where both vanish (a flat patch) coherence is 0."""
    sx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], dtype=y.dtype,
                      device=y.device)  # fmt: skip
    z = torch.nn.functional.pad(y, (1, 1, 1, 1), mode="replicate")
    gx = torch.nn.functional.conv2d(z, sx.view(1, 1, 3, 3))
    gy = torch.nn.functional.conv2d(z, sx.t().contiguous().view(1, 1, 3, 3))
    jxx, jyy, jxy = (_gaussian_blur(g, sigma) for g in (gx * gx, gy * gy, gx * gy))
    trace = jxx + jyy
    spread = ((jxx - jyy).square() + 4 * jxy.square()).sqrt()
    return torch.where(trace > 1e-12, spread / trace.clamp(min=1e-12), 0.0), trace


def edge_coherence(
    pred: np.ndarray | torch.Tensor,
    target: np.ndarray | torch.Tensor,
    *,
    crop: int = 0,
    share: float = EDGE_SHARE,
    mask: np.ndarray | torch.Tensor | None = None,
) -> torch.Tensor:
    """Whether added detail has the shape of real edges: per-image float64 [N].

    The mean coherence (`coherence_map`, Y) of `pred` over that of `target`, both on the
    `share` of the pixels where the truth has the most structure (its structure tensor's
    trace). 1 = edges and texture as orderly as the truth's; above 1 smoother (a blurred edge
    is one clean ramp: the posterior mean scores 1.0-1.2); below 1 speckle or jaggies along
    edges, which the grain score does not see (it looks at flat pixels) and the HF ratio
    counts as detail. On issue 21's held-out photos (RESULTS.md) the settings that looked
    clean score 0.90-1.04 and the beaded or speckled ones 0.61-0.82 (`MIN_EDGE_COHERENCE`).
    pred/target as for `psnr`, [0, 1].

    With a `mask` (HxW, 1 = counted; inpainting's hole; no crop) the pixels are the `share`
    of the masked pixels with the most structure (the maps computed on the whole image)."""
    if not 0.0 < share <= 1.0:
        raise ValueError(f"share must be in (0, 1], got {share}")
    p, t = _prepare(pred, target, crop, y_channel=True, min_side=3)
    cp, _ = coherence_map(p)
    ct, energy = coherence_map(t)
    keep = torch.ones_like(energy, dtype=torch.bool)
    if mask is not None:
        if crop:
            raise ValueError("edge_coherence: a mask is scored without a border crop")
        keep = _mask_tensor(mask, p).expand_as(energy) > 0
        if not keep.flatten(1).any(dim=1).all():
            raise ValueError("edge_coherence: the mask selects no pixel")
    out = []
    for a, b, e, m in zip(cp.flatten(1), ct.flatten(1), energy.flatten(1), keep.flatten(1),
                          strict=True):  # fmt: skip
        a, b, e = a[m], b[m], e[m]
        n = max(1, int(round(share * e.numel())))
        top = e.argsort(descending=True, stable=True)[:n]
        out.append(a[top].mean() / b[top].mean())
    return torch.stack(out)
