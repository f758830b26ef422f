"""Training loop of the conditional diffusion restorer (the `train` stage).

AdamW with linear warm-up then cosine decay, gradient clipping and accumulation, EMA, bf16
autocast on CUDA (fp32 on CPU), channels_last, optional torch.compile, DDP under torchrun.
Training pairs are synthesised on the fly (`SynthPairs`) with the same `degrade.py` functions
as the validation pairs, each sample seeded by its global index, so data is identical whatever
the number of DataLoader workers and whether or not the run was resumed.

Outputs in `<train.out_dir>/<task>/`: `model.safetensors` (EMA weights, config embedded),
`raw.safetensors`, `state/<digest>/state-<step>.pt` (exact-resume state, last `keep_last`, one
folder per `resume_digest`: states of other params are kept, never deleted), `train_log.csv`,
`samples/step-<step>.png`, `params.resolved.yaml`.

Multi-GPU: `torchrun --nproc_per_node=N -m diffenhance.train [section.key=value ...]`.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
import pickle
import re
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from types import EllipsisType
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, Sampler

from diffenhance.config import Config, ConfigError, load_config, unrecorded, write_resolved
from diffenhance.data.folder import file_sha256
from diffenhance.data.pairs import load_pairs, pairs_csv, task_degradation
from diffenhance.data.prepare import MANIFEST, load_manifest
from diffenhance.degrade import pair_seed
from diffenhance.diffusion import formulation_loss, to_model_range
from diffenhance.diffusion.formulations import get_formulation
from diffenhance.infer import resolve_device
from diffenhance.io import atomic_path, read_image, write_image
from diffenhance.model import (
    WEIGHTS_NAME,
    Restorer,
    build_restorer,
    checkpoint_metadata,
    load_matching,
    pretrained_model,
    read_checkpoint,
    save_weights,
    shape_mismatches,
    training_record,
    validate_checkpoint,
)
from diffenhance.restoration import RestorationTask, get_task, image_of
from diffenhance.restore import restore, sampling_spec

LOG = logging.getLogger("diffenhance.train")


class TrainingDiverged(ConfigError):
    """The loss became NaN or infinite: a user error (exit 2, one `error:` line) whose message
    says which train.* values to change."""


# ----------------------------------------------------------------------------- data


class SynthPairs(Dataset):
    """Index k -> (hr [3,H,W], lq [3,H/s,W/s]) float32 in [0,1], synthesised from seed and k.

    A random HR training crop of `crop` pixels, a random flip/rotation, then the task's
    degradation, all drawn from `np.random.default_rng(pair_seed(seed, "train", task, k))`.
    """

    def __init__(
        self, files: list[Path], task: str | RestorationTask, crop: int, cfg: Config, seed: int
    ):
        if not files:
            raise ValueError("no training images: the manifest has no split == 'train' crops")
        self.files, self.crop, self.cfg, self.seed = files, crop, cfg, seed
        self.task = get_task(task)

    def __len__(self) -> int:
        return 2**62

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng(pair_seed(self.seed, "train", self.task.name, int(k)))
        img = read_image(self.files[int(rng.integers(len(self.files)))])
        h, w = img.shape[:2]
        c = min(self.crop, h, w)
        top, left = int(rng.integers(h - c + 1)), int(rng.integers(w - c + 1))
        hr = img[top : top + c, left : left + c]
        if c < self.crop:  # small source: reflect-pad up to the crop size
            pad = self.crop - c
            hr = np.pad(hr, ((0, pad), (0, pad), (0, 0)), mode="reflect")
        hr = np.rot90(hr, int(rng.integers(4)))
        if rng.random() < 0.5:
            hr = hr[:, ::-1]
        hr = np.ascontiguousarray(hr, dtype=np.float32)
        lq = self.task.degrade(hr, rng, self.cfg.degrade, validation=False)
        to_t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)  # noqa: E731
        return to_t(hr), to_t(lq)


class IndexSampler(Sampler[int]):
    """Global sample indices for one rank, from micro-batch `start` on, forever.

    Micro-batch m of rank r holds indices (m * world + r) * B + j, j < B: disjoint across
    ranks, and a resumed run continues exactly where the interrupted one stopped.
    """

    def __init__(self, batch: int, start: int, rank: int = 0, world: int = 1):
        self.batch, self.start, self.rank, self.world = batch, start, rank, world

    def __iter__(self) -> Iterator[int]:
        m = self.start
        while True:
            base = (m * self.world + self.rank) * self.batch
            yield from range(base, base + self.batch)
            m += 1

    def __len__(self) -> int:  # pragma: no cover - infinite
        return 2**62


def _train_rows(cfg: Config) -> pd.DataFrame:
    """The manifest's split == 'train' rows, sorted by crop_path; FileNotFoundError (a stage's
    missing input) when there are none."""
    df = load_manifest(Path(cfg.data.prepared_dir))
    rows = df.loc[df["split"] == "train"]
    if rows.empty:
        raise FileNotFoundError(
            f"{Path(cfg.data.prepared_dir) / MANIFEST}: no training crops (no row with split "
            f"'train'); give the `prepare` stage more images of at least data.min_size="
            f"{cfg.data.min_size} px, or a lower data.val_fraction, and run it again"
        )
    return rows.sort_values("crop_path")


def train_files(cfg: Config) -> list[Path]:
    """The training crops, in a fixed order (SynthPairs picks among them by index)."""
    return [Path(cfg.data.prepared_dir) / p for p in _train_rows(cfg)["crop_path"]]


# ----------------------------------------------------------------------------- helpers


def lr_at(step: int, cfg: Config) -> float:
    """Linear warm-up over `warmup_steps`, then cosine decay to 10% of `lr` at `steps`."""
    t = cfg.train
    if step < t.warmup_steps:
        return t.lr * (step + 1) / t.warmup_steps
    progress = (step - t.warmup_steps) / max(1, t.steps - t.warmup_steps)
    return t.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def ema_decay_at(step: int, decay: float, warmup_steps: int) -> float:
    """The EMA decay used after optimizer step `step` (see `ema_update`)."""
    return min(decay * min(1.0, step / max(1, warmup_steps)), (1.0 + step) / (10.0 + step))


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, step: int, cfg: Config) -> None:
    """EMA with warm-up: decay ramps linearly from 0 to `ema_decay` over `ema_warmup_steps`, and
    is at most (1 + step) / (10 + step), so the average never spans much more than the steps run
    so far (0.97 at step 300, 0.998 at 5000). With a fixed 0.999 the 300-step main job's EMA was
    mostly the early weights: sr4 4-step PSNR-Y on its validation pairs 27.2 dB; capped 30.6;
    fixed 0.99 31.1; no EMA 30.8 (benchmarks/RESULTS.md)."""
    decay = ema_decay_at(step, cfg.train.ema_decay, cfg.train.ema_warmup_steps)
    for e, p in zip(ema.parameters(), model.parameters(), strict=True):
        e.lerp_(p.detach(), 1.0 - decay)
    for e, b in zip(ema.buffers(), model.buffers(), strict=True):
        e.copy_(b)


# train.* values that do not change the trained weights: where outputs go, how often they are
# written or validated, how the work is spread. The task list: each task has its own digest.
_NOT_IN_DIGEST = (
    "out_dir", "val_every", "val_images", "val_steps", "ckpt_every", "keep_last", "log_every",
    "num_workers", "device", "compile", "tasks",
)  # fmt: skip


PRETRAINED = "pretrained"  # train.init_from: the shipped model of the task, when it fits


def init_checkpoint(cfg: Config, task: str) -> Path | None:
    """The checkpoint `task` starts from: `train.init_from` (a model dir or file), None (from
    scratch), or for 'pretrained' the shipped models/pretrained/<task> when it has exactly the
    network and diffusion settings of params (model.*, diffusion.*) - else None, from scratch.
    """
    init = cfg.train.init_from
    if init is None:
        return None
    if init != PRETRAINED:
        path = Path(init) / WEIGHTS_NAME if Path(init).is_dir() else Path(init)
        _refuse_own_output(path, cfg, task)
        return path
    shipped = pretrained_model(task)
    if shipped is None:
        LOG.info("train.init_from=pretrained: no shipped %s model; training from scratch", task)
        return None
    spec = validate_checkpoint(shipped)
    if (spec.model_cfg, spec.diffusion_cfg) != (cfg.model, cfg.diffusion) or spec.task != task:
        LOG.info(
            "train.init_from=pretrained: %s has other model/diffusion settings than params; "
            "training from scratch (set train.init_from to a path to force it)", shipped
        )  # fmt: skip
        return None
    _refuse_own_output(spec.path, cfg, task)
    return spec.path


def _refuse_own_output(init: Path, cfg: Config, task: str) -> None:
    """ConfigError if the start checkpoint `init` is inside <train.out_dir>/<task>/, which the
    run's first save overwrites (and `dvc repro` empties before the run)."""
    own = Path(cfg.train.out_dir) / task
    if init.resolve().is_relative_to(own.resolve()):
        raise ConfigError(
            f"train.init_from={cfg.train.init_from!r}: {init} is inside this run's own output "
            f"folder {own}/, which training overwrites (model.safetensors at the first save; "
            f"dvc repro removes it before the run); copy the checkpoint elsewhere (e.g. "
            f"models/start/{task}) and set train.init_from to the copy"
        )


@unrecorded()  # decides whether to resume; a resumed run ends with the same weights
def resume_params(cfg: Config, task: str, init: Path | None | EllipsisType = ...) -> dict[str, Any]:
    """What the trained weights depend on, and the validation set the log's rows score, and
    nothing about where files are written.

    The training crops by content (manifest path + sha256, not the folder they are in), the
    task's own degradation settings (its `degrade_keys`: another task's range can change and
    the run still resumes), its validation pairs (pairs.csv's sha256: names, seeds, sizes,
    sources), model, diffusion and the train.* values that change
    the result; `train.init_from` by the sha256 of the checkpoint file, not its path. Of
    `diffusion.options`, only the sections the formulation reads (`option_sections`): a
    change to another formulation's options leaves this run's states resumable. `init`: the
    start checkpoint when the caller has looked it up already (`init_checkpoint`, which logs).
    """
    d = cfg.to_dict()
    used = get_formulation(cfg.diffusion.formulation).option_sections(cfg.diffusion)
    diffusion = d["diffusion"]
    diffusion["options"] = {k: v for k, v in diffusion["options"].items() if k in used}
    prepared = Path(cfg.data.prepared_dir)
    rows = _train_rows(cfg)
    crops = [
        [p, s if isinstance(s, str) and s else file_sha256(prepared / p)]
        for p, s in zip(rows["crop_path"], rows.get("crop_sha256", [None] * len(rows)), strict=True)
    ]
    train = {k: v for k, v in d["train"].items() if k not in _NOT_IN_DIGEST}
    train.pop("init_from")
    if init is ...:
        init = init_checkpoint(cfg, task)
    if init is not None:
        train["init_from_sha256"] = file_sha256(init)
    blob = json.dumps(crops).encode()
    return {
        "task": task,
        "train_crops_sha256": hashlib.sha256(blob).hexdigest(),
        "degrade": {k: d["degrade"][k] for k in get_task(task).degrade_keys},
        "val_pairs_sha256": file_sha256(pairs_csv(Path(cfg.degrade.out_dir) / task)),
        "model": d["model"],
        "diffusion": diffusion,
        "train": train,
    }


def resume_digest(params: dict[str, Any]) -> str:
    """Short hash of a `resume_params` dict: a state is resumed only by a run with the same
    digest (free of output paths)."""
    blob = json.dumps(params, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


_STATE_NAME = re.compile(r"state-(\d+)\.pt")


def _states(state_dir: Path) -> list[Path]:
    """state-<step>.pt files in `state_dir`, oldest step first."""
    found = [
        (int(m[1]), p) for p in state_dir.glob("state-*.pt") if (m := _STATE_NAME.fullmatch(p.name))
    ]
    return [p for _, p in sorted(found)]


def _step_of(path: Path) -> int:
    return int(_STATE_NAME.fullmatch(path.name)[1])


def save_state(state_dir: Path, step: int, payload: dict, keep_last: int) -> Path:
    """Atomically write state-<step>.pt, then delete all but the newest `keep_last` up to `step`.

    States of later steps (unreadable ones skipped on resume) are left to be overwritten.
    """
    path = state_dir / f"state-{step:08d}.pt"
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    for old in [p for p in _states(state_dir) if _step_of(p) <= step][:-keep_last]:
        old.unlink(missing_ok=True)
    return path


def _load_state(path: Path) -> dict:
    """One state file, loaded weights-only; ValueError saying why it cannot be used."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's message suggests retrying with weights_only=False, which can run any code in
        # the file: never done here. A pickled object names a global; garbled bytes do not.
        if found := re.search(r"GLOBAL (\S+)", str(e)):
            raise ValueError(
                f"{path} is not a safe-loadable training state: it holds a pickled Python object "
                f"({found[1]}), and only tensors and plain values are ever loaded"
            ) from None
        raise ValueError(
            f"{path} is unreadable (damaged or truncated: not a valid pickle)"
        ) from None
    except Exception as e:  # truncated or garbled: OSError, RuntimeError, EOFError, ...
        first = str(e).splitlines()[0][:200] if str(e) else ""
        detail = type(e).__name__ + (f": {first}" if first and "weights_only" not in first else "")
        raise ValueError(f"{path} is unreadable (damaged or truncated: {detail})") from None
    if not isinstance(state, dict) or not {"step", "digest", "model"} <= state.keys():
        raise ValueError(f"{path} is not a training state of this project (missing keys)")
    return state


def _copy_atomic(src: Path, dst: Path) -> None:
    """Copy `src` to `dst` through `io.atomic_path` (which creates the folder)."""
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def _misfits(state: dict, shapes: dict[str, tuple[int, ...]]) -> list[str]:
    """How a state's network and EMA weights differ from the network's tensor `shapes`."""
    problems = []
    for part in ("model", "ema"):
        tensors = state.get(part)
        if not isinstance(tensors, dict) or not all(
            isinstance(t, torch.Tensor) for t in tensors.values()
        ):
            problems.append(f"{part}: not a dict of tensors")
            continue
        got = {k: tuple(t.shape) for k, t in tensors.items()}
        problems += [f"{part} {p}" for p in shape_mismatches(shapes, got)]
    return problems


def load_latest_state(
    state_dir: Path, digest: str, shapes: dict[str, tuple[int, ...]] | None = None
) -> dict | None:
    """The newest usable state in `state_dir` saved with `digest` (weights-only loading), else
    None. An unreadable or unsafe file, or one whose weights do not fit the network's tensor
    `shapes` (when given), is skipped with a warning naming it, never deleted."""
    for path in reversed(_states(state_dir)):
        try:
            state = _load_state(path)
        except ValueError as e:
            LOG.warning("%s; falling back to the previous state", e)
            continue
        if state["digest"] != digest:
            LOG.warning(
                "%s was saved with other params (digest %s); skipping it", path, state["digest"]
            )
            continue
        if shapes is not None and (problems := _misfits(state, shapes)):
            LOG.warning(
                "%s: %d tensors do not fit the network (%s); falling back to the previous state",
                path, len(problems), "; ".join(problems[:4]),
            )  # fmt: skip
            continue
        return state
    return None


def _flat(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def param_differences(ours: dict, theirs: dict) -> list[str]:
    """'key: ours here, theirs there' for each differing entry of two `resume_params` dicts."""
    a, b = _flat(ours), _flat(theirs)
    return [f"{k}: {a.get(k)!r} here, {b.get(k)!r} there" for k in sorted(a.keys() | b.keys())
            if a.get(k) != b.get(k)]  # fmt: skip


def _log_kept_states(state_root: Path, digest: str, params: dict) -> None:
    """Say which training states of other params are kept under `state_root` (not used by this
    run), how they differ and how to resume from them."""
    if not state_root.is_dir():
        return
    for d in sorted(p for p in state_root.iterdir() if p.is_dir() and p.name != digest):
        states = _states(d)
        if not states:
            continue
        saved = d / "params.json"
        theirs = json.loads(saved.read_text()) if saved.is_file() else {}
        diff = "; ".join(param_differences(params, theirs)[:8]) if theirs else "see params.json"
        last = _step_of(states[-1])
        if last >= theirs.get("train", {}).get("steps", last + 1):
            how = "it is a finished run's; delete the folder to free the space"
        else:
            how = (f"to resume from it, restore the params it was saved with ({saved}); "
                   "delete the folder to free the space")  # fmt: skip
        LOG.warning(
            "%s: training state up to step %d, saved with other params (%s), is kept and not "
            "used; %s", d, last, diff, how,
        )  # fmt: skip
    if legacy := _states(state_root):
        LOG.warning(
            "%s: %d state files of an older diffenhance version (params unknown) are kept and "
            "not used; delete them to free the space", state_root, len(legacy),
        )  # fmt: skip


def _rng_states(device: torch.device) -> dict[str, torch.Tensor]:
    """The global torch RNG states training draws from (dropout): CPU, and CUDA if used."""
    states = {"torch_rng": torch.get_rng_state()}
    if device.type == "cuda":
        states["cuda_rng"] = torch.cuda.get_rng_state(device)
    return states


def _set_rng_states(states: dict, device: torch.device) -> None:
    torch.set_rng_state(states["torch_rng"])
    if device.type == "cuda" and "cuda_rng" in states:
        torch.cuda.set_rng_state(states["cuda_rng"], device)


@torch.no_grad()
def validate(r: Restorer, cfg: Config, out_dir: Path, step: int) -> dict[str, float]:
    """The restore path (as enhance runs it, at `train.val_steps` steps, 1 sample, seed
    `train.seed`) on the first `val_images` fixed pairs: mean PSNR/SSIM under the task's first
    (RGB) protocol, and a grid PNG."""
    pairs = load_pairs(Path(cfg.degrade.out_dir) / r.task, limit=cfg.train.val_images)
    spec = sampling_spec(r, cfg.infer, steps=cfg.train.val_steps, samples=1, seed=cfg.train.seed)
    outs, hrs, conds = [], [], []
    for p in pairs:
        outs.append(torch.from_numpy(restore(r, p.lq, spec)).permute(2, 0, 1)[None])
        hrs.append(torch.from_numpy(p.hr).permute(2, 0, 1)[None])
        lq = torch.from_numpy(p.lq).permute(2, 0, 1)[None].to(r.device)
        conds.append(((image_of(r.condition(lq), axis=1) + 1) / 2).cpu())  # no side inputs
    proto = r.restoration.protocols(cfg.degrade)[0]
    vp = [float(proto.psnr(o, h).clamp(max=100).mean()) for o, h in zip(outs, hrs, strict=True)]
    vs = [float(proto.ssim(o, h).mean()) for o, h in zip(outs, hrs, strict=True)]
    rows = [torch.cat([c[0], o[0], h[0]], dim=2) for c, o, h in zip(conds, outs, hrs, strict=True)]
    if rows and len({tuple(x.shape) for x in rows}) == 1:
        grid = torch.cat(rows, dim=1).permute(1, 2, 0).numpy()
        write_image(out_dir / "samples" / f"step-{step:08d}.png", grid)
    return {"val_psnr": float(np.mean(vp)), "val_ssim": float(np.mean(vs))}


# ----------------------------------------------------------------------------- the loop


def _device_for_rank(cfg: Config, world: int) -> torch.device:
    """Join the process group when run by torchrun (`world` > 1); this rank's device."""
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    device = resolve_device(cfg.train.device, "train.device")
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    return device


class TrainLoop:
    """One task's training run, split as guided-diffusion's `TrainLoop`.

    `__init__` sets up (device, network, optimizer, EMA, resume state, data), `run_loop` steps
    until done, `run_step` is one optimizer step (`forward_backward` per micro-batch, then
    `_update_ema`), `save` writes the resume state and the weights, and rank 0 reports with
    `validate` and `log`. The setup order is the order the global torch RNG is drawn in (weights
    init, then dropout): it is part of what makes training reproducible to the byte.
    """

    def __init__(self, cfg: Config, task: str):
        self.cfg, self.task, t = cfg, task, cfg.train
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.device = _device_for_rank(cfg, self.world)
        self.out_dir = Path(t.out_dir) / task
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.main = self.rank == 0
        if self.device.type == "cpu":
            torch.use_deterministic_algorithms(True, warn_only=True)
        self.init = init_checkpoint(cfg, task)  # once: it logs why it is None
        self.r = self._build_restorer()
        self._setup_optimisation()
        self.params = resume_params(cfg, task, self.init)
        self.digest = resume_digest(self.params)
        # one folder per params: others' are kept as they are
        self.state_dir = self.out_dir / "state" / self.digest
        self.log_csv = self.out_dir / "train_log.csv"
        # this params' log: train_log.csv may be another's
        self.own_log = self.state_dir / "train_log.csv"
        self.step, self.log_rows, self.lr = 0, [], float("nan")
        self._reset_meters()  # a resumed state's, when it has them
        self._resume()
        if self.main:
            self._write_run_files()
            self._restore_samples()
        self.net = self._wrap_network()
        self.batches = self._batches()
        self.autocast = torch.autocast(
            self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"
        )
        self.mf = torch.channels_last if t.channels_last else torch.contiguous_format

    # ---- setup

    def _build_restorer(self) -> Restorer:
        """The restorer, initialised from this task's seed (then fine-tuned from `init_from`)."""
        t, task = self.cfg.train, self.task
        torch.manual_seed(pair_seed(t.seed, "init", task))  # weights init and dropout
        r = build_restorer(self.cfg.model, self.cfg.diffusion, task, self.cfg.degrade)
        if t.crop_size % (
            r.scale * r.unet.size_multiple // math.gcd(r.scale, r.unet.size_multiple)
        ):
            raise ConfigError(
                f"train.crop_size={t.crop_size} must be a multiple of the task scale ({r.scale}) "
                f"and of the network's size multiple ({r.unet.size_multiple})"
            )
        init = self.init
        why = get_formulation(self.cfg.diffusion.formulation).scratch_problem(self.cfg.diffusion)
        if init is None and why is not None:
            raise ConfigError(f"{task}: no checkpoint to start from (train.init_from="
                             f"{t.init_from}, see the log) but {why}")  # fmt: skip
        if init is not None:
            tensors, meta = read_checkpoint(init)
            if "recommended" in meta:  # measured on the weights it starts from: keep it
                r.meta["recommended"] = meta["recommended"]
            # the runs behind the start weights: a report says "300 steps from ..." with them
            r.meta["init_from"] = json.dumps(training_record(init, meta), sort_keys=True)
            tensors = get_formulation(self.cfg.diffusion.formulation).init_tensors(
                r.unet, tensors, meta
            )
            skipped = load_matching(
                r.unet, tensors, strict=t.init_strict, source=str(init),
                advice="Set train.init_strict=false to load only the tensors that match.",
            )  # fmt: skip
            if self.main:
                LOG.info("fine-tuning from %s", init)
            if self.main and skipped:
                LOG.warning("init_from %s: %d tensors not loaded: %s", init, len(skipped),
                            skipped[:8])  # fmt: skip
        return r

    def _setup_optimisation(self) -> None:
        """The network on the device, its EMA copy, AdamW and this rank's noise generator."""
        t = self.cfg.train
        model = self.r.unet.to(self.device)
        if t.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.r.schedule = self.r.schedule.to(self.device)
        self.ema = copy.deepcopy(model).eval().requires_grad_(False)
        self.opt = torch.optim.AdamW(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
        self.gen = torch.Generator().manual_seed(pair_seed(t.seed, "noise", self.task, self.rank))

    def _resume(self) -> None:
        """Continue from the newest usable state of these params, if any: weights, EMA,
        optimizer, RNGs, step and log rows."""
        shapes = {k: tuple(t.shape) for k, t in self.model.state_dict().items()}
        state = load_latest_state(self.state_dir, self.digest, shapes)
        if state is not None and int(state["step"]) >= self.cfg.train.steps:
            # A finished run is not resumed: running the stage again (dvc repro --force) retrains,
            # deterministically, and rewrites every output DVC removed before the run. Its states
            # (same params) go, so that a crash of the retraining resumes the retraining.
            LOG.info("%s: the saved state is a finished run; training again from step 0", self.task)
            state = None
            if self.main:
                for done in _states(self.state_dir):
                    done.unlink()
        if state is None and self.main:
            _log_kept_states(self.out_dir / "state", self.digest, self.params)
        if state is not None:
            self.model.load_state_dict(state["model"])
            self.ema.load_state_dict(state["ema"])
            self.opt.load_state_dict(state["opt"])
            self.gen.set_state(state["gen"][self.rank] if self.world > 1 else state["gen"][0])
            _set_rng_states(state, self.device)
            self.step = int(state["step"])
            if "meters" in state:  # older states have none: the row after them starts afresh
                self._set_meters(state["meters"])
            if self.main:
                LOG.info("%s: resuming from step %d (%s)", self.task, self.step, self.state_dir)
        step = self.step
        if step and self.own_log.is_file():
            self.log_rows = pd.read_csv(self.own_log).query("step <= @step").to_dict("records")

    def _write_run_files(self) -> None:
        """params.resolved.yaml, and the state folder with the params.json it was saved with."""
        write_resolved(self.cfg, self.out_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.state_dir / "params.json") as tmp:  # what to restore to resume it
            tmp.write_text(json.dumps(self.params, indent=1, sort_keys=True) + "\n")

    def _restore_samples(self) -> None:
        """samples/ holds this run's grids up to its step, and no other run's: the copies kept
        in the state folder come back (DVC removes samples/ before the stage runs, so a resumed
        run lost the grids before its crash), and grids of another params' run, or of later
        steps, go."""
        out, kept = self.out_dir / "samples", self.state_dir / "samples"
        for f in sorted(out.glob("step-*.png")) if out.is_dir() else []:
            f.unlink()
        for f in sorted(kept.glob("step-*.png")) if kept.is_dir() else []:
            if int(f.stem.removeprefix("step-")) <= self.step:
                _copy_atomic(f, out / f.name)

    def _wrap_network(self) -> torch.nn.Module:
        """The network as trained: DDP-wrapped under torchrun, compiled if `train.compile`."""
        net = self.model
        if self.world > 1:
            net = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        if self.cfg.train.compile:
            net = torch.compile(net)
        return net

    def _batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This rank's (hr, lq) micro-batches, from the one after the resumed step on."""
        t = self.cfg.train
        data = SynthPairs(train_files(self.cfg), self.task, t.crop_size, self.cfg, t.seed)
        loader = DataLoader(
            data,
            batch_size=t.batch_size,
            sampler=IndexSampler(t.batch_size, self.step * t.accum_steps, self.rank, self.world),
            num_workers=t.num_workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=t.num_workers > 0,
            # Its own generator: iter() draws a base seed, which from the global RNG would put a
            # resumed run's dropout one draw ahead of an uninterrupted one.
            generator=torch.Generator().manual_seed(
                pair_seed(t.seed, "loader", self.task, self.rank)
            ),
        )
        return iter(loader)

    # ---- the loop

    def run_loop(self, stop_after: int | None = None) -> Path:
        """Train up to `train.steps` (or `stop_after`) steps; returns the output directory."""
        from tqdm import tqdm

        t = self.cfg.train
        self.bar = tqdm(
            total=t.steps, initial=self.step, desc=f"train {self.task}", disable=not self.main,
            mininterval=2,
        )  # fmt: skip
        self.t0 = time.perf_counter()  # the clock starts; the counts may be a resumed state's
        end = t.steps if stop_after is None else min(t.steps, stop_after)
        while self.step < end:
            self.run_step()
            self.bar.update(1)
            if self.main:  # first: a state of step N is saved only with log row N written
                self._report()
            if self.step % t.ckpt_every == 0 or self.step == t.steps:
                self.save()
        self.bar.close()
        if self.world > 1:
            dist.barrier()
        return self.out_dir

    def run_step(self) -> None:
        """One optimizer step: the lr of the schedule, `accum_steps` micro-batches, gradient
        clipping, AdamW, then the EMA."""
        t = self.cfg.train
        self.lr = lr_at(self.step, self.cfg)
        for group in self.opt.param_groups:
            group["lr"] = self.lr
        for _ in range(t.accum_steps):
            hr, lq = next(self.batches)
            self.forward_backward(hr, lq)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.grad_clip)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.step += 1
        self._update_ema()

    def forward_backward(self, hr: torch.Tensor, lq: torch.Tensor) -> None:
        """The formulation's loss on one micro-batch (hr [B,3,H,W], lq [B,3,H/s,W/s] float32 in
        [0, 1]), back-propagated scaled by 1/`accum_steps`; TrainingDiverged if not finite."""
        t, r, mf = self.cfg.train, self.r, self.mf
        x0 = to_model_range(hr.to(self.device, non_blocking=True)).contiguous(memory_format=mf)
        cond = r.condition(lq.to(self.device, non_blocking=True)).contiguous(memory_format=mf)
        with self.autocast:
            loss, _ = formulation_loss(
                self.cfg.diffusion, self.net, r.schedule, x0, cond, generator=self.gen
            )  # fmt: skip
        value = float(loss.detach())
        if not math.isfinite(value):
            raise TrainingDiverged(
                f"{self.task}: loss is {value} at step {self.step + 1} (lr {self.lr:.3g}); lower "
                f"train.lr, raise train.warmup_steps or check the data; last good state in "
                f"{self.out_dir / 'state'}"
            )
        (loss / t.accum_steps).backward()
        self.acc_loss += value
        self.acc_n += 1
        self.images += hr.shape[0] * self.world

    def _update_ema(self) -> None:
        """Move the EMA weights towards the ones after this step (`ema_update`)."""
        ema_update(self.ema, self.model, self.step, self.cfg)

    def save(self) -> None:
        """Save the resume state and the weights (rank 0 writes; all ranks share their RNG)."""
        gens = [self.gen.get_state()]
        if self.world > 1:  # every rank's noise generator, so a resumed DDP run is exact too
            gathered = [None] * self.world
            dist.all_gather_object(gathered, self.gen.get_state())
            gens = gathered
        if not self.main:
            return
        payload = {
            "step": self.step,
            "digest": self.digest,
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "opt": self.opt.state_dict(),
            "gen": gens,
            "meters": self._meters(),  # the log row in progress: a resumed run writes the same
            **_rng_states(next(self.model.parameters()).device),
        }
        save_state(self.state_dir, self.step, payload, self.cfg.train.keep_last)
        kept = {k: self.r.meta[k] for k in ("recommended", "init_from") if k in self.r.meta}
        # no resume digest here: it covers the validation pairs too, which do not change the
        # weights, so their bytes would (the state folder is named by it instead)
        meta = checkpoint_metadata(self.r, step=self.step, **kept)
        save_weights(self.out_dir / WEIGHTS_NAME, self.ema.state_dict(), meta)
        save_weights(self.out_dir / "raw.safetensors", self.model.state_dict(), meta)

    # ---- reporting (rank 0)

    def _reset_meters(self) -> None:
        """Zero the loss, image and training-time sums of the next log row."""
        self._set_meters({"loss": 0.0, "n": 0, "images": 0, "seconds": 0.0})

    def _meters(self) -> dict[str, float | int]:
        """The sums of the log row in progress, as a state saves them."""
        seconds = self.timed_s + time.perf_counter() - self.t0
        return {"loss": self.acc_loss, "n": self.acc_n, "images": self.images, "seconds": seconds}

    def _set_meters(self, m: dict[str, float | int]) -> None:
        self.acc_loss, self.acc_n, self.images = float(m["loss"]), int(m["n"]), int(m["images"])
        self.timed_s, self.t0 = float(m["seconds"]), time.perf_counter()

    def _report(self) -> None:
        """A log row every `log_every` steps, with validation every `val_every` and at the end.
        The next row's meters start after the validation: its time is not training time."""
        t, step = self.cfg.train, self.step
        validating = step % t.val_every == 0 or step == t.steps
        if step % t.log_every == 0 or validating:
            row = self._log_row()
            if validating:
                row.update(self.validate())
            self.log(row)
            self._reset_meters()

    def _log_row(self) -> dict[str, float]:
        """The mean loss, lr and throughput since the last row (validation columns NaN)."""
        elapsed = self._meters()["seconds"]
        row = {
            "step": self.step,
            "loss": self.acc_loss / max(1, self.acc_n),
            "lr": self.lr,
            "images_per_s": self.images / elapsed if elapsed > 0 else float("nan"),
            "val_psnr": float("nan"),
            "val_ssim": float("nan"),
        }
        self.bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{self.lr:.2e}")
        return row

    def validate(self) -> dict[str, float]:
        """The module's `validate` on the EMA weights; it must not move the training RNG (exact
        resume), so the RNG states are saved before and restored after."""
        rng = _rng_states(self.device)
        # the module-level `validate` (a method's body does not see the class's names)
        metrics = validate(replace(self.r, unet=self.ema), self.cfg, self.out_dir, self.step)
        _set_rng_states(rng, self.device)
        grid = self.out_dir / "samples" / f"step-{self.step:08d}.png"
        if self.main and grid.is_file():  # kept with the state: `_restore_samples`
            _copy_atomic(grid, self.state_dir / "samples" / grid.name)
        LOG.info(
            "%s step %d: val PSNR %.2f dB SSIM %.4f",
            self.task, self.step, metrics["val_psnr"], metrics["val_ssim"],
        )  # fmt: skip
        return metrics

    def log(self, row: dict[str, float]) -> None:
        """Append `row` to train_log.csv and to this params' own copy in the state folder."""
        self.log_rows.append(row)
        for path in (self.log_csv, self.own_log):
            with atomic_path(path) as tmp:
                pd.DataFrame(self.log_rows).to_csv(tmp, index=False)


def check_inputs(cfg: Config, task: str) -> Config:
    """The `train` stage's inputs for `task`, before any step: training crops (`prepare`), the
    validation pairs (`degrade`) that validation reads every `val_every` steps and at the
    end, and the task's degradation recorded beside them; returns `cfg` with that degradation
    (`task_degradation`). Without this a run before `degrade` trained until its first
    validation and failed."""
    _train_rows(cfg)
    pairs_csv(Path(cfg.degrade.out_dir) / task)
    return task_degradation(cfg, task)


def train_model(cfg: Config, task: str, *, stop_after: int | None = None) -> Path:
    """Train (or resume training) the model for `task`; returns the output directory.

    `stop_after` ends the run after that many total steps, as a crash would (used by tests).
    """
    return TrainLoop(check_inputs(cfg, task), task).run_loop(stop_after)


def main(argv: list[str] | None = None) -> int:
    """`python -m diffenhance.train` / `torchrun ... -m diffenhance.train` entry point."""
    import argparse

    p = argparse.ArgumentParser(description="Train the restorer for each task in train.tasks.")
    p.add_argument("--params", default="params.yaml")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    cfg = load_config(args.params, args.overrides)
    for task in cfg.train.tasks:  # every task's inputs before the first trains for hours
        check_inputs(cfg, task)
    for task in cfg.train.tasks:
        train_model(cfg, task)
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
