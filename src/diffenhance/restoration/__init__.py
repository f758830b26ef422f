"""Restoration tasks: what is restored, one registered object each.

The registry (`base.py`) maps a task name (params' `degrade.tasks`, `train.tasks`,
`compare.task`, a checkpoint's metadata, the CLI's --task) to a `RestorationTask`; the
built-ins, in this order, are

* ``sr2``, ``sr4`` (`sr.py`) - super-resolution x2 / x4 from a bicubic downscale;
* ``denoise`` (`denoise.py`) - colour Gaussian noise;
* ``jpeg`` (`jpeg.py`) - JPEG compression artifacts;
* ``blind`` (`blind.py`) - Real-ESRGAN-like second-order degradation;
* ``inpaint`` (`inpaint.py`) - fill a masked region; the mask is its named side input.

Each owns its scale, side inputs, degradation synthesis, baselines, scoring protocol and
validation settings (see `base.py`); the rest of the code is handed the object by `get_task`
and never compares a task's name. Adding a task is one file that registers a class.
"""

from __future__ import annotations

# importing the built-in tasks registers them, in this order (task_names(), the UI's list)
# isort: off
from diffenhance.restoration import sr, denoise, jpeg, blind, inpaint  # noqa: F401

# isort: on
from diffenhance.restoration.base import (
    IMAGE_CHANNELS,
    Baseline,
    RestorationTask,
    get_task,
    image_of,
    register,
    task_names,
    unregister,
)

__all__ = [
    "IMAGE_CHANNELS",
    "Baseline",
    "RestorationTask",
    "get_task",
    "image_of",
    "register",
    "task_names",
    "unregister",
]
