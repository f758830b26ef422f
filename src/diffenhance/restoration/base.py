"""The restoration-task registry: one object per task, owning what differs between tasks.

A task owns everything that depends on which restoration problem is solved, and nothing else
branches on its name (BasicSR's shape: registered dataset/degradation classes):

* `scale(cfg)` / `scales()` - HR side / LQ side (from params where a task reads it), and the
  scales a checkpoint of the task may record;
* `side_inputs` - named per-pixel inputs beside the image (inpainting's ``mask``), each HxW in
  [0, 1]; the network input is the image then the side inputs in this order (`join`, `split`,
  `side`: no code outside this package knows the channel layout);
* `synthesise(hr, rng, cfg, validation=...)` - its degradation, seeded (the public entry is
  `degrade`, which checks the HR image and the output);
* `baselines(cfg)` - the classical methods it is scored against (the first is the report's
  reference);
* `protocols(cfg)` and `scored_region(lq)` - its scoring protocol: RGB and Y with a border crop,
  and a region scored on its own (inpainting: inside the hole);
* `finish(out, lq, std)` - how the tiled engine composes the output with the input
  (inpainting keeps the known pixels exactly);
* `pair_columns(lq)` - what the `degrade` stage records beside a validation pair;
* `degrade_keys` - the degrade.* keys its degradation and scale read;
* `lossless_output` - an artifact remover: `enhance` writes its JPEG inputs as PNG.

Validation settings are read from the existing `degrade.*` options (val_noise_sigma, ...):
`synthesise(validation=True)` uses them. Register a new task with the `register` decorator on
an ordinary class; config validation, degrade, train, evaluate and enhance then accept its
name with no other change:

    @register
    class Mine(RestorationTask):
        name = "mine"
        def synthesise(self, hr, rng, cfg, *, validation): ...
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from diffenhance.config import DegradeConfig
from diffenhance.metrics import Protocol
from diffenhance.registry import TASKS

if TYPE_CHECKING:
    import torch

    from diffenhance.config import Config

IMAGE_CHANNELS = 3  # the RGB image comes first in every network input; side inputs follow
Baseline = Callable[[np.ndarray], np.ndarray]  # network input HxWxC -> HR-size HxWx3 in [0, 1]


def image_of(lq: Any, axis: int = -1) -> Any:
    """The RGB image of a network input (numpy HxWxC: axis -1; torch [N, C, H, W]: axis 1;
    [C, H, W]: axis 0), without its side inputs. A view, not a copy."""
    index: list[Any] = [slice(None)] * lq.ndim
    index[axis] = slice(0, IMAGE_CHANNELS)
    return lq[tuple(index)]


class RestorationTask:
    """Base class of a registered restoration task (stateless: one instance per name)."""

    name: ClassVar[str]
    side_inputs: ClassVar[tuple[str, ...]] = ()  # per-pixel inputs after the image, in order
    description: ClassVar[str] = ""  # one line for listings (UI, `diffenhance models`)
    # an artifact remover: `enhance.output_format: same` writes its JPEG inputs as PNG, since a
    # lossy output would put back what the model removed
    lossless_output: ClassVar[bool] = False
    # the degrade.* keys its degradation (training and validation) and its scale read:
    # `degrade` records their values beside the pairs (data/pairs.py's `task_degradation`) and
    # train and evaluate read them there, so a change to another task's key reruns neither
    # (a DVC foreach stage's params cannot differ per task)
    degrade_keys: ClassVar[tuple[str, ...]] = ()

    # ------------------------------------------------------------------ geometry

    def scale(self, cfg: DegradeConfig | None = None) -> int:
        """HR side / LQ side under `cfg` (None: the defaults). Default 1 (same-size tasks)."""
        return 1

    def scales(self) -> tuple[int, ...]:
        """Every scale a checkpoint of this task may record (default: the default scale)."""
        return (self.scale(),)

    @property
    def channels(self) -> int:
        """Channels of the network input: the image plus one per side input."""
        return IMAGE_CHANNELS + len(self.side_inputs)

    # ------------------------------------------------------------------ side inputs

    def join(self, image: np.ndarray, **side: np.ndarray) -> np.ndarray:
        """The network input HxWxC float32 from the image HxWx3 (or an input of this task: its
        image is used) and each side input by name (HxW or HxWx1 in [0, 1]). ValueError for a
        missing or unknown side input or a size that differs from the image's."""
        image = np.asarray(image, dtype=np.float32)
        if image.ndim != 3 or image.shape[2] not in (IMAGE_CHANNELS, self.channels):
            raise ValueError(f"{self.name}: expected an HxWx3 image, got {image.shape}")
        if set(side) != set(self.side_inputs):
            raise ValueError(
                f"{self.name} takes the side inputs {list(self.side_inputs)}, got {sorted(side)}"
            )
        image = image_of(image)
        planes = []
        for k in self.side_inputs:
            m = np.asarray(side[k], dtype=np.float32)
            m = m[..., 0] if m.ndim == 3 else m
            if m.shape != image.shape[:2]:
                raise ValueError(
                    f"{k} is {m.shape[1]}x{m.shape[0]} but the image is {image.shape[1]}x"
                    f"{image.shape[0]} (width x height); they must match"
                )
            planes.append(m[..., None])
        return np.concatenate([image, *planes], axis=-1) if planes else image.copy()

    def split(self, lq: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(image HxWx3, {side input name: HxW}) of a network input HxWxC (views)."""
        return image_of(lq), {k: self.side(lq, k) for k in self.side_inputs}

    def side(self, lq: Any, name: str, axis: int = -1) -> Any:
        """Side input `name` of a network input (numpy HxWxC: axis -1; torch [C, H, W]: axis 0;
        [N, C, H, W]: axis 1), that axis dropped. KeyError for a name this task does not take."""
        if name not in self.side_inputs:
            raise KeyError(f"{self.name} has no side input {name!r} (it has {self.side_inputs})")
        index: list[Any] = [slice(None)] * lq.ndim
        index[axis] = IMAGE_CHANNELS + self.side_inputs.index(name)
        return lq[tuple(index)]

    # ------------------------------------------------------------------ degradation

    def synthesise(
        self, hr: np.ndarray, rng: np.random.Generator, cfg: DegradeConfig, *, validation: bool
    ) -> np.ndarray:
        """The LQ input (H/s)x(W/s)xC float32 in [0, 1] of a checked HR image HxWx3 float32
        whose sides are multiples of the scale; all randomness from `rng`. validation=True:
        the task's fixed validation settings (e.g. degrade.val_noise_sigma)."""
        raise NotImplementedError

    def degrade(
        self,
        hr: np.ndarray,
        rng: np.random.Generator,
        cfg: DegradeConfig,
        *,
        validation: bool = False,
    ) -> np.ndarray:
        """Synthesise the LQ input of this task from an HR image (`synthesise`).

        hr: float32 HxWx3 in [0, 1]; H and W must be multiples of `scale(cfg)` (use
        `degrade.modcrop`). Returns float32 (H/s)x(W/s)xC in [0, 1], C = `channels`."""
        from diffenhance.degrade import as_image

        hr = as_image(hr, "hr", channels=(3,))
        s = self.scale(cfg)
        h, w = hr.shape[:2]
        if h % s or w % s:
            raise ValueError(
                f"task {self.name!r} needs HR sides divisible by {s}, got {w}x{h}; "
                f"crop with modcrop(hr, {s})"
            )
        lq = self.synthesise(hr, rng, cfg, validation=validation)
        assert lq.shape == (h // s, w // s, self.channels), (self.name, lq.shape)
        return lq

    def pair_columns(self, lq: np.ndarray) -> dict[str, object]:
        """Extra pairs.csv columns describing one validation pair (default none)."""
        return {}

    # ------------------------------------------------------------------ scoring

    def baselines(self, cfg: Config) -> tuple[dict[str, Baseline], dict[str, str]]:
        """({name: network input HxWxC -> HR-size HxWx3}, {skipped name: reason}); the first
        is the report's reference. Default: bicubic and Lanczos upscaling for scale > 1, the
        input itself for same-size tasks."""
        from diffenhance.restoration.baselines import bicubic_upscale, lanczos_upscale

        s = self.scale(cfg.degrade)
        if s > 1:
            return {
                "bicubic": lambda lq: bicubic_upscale(image_of(lq), s),
                "lanczos": lambda lq: lanczos_upscale(image_of(lq), s),
            }, {}
        return {"input": lambda lq: image_of(lq).copy()}, {}

    def protocols(self, cfg: DegradeConfig | None = None) -> list[Protocol]:
        """The protocols reported: RGB and Y, border crop = the scale when > 1 (as BasicSR's
        `crop_border`), none for same-size tasks. The first (RGB) is training validation's."""
        s = self.scale(cfg)
        crop = s if s > 1 else 0
        return [Protocol("rgb", False, crop), Protocol("y", True, crop)]

    def scored_region(self, lq: np.ndarray) -> np.ndarray | None:
        """A region HxW (1 = counted) of the output also scored on its own (psnr_mask,
        ssim_mask), from the network input; None (default) for none."""
        return None

    # ------------------------------------------------------------------ inference

    def finish(
        self, out: torch.Tensor, lq: torch.Tensor, std: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The tiled engine's last step on one image: (output [3, H, W], std [H, W] or None)
        composed with the network input `lq` [C, h, w] (h = H / scale). Default: unchanged.
        The engine may call it on a stripe of rows (`lq`: the input rows under them), so it
        must work row by row."""
        return out, std


# ----------------------------------------------------------------------------- the registry

_REGISTRY = TASKS  # name -> the RestorationTask instance (the ground floor's registry)
register = _REGISTRY.register  # class decorator
unregister = _REGISTRY.unregister
task_names = _REGISTRY.names  # in registration order


def get_task(task: str | RestorationTask) -> RestorationTask:
    """The registered task `task` (a task object is returned as it is); ValueError listing the
    registered names otherwise."""
    if isinstance(task, RestorationTask):
        return task
    _REGISTRY.load()
    try:
        return _REGISTRY[task]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown task {task!r}; expected one of {', '.join(task_names())}"
        ) from None
