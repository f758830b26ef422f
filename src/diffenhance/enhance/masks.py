"""Inpainting masks of an enhancement job: `enhance.mask` (`--mask`), white = fill.

One input image takes a mask file; a folder (or prefix) of inputs takes a folder of masks
with the same relative paths: for the input `a/b.jpg` the mask is `<mask dir>/a/b.jpg`, else
`<mask dir>/a/b.png` (so JPEG photos can have lossless PNG masks). Masks are local files (like
the model, they must exist on every worker). Each mask's size and mtime join its input's
fingerprint, and its SHA-256 joins the image's manifest record, so editing a mask redoes that
image on the next run.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from diffenhance.config import Config
from diffenhance.enhance.job import EnhanceError
from diffenhance.io import ImageReadError, file_sha256, read_image_info, read_mask
from diffenhance.restoration import RestorationTask, get_task

MASK = "mask"  # the side input `enhance.mask` feeds (inpainting's)


def takes_mask(task: str) -> bool:
    """Whether models of `task` take a mask (a side input named `MASK`)."""
    return MASK in get_task(task).side_inputs


def model_task(cfg: Config) -> RestorationTask:
    """The task of `enhance.model` (from its checkpoint's metadata, read once per file)."""
    from diffenhance.enhance.models import model_file

    f = model_file(cfg.enhance.model)
    return get_task(_checkpoint_task(str(f), f.stat().st_mtime_ns))


@functools.lru_cache(maxsize=16)
def _checkpoint_task(path: str, mtime_ns: int) -> str:
    from diffenhance.model import validate_checkpoint

    return validate_checkpoint(path).task


def check_mask_setting(cfg: Config, task: str, single: bool) -> None:
    """Plan-time checks: an inpainting model needs `enhance.mask` and no other model takes
    one; a mask file goes with one input image, a folder with a folder. EnhanceError says
    what to do."""
    mask, model = cfg.enhance.mask, cfg.enhance.model
    needs = takes_mask(task)
    if needs and not mask:
        raise EnhanceError(
            f"{model} is an inpainting model: give the region to fill with --mask MASK.png "
            "(white = fill; for a folder of images, a folder of masks with the same relative paths)"
        )
    if not needs and mask:
        from diffenhance.registry import TASKS

        pick = " or ".join(f"-m {t}" for t in TASKS.names() if takes_mask(t))
        what = get_task(task).description or task
        raise EnhanceError(
            f"--mask needs an inpainting model ({pick}); {model} is a {what} model, which "
            "takes no mask"
        )
    if not mask:
        return
    p = Path(mask)
    if "://" in mask:
        raise EnhanceError(f"--mask {mask}: masks must be local files or folders, not URLs")
    if not p.exists():
        raise EnhanceError(f"--mask {mask}: no such file or folder")
    if single and not p.is_file():
        raise EnhanceError(f"--mask {mask}: one input image takes one mask file, not a folder")
    if not single and not p.is_dir():
        raise EnhanceError(
            f"--mask {mask}: a folder of inputs takes a folder of masks with the same "
            "relative paths, not one file"
        )


def check_single_mask(cfg: Config, image: Path) -> None:
    """One local input image and its mask file: the mask must be readable, not empty and of
    the image's size, before any work starts (EnhanceError naming the mask). An unreadable
    image is left to the job, which records it like any other."""
    try:
        w, h = read_image_info(image)["size"]
    except ImageReadError:
        return
    try:
        read_mask(str(cfg.enhance.mask), (h, w), max_pixels=cfg.enhance.max_pixels)
    except ImageReadError as e:
        raise EnhanceError(f"--mask {e} (image {image})") from None


def with_mask(
    cfg: Config, key: str, img: np.ndarray, mask_sha: str | None
) -> tuple[np.ndarray, dict[str, str]]:
    """The network input of image `key`: `img` itself without masks, else the input of the
    model's task (`model_task`) with the mask as its side input (`RestorationTask.join`) and
    {"mask_key", "mask_sha256"} for its record; `mask_sha` is `mask_sha256(cfg, key)`, already
    computed for the resume check (hashed once). ImageReadError naming the mask when it is
    missing, unreadable, empty or of another size."""
    if not cfg.enhance.mask:
        return img, {}
    p = mask_file(cfg, key)
    if p is None:
        looked = " or ".join(str(c) for c in mask_candidates(Path(cfg.enhance.mask), key))
        raise ImageReadError(key, f"no mask: {looked} does not exist")
    try:
        mask = read_mask(p, img.shape[:2], max_pixels=cfg.enhance.max_pixels)
    except ImageReadError as e:  # a folder job records e.reason under the image's key
        raise ImageReadError(key, f"mask {e}") from None
    lq = model_task(cfg).join(img, **{MASK: mask})
    return lq, {"mask_key": str(p), "mask_sha256": str(mask_sha)}


def mask_file(cfg: Config, key: str) -> Path | None:
    """The mask of input `key` (see the module docstring); None when it has none."""
    if not cfg.enhance.mask:
        return None
    root = Path(cfg.enhance.mask)
    if root.is_file():
        return root
    for cand in mask_candidates(root, key):
        if cand.is_file():
            return cand
    return None


def mask_candidates(root: Path, key: str) -> list[Path]:
    """Where the mask of input `key` may be under the mask folder `root`, in order."""
    return list(dict.fromkeys([root / key, (root / key).with_suffix(".png")]))


def mask_sha256(cfg: Config, key: str) -> str | None:
    """SHA-256 of input `key`'s mask file; None without masks or when it has none."""
    p = mask_file(cfg, key)
    return None if p is None else file_sha256(p)


def mask_fingerprint(cfg: Config, key: str) -> str:
    """'' without masks; else '|mask:<size>-<mtime_ns>' of the input's mask ('|mask:none')."""
    if not cfg.enhance.mask:
        return ""
    p = mask_file(cfg, key)
    if p is None:
        return "|mask:none"
    st = p.stat()
    return f"|mask:{st.st_size}-{st.st_mtime_ns}"
