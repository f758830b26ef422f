"""The config of one enhancement run from a front end's settings.

`diffenhance enhance` (its arguments) and `diffenhance ui` (its form) both call
`enhance_config`, so the same values give the same Config, the same checks and the same
messages: the settings are merged into the params and validated again as a params file is
(types, ranges, unknown keys), then the device is checked.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from typing import Any

from diffenhance.config import Config, ConfigError, config_from_dict


def enhance_config(
    cfg: Config,
    settings: Mapping[str, Any],
    infer: Mapping[str, Any] | None = None,
    *,
    names: Mapping[str, str] | None = None,
) -> Config:
    """`cfg` with `settings` as enhance.* and `infer` as infer.* values; a None value means
    "not given" (the params' value stays).

    Raises ConfigError naming the key and what is allowed: a wrong type or range (steps or
    samples < 1, a tile not above an infer.tile_overlap given with it), a key this version
    does not have (e.g. enhance.mask where inpainting is absent), or a device that is not
    there. `names`: how the front end calls a key ({"infer.detail": "--detail"}); a value
    given under such a name that a rule refuses is named as given, in one short line:
    "--detail 1.5: must be in [0, 1]".
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
    names = {k: n for k, n in (names or {}).items() if k in given}
    said = ", ".join(f"{k}={v!r}" for k, v in given.items())
    try:
        new = config_from_dict(raw, source=f"the params with {said}")
    except ConfigError as e:
        if e.key not in names or e.why is None:
            raise
        raise ConfigError(f"{names[e.key]} {_typed(given[e.key])}: {_allowed(e.why)}") from None
    resolve_device(new.infer.device, names.get("infer.device", "infer.device"))  # CUDA absent
    return new


def _typed(value: Any) -> str:
    """A value as it is typed on a command line: 1.5, 0, a/b, 'a b'."""
    return f"{value:g}" if isinstance(value, float) else shlex.quote(str(value))


def _allowed(why: str) -> str:
    """What a rule allows (`ConfigError.why`), said of a value given as a front end's setting:
    without the value (named before it) and without what null means (a setting left out keeps
    the params' value; it cannot be given as null)."""
    why = re.sub(r"""^= (?:'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|\S+) """, "", why)
    return re.sub(r" \((?:or null|null: [^)]*)\)", "", why)
