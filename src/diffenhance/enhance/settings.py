"""The config of one enhancement run from a front end's settings.

`diffenhance enhance` (its arguments) and `diffenhance ui` (its form) both call
`enhance_config`, so the same values give the same Config, the same checks and the same
messages: the settings are merged into the params and validated again as a params file is
(types, ranges, unknown keys), then the device is checked.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from diffenhance.config import Config, config_from_dict


def enhance_config(
    cfg: Config, settings: Mapping[str, Any], infer: Mapping[str, Any] | None = None
) -> Config:
    """`cfg` with `settings` as enhance.* and `infer` as infer.* values; a None value means
    "not given" (the params' value stays).

    Raises ConfigError naming the key and what is allowed: a wrong type or range (steps or
    samples < 1, a tile not above an infer.tile_overlap given with it), a key this version
    does not have (e.g. enhance.mask where inpainting is absent), or a device that is not
    there.
    """
    from diffenhance.infer import resolve_device

    raw = cfg.to_dict()
    given = {
        f"{section}.{k}": v
        for section, values in (("enhance", settings), ("infer", infer or {}))
        for k, v in values.items()
        if v is not None
    }
    for key, v in given.items():
        section, k = key.split(".")
        raw[section][k] = v
    # a tile given alone keeps the params' overlap while it fits, else a quarter of the tile
    # (the defaults' ratio), so `--tile 16` works beside the default overlap of 16
    tile, overlap = given.get("infer.tile"), raw["infer"]["tile_overlap"]
    if "infer.tile_overlap" not in given and isinstance(tile, int) and overlap >= tile >= 4:
        raw["infer"]["tile_overlap"] = tile // 4
    said = ", ".join(f"{k}={v!r}" for k, v in given.items())
    new = config_from_dict(raw, source=f"the params with {said}")
    resolve_device(new.infer.device)  # ConfigError: CUDA asked for but absent
    return new
