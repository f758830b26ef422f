"""Tiled, batched inference for images of any size and aspect ratio.

An image is padded (replicate, right/bottom) to what the network takes, split into a grid of
overlapping tiles, each tile is restored, and the tiles are blended back with a separable
raised-cosine window and cropped to the exact output size:

    model = RestorerTiles(load_restorer("models/sr4", device), steps=8)
    out = enhance_image(read_image("photo.png"), model, cfg.infer, key="photo")  # HxWx3 -> sHxsWx3

* Tile size and overlap are in INPUT (LQ) pixels; the network sees tiles of `tile * scale`.
  Tile size and starts are multiples of the LQ step the network needs (`size_step`); the
  overlap is rounded up to one.
  Memory is bounded by `tile` and `tile_batch`, never by the image size: only the input and
  the output image (plus O(H + W) blending weights) grow with it. The blend is summed in a
  stripe one tile row tall; rows no later tile reaches are divided by their weights and
  stored. A float32 result is then finished whole (clamp, colour fix, `finish`) as before;
  asked for 8 or 16 bits (`stream(..., bit_depth=)`, what `diffenhance enhance` writes), each
  stripe is finished and quantised as it completes, so no float copy of the whole output
  exists (`meanstd` excepted: its statistics are the whole image's). Each pixel gets the same
  additions in the same order as with one whole-image buffer, so the bits are the same.
* Seams: along each axis neighbouring tiles cross-fade over their whole overlap with
  w(i) = 1/2 - 1/2 cos(pi (i + 1/2) / n), whose two halves sum to exactly 1, so a model that
  returns the same value for the same pixel in two tiles is reproduced exactly. Image borders
  get weight 1 (no fade), so nothing is divided by a tiny weight.
* Determinism: every tile's noise comes from its own generator (`diffusion.noise.
  FieldGenerator`): each draw, the start's and a sampler's per step, is its crop of the image's
  next noise field, seeded from (seed, image key) (`image_seed`), so overlapping tiles draw the
  same numbers and the cross-fade does not average two samples into bands of less detail; a
  draw off the output grid comes from the tile's own seed, (seed, image key, tile position)
  (`tile_seed`). A batch holds tiles of one image only
  (`tile_batch` at a time, in raster order), so an output's bits never depend on which other
  images share its run, shard or worker. They do depend on `tile_batch` (CPU convolutions
  round differently at another batch size) and on the intra-op thread count (oneDNN's conv with
  a bias does too): `infer.threads` pins it (`set_threads`).
* Precision: bf16 autocast on CUDA (`infer.precision: auto`), fp32 on CPU. Under autocast each
  tile's output is checked; a tile with a NaN/inf is redone in fp32 (same generator seed).
* Uncertainty (`TiledEnhancer(..., uncertainty=True)`, `infer.uncertainty`): each tile's
  per-pixel variance across its samples (`TileModel.moments`) is cross-faded with the same
  windows as the output and square-rooted: a std map without seams; the output is unchanged.
* Colour correction (`infer.color_correction`): `wavelet` replaces each tile's low frequencies
  (5-level a-trous decomposition, as in StableSR) with those of the bicubic-upsampled input;
  `meanstd` matches each output channel's mean and std to the input's, per image.

The per-tile function is any `TileModel` (injectable, e.g. an identity-like model in tests);
production uses `RestorerTiles`, which wraps a `model.Restorer`.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import numpy as np
import torch
import torch.nn.functional as F

from diffenhance.config import ConfigError, InferConfig
from diffenhance.diffusion.noise import FieldGenerator
from diffenhance.io import quantise
from diffenhance.restoration.base import image_of

T = TypeVar("T")
WAVELET_LEVELS = 5  # StableSR's choice: the low band keeps structures up to ~64 px
_STD_EPS = 1e-6


class TileModel(Protocol):
    """What `TiledEnhancer` needs from a model: restore a batch of equally sized tiles."""

    scale: int  # output size / input size
    size_multiple: int  # output-space H and W must be multiples of this
    device: torch.device
    # optional `lq_channels: int`: input channels (3 when absent; the image + side inputs),
    # optional `finish(out [3,H,W], lq [C,h,w], std [H,W] | None) -> (out, std)`: composes one
    # image's output with its input (`RestorationTask.finish`: inpainting keeps known pixels);
    # for a quantised result it is called on one stripe of finished rows at a time (H = h *
    # scale rows, lq the input rows under them), so it must work row by row

    def __call__(
        self,
        lq: torch.Tensor,
        generators: Sequence[torch.Generator],
        autocast_dtype: torch.dtype | None,
    ) -> torch.Tensor:
        """lq [N,C,h,w] float32 in [0,1] (CPU) -> [N,3,h*scale,w*scale] float32 in [0,1].

        Tile i must draw all its randomness from `generators[i]` (CPU generators).

        A model that can also give uncertainty maps has `moments(lq, generators,
        autocast_dtype) -> (mean, var)`: mean as here, var [N,1,h*scale,w*scale] float32 the
        per-pixel variance of its samples (`RestorerTiles.moments`)."""
        ...


@dataclass
class RestorerTiles:
    """`TileModel` over a trained `Restorer`: sampler, eta, steps and samples from params
    (steps/samples from the checkpoint where params leave them null)."""

    restorer: Any  # diffenhance.model.Restorer (not imported here: keeps this module light)
    steps: int = 8
    sampler: str = "ddim"
    eta: float = 0.0
    samples: int = 1  # > 1: the mean of that many samples per tile
    detail: float = 1.0  # formulations with a detail knob: 0 = posterior mean .. 1 = sample

    @classmethod
    def from_spec(cls, restorer: Any, spec: Any) -> RestorerTiles:
        """From a resolved `restore.SamplingSpec` (sampler, steps, eta, samples)."""
        return cls(restorer, spec.steps, spec.sampler, spec.eta, spec.samples, spec.detail)

    @property
    def scale(self) -> int:
        return int(self.restorer.scale)

    @property
    def size_multiple(self) -> int:
        return int(self.restorer.unet.size_multiple)

    @property
    def lq_channels(self) -> int:
        return self.restorer.restoration.channels

    def finish(
        self, out: torch.Tensor, lq: torch.Tensor, std: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The task's composition of an output with its input (`RestorationTask.finish`)."""
        return self.restorer.restoration.finish(out, lq, std)

    @property
    def device(self) -> torch.device:
        return self.restorer.device

    @torch.no_grad()
    def __call__(
        self,
        lq: torch.Tensor,
        generators: Sequence[torch.Generator],
        autocast_dtype: torch.dtype | None,
    ) -> torch.Tensor:
        return self._restore(lq, generators, autocast_dtype, variance=False)[0]

    @torch.no_grad()
    def moments(
        self,
        lq: torch.Tensor,
        generators: Sequence[torch.Generator],
        autocast_dtype: torch.dtype | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(the tiles as `__call__` returns them, var [N,1,H,W]: the mean over RGB of the
        per-channel variance of the `samples` samples, [0,1] units squared)."""
        mean, var = self._restore(lq, generators, autocast_dtype, variance=True)
        assert var is not None
        return mean, var

    def _restore(
        self,
        lq: torch.Tensor,
        generators: Sequence[torch.Generator],
        autocast_dtype: torch.dtype | None,
        variance: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        # One generator per tile: Restorer.restore_moments then draws tile i's randomness from
        # generator i only (and runs tiles one by one when the sampler adds noise per step).
        mean, var = self.restorer.restore_moments(
            lq,
            steps=self.steps,
            sampler=self.sampler,
            eta=self.eta,
            generator=list(generators),
            autocast_dtype=autocast_dtype,
            samples=self.samples,
            variance=variance,
            detail=self.detail,
        )
        return mean.float().cpu(), None if var is None else var.float().cpu()


# ----------------------------------------------------------------------------- geometry


def set_threads(n: int) -> None:
    """Pin torch's intra-op CPU threads to `n` for this process (0: leave torch's default).

    An output's bits depend on the thread count (oneDNN splits a convolution with a bias by
    thread), so the jobs that promise equal bytes everywhere (enhance shards, evaluate) call
    this with `infer.threads`."""
    if n > 0 and torch.get_num_threads() != n:
        torch.set_num_threads(n)


def size_step(scale: int, size_multiple: int) -> int:
    """Smallest LQ size step whose upscaled size is a multiple of `size_multiple`."""
    return size_multiple // math.gcd(size_multiple, scale)


def check_tiling(tile: int, overlap: int, scale: int, size_multiple: int) -> int:
    """The tile a model of `scale` and network `size_multiple` runs for infer.tile `tile`
    (rounded down to its step, `size_step`); ConfigError when that leaves no room for the
    overlap (rounded up to the step): a tile must be longer than its overlap, or neighbours
    meet without a cross-fade. `plan_job` asks before a job starts, the engine again."""
    step = size_step(scale, size_multiple)
    rounded, ov = tile - tile % step, -(-overlap // step) * step
    if rounded < step or ov >= rounded:
        raise ConfigError(
            f"infer.tile={tile} rounds down to {rounded} and infer.tile_overlap={overlap} up to "
            f"{ov} (multiples of {step} px for scale {scale} and network multiple "
            f"{size_multiple}): a tile must be longer than its overlap, or neighbouring tiles "
            f"meet without a cross-fade (a seam); use infer.tile >= {max(ov, 0) + step} (--tile "
            "alone takes a quarter of it as the overlap)"
        )
    return rounded


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of the tiles along one axis of `length` (> tile): the fewest tiles that
    overlap by at least `overlap`, spread evenly from 0 to length - tile."""
    assert length > tile > overlap >= 0, (length, tile, overlap)
    n = -(-(length - tile) // (tile - overlap)) + 1
    return [round(i * (length - tile) / (n - 1)) for i in range(n)]


def ramp(n: int) -> torch.Tensor:
    """Raised-cosine fade-in of n samples, float64 in (0, 1); ramp(n) + ramp(n).flip(0) == 1."""
    i = torch.arange(n, dtype=torch.float64)
    return 0.5 - 0.5 * torch.cos(math.pi * (i + 0.5) / n)


def axis_windows(starts: Sequence[int], tile: int, scale: int) -> list[torch.Tensor]:
    """Per-tile 1-D blending weights (output pixels, float32 in (0, 1]) along one axis.

    A side with a neighbour fades over the whole overlap with it; image borders stay at 1."""
    n = tile * scale
    out = []
    for i, a in enumerate(starts):
        w = torch.ones(n, dtype=torch.float64)
        if i > 0:
            ov = (starts[i - 1] + tile - a) * scale
            w[:ov] *= ramp(ov)
        if i + 1 < len(starts):
            ov = (a + tile - starts[i + 1]) * scale
            w[n - ov :] *= ramp(ov).flip(0)
        out.append(w.float())
    return out


def tile_seed(seed: int, key: str, y: int, x: int) -> int:
    """63-bit generator seed of the tile at LQ position (y, x) of image `key`."""
    h = hashlib.blake2b(f"{seed}\0{key}\0{y}\0{x}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & (2**63 - 1)


# What protocol.json (evaluate, compare) records of how the noise was drawn.
NOISE_SEEDING = (
    "every noise draw of a tile (start and per step) is its crop of the image's k-th noise "
    "field, seeded with image_seed(seed, image_key(LQ pixels)) block by block (diffusion.noise); "
    "a draw off the output grid comes from the tile's own generator, tile_seed(seed, "
    "image_key, tile position)"
)


def image_seed(seed: int, key: str) -> int:
    """63-bit seed of image `key`'s start-noise fields (`diffusion.noise.FieldGenerator`)."""
    h = hashlib.blake2b(f"{seed}\0{key}\0field".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & (2**63 - 1)


# ----------------------------------------------------------------------------- colour


def _wavelet_low(x: torch.Tensor, levels: int = WAVELET_LEVELS) -> torch.Tensor:
    """Low band of an a-trous wavelet decomposition: x [N,C,H,W] blurred `levels` times with a
    3x3 binomial kernel dilated by 1, 2, 4, ... (replicate borders)."""
    c = x.shape[1]
    k = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]], dtype=x.dtype) / 16
    k = k.to(x.device).expand(c, 1, 3, 3)
    for i in range(levels):
        d = 2**i
        x = F.conv2d(F.pad(x, (d, d, d, d), mode="replicate"), k, dilation=d, groups=c)
    return x


def wavelet_color_fix(out: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Keep `out`'s high frequencies, take the low ones from `ref`. Both [N,3,H,W] in [0,1]."""
    return (out - _wavelet_low(out) + _wavelet_low(ref)).clamp(0, 1)


def _channel_std(x: torch.Tensor) -> torch.Tensor:
    """Each channel's std of x [C,H,W]; 0 for one pixel (no spread; torch gives NaN)."""
    return x.std(dim=(1, 2)) if x[0].numel() > 1 else x.new_zeros(x.shape[0])


def meanstd_color_fix(out: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Match each channel's mean and std of out [3,H,W] to ref [3,h,w] (in place; [0,1]).
    A one-pixel ref has no spread (std 0, not NaN): out becomes its colour."""
    mo, so = out.mean(dim=(1, 2)), _channel_std(out)
    mr, sr = ref.mean(dim=(1, 2)), _channel_std(ref)
    gain = torch.where(so > _STD_EPS, sr / so.clamp_min(_STD_EPS), torch.ones_like(so))
    out.sub_(mo[:, None, None]).mul_(gain[:, None, None]).add_(mr[:, None, None])
    return out.clamp_(0, 1)


# ----------------------------------------------------------------------------- engine


def resolve_device(name: str, key: str = "infer.device") -> torch.device:
    """'auto' -> cuda when available else cpu; a device that is not on this machine (cuda
    without CUDA, cuda:N past the last card, mps without Metal) is a ConfigError naming `key`
    (a user error: one `error:` line, exit 2, wherever the device is asked for)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:  # the config's rule refuses these first; a caller may not have one
        raise ConfigError(
            f"{key}={name!r} is not a device; use auto, cpu, cuda or cuda:N"
        ) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{key}={name!r} but CUDA is not available; use auto or cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        n = torch.cuda.device_count()
        raise ConfigError(
            f"{key}={name!r} but this machine has {n} CUDA device(s): cuda:0..{n - 1}"
        )
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"{key}={name!r} but Metal (MPS) is not available; use auto or cpu")
    return dev


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """infer.precision -> the autocast dtype (None = plain fp32)."""
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    return torch.bfloat16


@dataclass
class Enhanced(Generic[T]):
    """One result of `TiledEnhancer.stream`: `image` (HxWx3 float32 in [0,1], or uint8 /
    uint16 when `stream`'s bit_depth asks for it) or `error`; `std` (HxW float32, [0,1] units)
    when the engine makes uncertainty maps."""

    ident: T
    image: np.ndarray | None
    error: BaseException | None
    seconds: float  # from the image entering the engine to its result
    std: np.ndarray | None = None


@dataclass(eq=False)
class _Image:
    ident: Any
    key: str
    lq: torch.Tensor  # [3,Hp,Wp] padded input
    h: int
    w: int
    th: int  # tile size (LQ px) along y and x for this image
    tw: int
    ys: list[int]
    xs: list[int]
    wys: list[torch.Tensor]
    wxs: list[torch.Tensor]
    norm_y: torch.Tensor  # [h*s] sum of y windows (2-D normaliser is its outer product)
    norm_x: torch.Tensor
    t0: float
    depth: int | None  # the result's bits: None (float32), 8 or 16
    # the stripe: weighted sums of output rows top .. top + R (R = one tile row, h*s at most)
    acc: torch.Tensor  # [3,R,w*s] of the tiles
    acc_var: torch.Tensor | None  # [R,w*s] of the tiles' variance maps (uncertainty)
    full: torch.Tensor | None  # [3,h*s,w*s] divided sums, finished whole (float, meanstd)
    quantised: np.ndarray | None  # [h*s,w*s,3] uint8/uint16 result, stored stripe by stripe
    std: torch.Tensor | None  # [h*s,w*s] std (uncertainty)
    top: int = 0  # output row of the stripe's first row: the rows above it are stored
    row: int = 0  # the tile row being summed
    error: BaseException | None = None


@dataclass
class EngineStats:
    tiles: int = 0
    batches: int = 0
    fp32_redone: int = 0  # tiles whose low-precision output was not finite


@dataclass
class TiledEnhancer:
    """Blended tiled inference over a `TileModel`, batch by batch of one image's tiles.

    cfg: an `InferConfig` or a resolved `restore.SamplingSpec` (the same field names): tile,
    tile_overlap, tile_batch, seed, precision, color_correction.

    uncertainty: also return each image's per-pixel std across the model's samples
    (`Enhanced.std`; the model needs `moments`). The tiles' variance maps are cross-faded with
    the output's window weights, then square-rooted, so the map has no seams either; it is the
    spread of the samples as drawn (before colour correction). The output image is the same
    bits with or without it."""

    model: TileModel
    cfg: Any
    stats: EngineStats = field(default_factory=EngineStats)
    uncertainty: bool = False
    # progress(tiles done, tiles in all) of the image in flight: at its start, then after
    # each batch of tiles (a UI's progress; long images on a slow device)
    progress: Callable[[int, int], None] | None = None

    def __post_init__(self) -> None:
        s, m = self.model.scale, self.model.size_multiple
        self.step = size_step(s, m)
        self.tile = check_tiling(self.cfg.tile, self.cfg.tile_overlap, s, m)
        if self.cfg.tile_batch < 1:
            raise ValueError(f"infer.tile_batch must be >= 1, got {self.cfg.tile_batch}")
        self.dtype = autocast_dtype(self.cfg.precision, self.model.device)
        if self.uncertainty and not callable(getattr(self.model, "moments", None)):
            raise ValueError(
                f"{type(self.model).__name__} gives no sample variance (no `moments`): it "
                "cannot make uncertainty maps"
            )

    # ---------------------------------------------------------------- one image

    def _axis(self, n: int, min_len: int = 0) -> tuple[int, int, list[int]]:
        """(padded length, tile length, starts) along an axis of n LQ pixels; an axis that
        fits in one tile is padded to at least `min_len`.

        Starts are multiples of `step`, so every tile sees the image on the same grid of the
        network's downsamplings / pixel-unshuffle (an LR-space net with f = 2 on a tile
        starting at an odd pixel would compute another function there: a seam). The padded
        length has one `step` of margin beyond the image: a network's last pixels behave
        unlike its others (the shipped sr4's samples hardly differ there: a dark corner in
        every uncertainty map, `uncertainty`), and no image pixel should sit on them."""
        st = self.step
        p = -(-n // st) * st + st  # a step of margin: the image never ends on the net's edge
        if p <= self.tile + st:  # what fits a tile stays one tile (a step longer), not four
            p = max(p, -(-min_len // st) * st)
            return p, p, [0]
        ov = -(-self.cfg.tile_overlap // st)  # < self.tile // st (__post_init__)
        return p, self.tile, [st * a for a in tile_starts(p // st, self.tile // st, ov)]

    def _prepare(self, ident: Any, key: str, image: np.ndarray, bit_depth: int | None) -> _Image:
        if bit_depth not in (None, 8, 16):
            raise ValueError(f"{key}: bit_depth must be None, 8 or 16, got {bit_depth!r}")
        a = np.asarray(image)
        c = getattr(self.model, "lq_channels", 3)
        if a.ndim != 3 or a.shape[2] != c or 0 in a.shape or a.dtype != np.float32:
            what = "an HxWx3 float32 image" if c == 3 else f"an HxWx{c} float32 input"
            raise ValueError(f"{key}: expected {what} in [0, 1], got {a.dtype} {a.shape}")
        h, w = a.shape[:2]
        s = self.model.scale
        hp, th, ys = self._axis(h)
        wp, tw, xs = self._axis(w)
        if th * s <= self.model.size_multiple and tw * s <= self.model.size_multiple:
            # The U-Net's innermost level (1/size_multiple of the output) would be 1x1: a
            # GroupNorm with one channel per group then has a single value to normalise and
            # refuses it (in eval mode too). Pad one more size step along each axis.
            hp, th, ys = self._axis(h, 2 * self.step)
            wp, tw, xs = self._axis(w, 2 * self.step)
        lq = torch.from_numpy(a).permute(2, 0, 1)  # tiles past its edge: `_tile` replicates
        wys, wxs = axis_windows(ys, th, s), axis_windows(xs, tw, s)
        norm_y, norm_x = torch.zeros(hp * s), torch.zeros(wp * s)
        for y, wy in zip(ys, wys, strict=True):
            norm_y[y * s : y * s + th * s] += wy
        for x, wx in zip(xs, wxs, strict=True):
            norm_x[x * s : x * s + tw * s] += wx
        ho, wo, rows = h * s, w * s, min(th * s, h * s)
        # stripe by stripe to bits unless a float result or meanstd's statistics need it whole
        whole = bit_depth is None or self.cfg.color_correction == "meanstd"
        int_type = np.uint8 if bit_depth == 8 else np.uint16
        return _Image(
            ident, key, lq, h, w, th, tw, ys, xs, wys, wxs,
            norm_y=norm_y[:ho].clone(),
            norm_x=norm_x[:wo].clone(),
            t0=time.perf_counter(),
            depth=bit_depth,
            acc=torch.zeros(3, rows, wo),
            acc_var=torch.zeros(rows, wo) if self.uncertainty else None,
            full=torch.empty(3, ho, wo) if whole else None,
            quantised=None if whole else np.empty((ho, wo, 3), int_type),
            std=torch.empty(ho, wo) if self.uncertainty else None,
        )  # fmt: skip

    def _next_row(self, img: _Image, iy: int) -> None:
        """Start summing tile row `iy`: the rows above its first are complete (tiles run in
        raster order), so they are stored and the stripe moves down to it."""
        n = img.ys[iy] * self.model.scale - img.top
        self._store_rows(img, n)
        keep = img.acc.shape[1] - n
        img.acc[:, :keep] = img.acc[:, n:].clone()
        img.acc[:, keep:] = 0
        if img.acc_var is not None:
            img.acc_var[:keep] = img.acc_var[n:].clone()
            img.acc_var[keep:] = 0
        img.top, img.row = img.top + n, iy

    def _store_rows(self, img: _Image, n: int) -> None:
        """Divide the stripe's first n rows by their summed weights and store them: in `full`
        and `std` (finished by `_finish`, as one image), or quantised at once (`_emit`)."""
        a, b = img.top, img.top + n
        out = img.acc[:, :n].div_(img.norm_y[None, a:b, None]).div_(img.norm_x[None, None, :])
        std = None
        if img.acc_var is not None:
            var = img.acc_var[:n].div_(img.norm_y[a:b, None]).div_(img.norm_x[None, :])
            std = var.clamp_(min=0).sqrt_()
        if img.quantised is not None:
            self._emit(img, a, b, out, std)
            return
        assert img.full is not None
        img.full[:, a:b] = out
        if img.std is not None and std is not None:
            img.std[a:b] = std

    def _emit(
        self, img: _Image, a: int, b: int, out: torch.Tensor, std: torch.Tensor | None
    ) -> None:
        """Output rows a..b ([3,b-a,W] divided sums, std [b-a,W]) of a quantised output:
        clamped, composed with the input rows under them (`finish`), quantised, stored."""
        assert img.quantised is not None
        out.clamp_(0, 1)
        finish = getattr(self.model, "finish", None)
        if finish is not None:  # e.g. inpainting: only the holes are filled
            s = self.model.scale
            out, std = finish(out, img.lq[:, a // s : b // s], std)
        img.quantised[a:b] = quantise(out.permute(1, 2, 0).numpy(), img.depth or 8)
        if img.std is not None and std is not None:
            img.std[a:b] = std

    def _finish(self, img: _Image) -> tuple[np.ndarray, np.ndarray | None]:
        """(image HxWx3, std HxW or None): the last rows stored; a whole (float or meanstd)
        image then colour-fixed, clamped and composed with its input at once."""
        self._store_rows(img, img.h * self.model.scale - img.top)
        std = img.std
        if img.quantised is not None:
            return img.quantised, None if std is None else std.numpy()
        out = img.full
        assert out is not None
        if self.cfg.color_correction == "meanstd":
            meanstd_color_fix(out, image_of(img.lq, axis=0)[:, : img.h, : img.w])
        out.clamp_(0, 1)
        finish = getattr(self.model, "finish", None)
        if finish is not None:  # e.g. inpainting: only the holes are filled
            out, std = finish(out, img.lq, std)
        image = out.permute(1, 2, 0).numpy()
        if img.depth is not None:  # meanstd: quantised only now
            image = quantise(image, img.depth)
        return image, None if std is None else std.numpy()

    # ---------------------------------------------------------------- batches

    def _forward(
        self, lq: torch.Tensor, seeds: list[tuple[int, ...]], dtype: torch.dtype | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(tiles, their variance maps or None) of one model call; seeds[i]: tile i's
        `FieldGenerator` arguments (its seed, its image's seed, its position and size)."""
        gens = [FieldGenerator(*s) for s in seeds]
        if self.uncertainty:
            y, v = self.model.moments(lq, gens, dtype)  # type: ignore[attr-defined]
            return y.float(), v.float()
        return self.model(lq, gens, dtype).float(), None

    def _call(
        self, lq: torch.Tensor, seeds: list[tuple[int, ...]]
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Run the model on a batch, redoing in fp32 any tile that came out non-finite."""
        y, v = self._forward(lq, seeds, self.dtype)
        if self.dtype is not None:  # decided on the output alone: the same with uncertainty
            bad = (~torch.isfinite(y).flatten(1).all(dim=1)).nonzero().flatten().tolist()
            if bad:
                self.stats.fp32_redone += len(bad)
                ry, rv = self._forward(lq[bad], [seeds[i] for i in bad], None)
                y[bad] = ry
                if v is not None and rv is not None:
                    v[bad] = rv
        if not torch.isfinite(y).all() or (v is not None and not torch.isfinite(v).all()):
            raise FloatingPointError("the model returned NaN or inf even in fp32")
        return y, v

    def _run(self, jobs: list[tuple[_Image, int, int]]) -> None:
        jobs = [j for j in jobs if j[0].error is None]
        if not jobs:
            return
        s = self.model.scale
        try:
            lq = torch.stack([self._tile(img, iy, ix) for img, iy, ix in jobs])
            th, tw = lq.shape[-2:]
            seeds = [
                (tile_seed(self.cfg.seed, img.key, img.ys[iy], img.xs[ix]),
                 image_seed(self.cfg.seed, img.key), img.ys[iy], img.xs[ix], th, tw)
                for img, iy, ix in jobs
            ]  # fmt: skip
            y, v = self._call(lq, seeds)
            if self.cfg.color_correction == "wavelet":
                rgb = image_of(lq, axis=1)
                ref = rgb if s == 1 else F.interpolate(rgb, scale_factor=s, mode="bicubic")
                y = wavelet_color_fix(y, ref.clamp(0, 1))
        except Exception as e:  # every image in a failed batch fails, the others go on
            for img, _, _ in jobs:
                img.error = img.error or e
            return
        self.stats.batches += 1
        self.stats.tiles += len(jobs)
        try:
            for k, (img, iy, ix) in enumerate(jobs):
                self._add(img, iy, ix, y[k], None if v is None else v[k])
        except Exception as e:  # storing finished rows failed (`finish`): the image fails
            for img, _, _ in jobs:
                img.error = img.error or e

    @staticmethod
    def _tile(img: _Image, iy: int, ix: int) -> torch.Tensor:
        """The LQ input of tile (iy, ix) [C, th, tw]; where it reaches past the image (the
        padded length of `_axis`), the edge pixels replicated. Only a tile is copied, never
        the whole image."""
        y0, x0 = img.ys[iy], img.xs[ix]
        if y0 + img.th <= img.h and x0 + img.tw <= img.w:
            return img.lq[:, y0 : y0 + img.th, x0 : x0 + img.tw]
        rows = torch.arange(y0, y0 + img.th).clamp_(max=img.h - 1)
        cols = torch.arange(x0, x0 + img.tw).clamp_(max=img.w - 1)
        return img.lq[:, rows][:, :, cols]

    def _add(self, img: _Image, iy: int, ix: int, y: torch.Tensor, v: torch.Tensor | None) -> None:
        """Add tile (iy, ix) (y [3,th*s,tw*s], v [1,th*s,tw*s]) to the stripe, windowed; the
        first tile of a tile row moves the stripe down to it."""
        s = self.model.scale
        if iy != img.row:
            self._next_row(img, iy)
        y0, x0 = img.ys[iy] * s, img.xs[ix] * s
        y1, x1 = min(y0 + img.th * s, img.h * s), min(x0 + img.tw * s, img.w * s)
        wgt = img.wys[iy][: y1 - y0, None] * img.wxs[ix][None, : x1 - x0]
        r0, r1 = y0 - img.top, y1 - img.top  # in the stripe
        img.acc[:, r0:r1, x0:x1] += y[:, : y1 - y0, : x1 - x0] * wgt
        if img.acc_var is not None and v is not None:  # the same cross-fade: no seams
            img.acc_var[r0:r1, x0:x1] += v[0, : y1 - y0, : x1 - x0] * wgt

    # ---------------------------------------------------------------- public

    def stream(
        self,
        jobs: Iterable[tuple[T, str, np.ndarray]],
        *,
        bit_depth: Callable[[T], int | None] | None = None,
    ) -> Iterator[Enhanced[T]]:
        """Enhance (ident, key, image) triples; yield an `Enhanced` per image, in order.

        image: HxWx3 float32 in [0, 1]; key names the image for the noise seeds (use a
        content hash or a stable name). An image whose preparation or batch fails is yielded
        with `error` set; the stream goes on. One image is in flight at a time and its tiles
        run `tile_batch` at a time, so neither memory nor an output's bits depend on the
        other images.

        bit_depth(ident): 8 or 16 -> that image's `Enhanced.image` is HxWx3 uint8 / uint16,
        quantised stripe by stripe exactly as `io.to_uint8` / `to_uint16` quantise the float
        result (no whole-image float buffer: the memory a large output needs); None (or no
        bit_depth) -> float32 in [0, 1].
        """
        for ident, key, image in jobs:
            t0 = time.perf_counter()
            try:
                depth = None if bit_depth is None else bit_depth(ident)
                img = self._prepare(ident, key, image, depth)
            except Exception as e:
                yield Enhanced(ident, None, e, time.perf_counter() - t0)
                continue
            tiles = [(img, iy, ix) for iy in range(len(img.ys)) for ix in range(len(img.xs))]
            if self.progress is not None:
                self.progress(0, len(tiles))
            for i in range(0, len(tiles), self.cfg.tile_batch):
                if img.error is not None:
                    break
                self._run(tiles[i : i + self.cfg.tile_batch])
                if self.progress is not None and img.error is None:
                    self.progress(min(i + self.cfg.tile_batch, len(tiles)), len(tiles))
            result, std, err = None, None, img.error
            if err is None:
                try:
                    result, std = self._finish(img)
                except Exception as e:
                    err = e
            yield Enhanced(img.ident, result, err, time.perf_counter() - img.t0, std)

    def enhance(
        self, image: np.ndarray, key: str = "", *, bit_depth: int | None = None
    ) -> np.ndarray:
        """One image: HxWx3 float32 in [0,1] -> (H*scale)x(W*scale)x3 float32 in [0,1]
        (uint8 / uint16 with bit_depth 8 / 16, as `stream`)."""
        return self.enhance_one(image, key, bit_depth=bit_depth).image  # type: ignore[return-value]

    def enhance_one(
        self, image: np.ndarray, key: str = "", *, bit_depth: int | None = None
    ) -> Enhanced[None]:
        """One image through `stream`: its `Enhanced` (image, and std with `uncertainty`);
        raises the image's error instead of returning it."""
        (res,) = list(self.stream([(None, key, image)], bit_depth=lambda _: bit_depth))
        if res.error is not None:
            raise res.error
        assert res.image is not None
        return res


def enhance_image(
    image: np.ndarray, model: TileModel, cfg: InferConfig, *, key: str = ""
) -> np.ndarray:
    """Tiled enhancement of one HxWx3 float32 image in [0,1] -> sHxsWx3 float32 in [0,1].

    `key` enters the noise seeds of its tiles (with cfg.seed); the same key, image and params
    give the same output whatever else is processed alongside."""
    return TiledEnhancer(model, cfg).enhance(image, key)
