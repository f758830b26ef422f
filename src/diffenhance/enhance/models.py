"""Which model a job runs: default-model resolution (the shipped models), the weights' sha256,
and the per-process cache of loaded restorers (a worker loads each model once)."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any

from diffenhance.enhance.job import EnhanceError
from diffenhance.io import file_sha256
from diffenhance.model import PRETRAINED_DIRS, pretrained_model  # noqa: F401 - re-exported

log = logging.getLogger(__name__)

_HASH_CACHE: dict[tuple[str, int, int], str] = {}
_MODELS: dict[tuple[str, str, str], Any] = {}
_MODELS_LOCK = threading.Lock()
MODEL_LOADS = {"count": 0}  # loads in this process (a worker loads each model once)


def model_file(path: str | os.PathLike) -> Path:
    """The weights file of a model dir or file; EnhanceError when there is none.

    Default-model resolution: a bare task name (`sr4`, `denoise`, ...) or the `train` stage's
    `models/<task>` (enhance.model's default) without a trained checkpoint resolves to the
    shipped model `models/pretrained/<task>`, so enhancement works before any training.
    """
    from diffenhance.model import WEIGHTS_NAME, weights_path
    from diffenhance.restoration import task_names

    p = Path(path)
    f = weights_path(p)
    if not f.is_file() and p.name in task_names() and p.parent in (Path("."), Path("models")):
        shipped = pretrained_model(p.name)
        if shipped is not None:
            log.info("%s has no trained model: using the shipped %s", p, shipped)
            f = weights_path(shipped)
    if not f.is_file():
        shipped = [t for t in task_names() if pretrained_model(t) is not None]
        raise EnhanceError(
            f"{p}: no model here (expected a model dir with {WEIGHTS_NAME} or a .safetensors "
            "file); train one (`dvc repro`) or set enhance.model / --model, e.g. a shipped "
            f"one: {', '.join(shipped)}"
        )
    return f.resolve()


def model_sha256(path: str | os.PathLike) -> str:
    """sha256 of the weights file (cached by path, size and mtime)."""
    f = model_file(path)
    st = f.stat()
    k = (str(f), st.st_size, st.st_mtime_ns)
    if k not in _HASH_CACHE:
        _HASH_CACHE[k] = file_sha256(f)
    return _HASH_CACHE[k]


def cached_restorer(path: str, sha256: str, device: Any) -> Any:
    """The Restorer of `path` on `device`, loaded once per process (keyed by path + sha256).

    Raises EnhanceError when the file here does not have the sha256 the job was planned with
    (a worker with other weights under the same path)."""
    from diffenhance.model import load_restorer

    key = (str(path), sha256, str(device))
    with _MODELS_LOCK:
        r = _MODELS.get(key)
        if r is None:
            got = model_sha256(path)
            if got != sha256:
                raise EnhanceError(
                    f"{path}: sha256 {got[:12]} on this worker, but the job was planned with "
                    f"{sha256[:12]}; give every worker the same model file"
                )
            r = _MODELS[key] = load_restorer(path, device)
            MODEL_LOADS["count"] += 1
        return r
