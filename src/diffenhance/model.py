"""A `Restorer` is what a checkpoint describes: network + noise schedule + formulation + task.

Checkpoints are safetensors files whose metadata embeds the resolved model and diffusion
config, the task and the training step, so a checkpoint loads without params.yaml. Loading
never unpickles: safetensors for weights, `torch.load(weights_only=True)` for training state.
`validate_checkpoint` checks a file from its header alone (metadata, tensor shapes, network
size) so that a bad model fails in one line before any work; `load_restorer` runs it first.

    r = load_restorer("models/sr4")          # a directory (model.safetensors) or a file
    hr = r.restore(lq, steps=8, generator=torch.Generator().manual_seed(0))
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from diffenhance.config import (
    ConfigError,
    DegradeConfig,
    DiffusionConfig,
    ModelConfig,
    section_from_dict,
    to_dict,
)
from diffenhance.diffusion import Schedule, from_model_range, to_model_range
from diffenhance.diffusion.formulations import Generators, formulation_moments, get_formulation
from diffenhance.io import atomic_write_bytes
from diffenhance.restoration import RestorationTask, get_task, task_names

FORMAT = "diffenhance-checkpoint-v1"
WEIGHTS_NAME = "model.safetensors"  # EMA weights: what enhancement loads
# The shipped models: models/pretrained/<task>/model.safetensors of the working directory,
# else of the checkout this package runs from (an editable install).
PRETRAINED_DIRS = (
    Path("models/pretrained"),
    Path(__file__).resolve().parents[2] / "models/pretrained",
)


def pretrained_model(task: str) -> Path | None:
    """The shipped model dir of `task` (models/pretrained/<task>), or None when there is none."""
    for root in PRETRAINED_DIRS:
        if (root / task / WEIGHTS_NAME).is_file():
            return root / task
    return None


# Refused before anything is allocated: the shipped models have ~1.5M parameters, so metadata
# describing more than 2e9 (8 GB of fp32 weights), a U-Net deeper than any sane one or a
# schedule of more than 1e6 steps is corrupt or hostile, not a model.
MAX_PARAMETERS = 2_000_000_000
MAX_BLOCKS = 1_000  # residual blocks of one U-Net: len(channel_mults) * (2 * num_res_blocks + 1)
MAX_TIMESTEPS = 1_000_000


class CheckpointError(ValueError):
    """A checkpoint is missing, not ours, or does not fit the model it is loaded into."""


@dataclass
class Restorer:
    """A trained restoration model for one task, of formulation `diffusion_cfg.formulation`.

    `unet` is the network the formulation built (`build_network`), with a `size_multiple`:
    a `UNet` for sr3, regression, indi; a `PredictRefine` (predictor + denoiser) for residual.
    """

    unet: torch.nn.Module
    schedule: Schedule
    model_cfg: ModelConfig
    diffusion_cfg: DiffusionConfig
    task: str
    scale: int
    meta: dict[str, Any]

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def restoration(self) -> RestorationTask:
        """The registered task object of `task` (its side inputs, scoring, composition)."""
        return get_task(self.task)

    def to(self, device: torch.device | str) -> Restorer:
        self.unet.to(device)
        self.schedule = self.schedule.to(device)
        return self

    def condition(self, lq: torch.Tensor) -> torch.Tensor:
        """LQ [N,C,h,w] in [0,1] -> condition [N,C,h*s,w*s] in [-1,1] (bicubic upsampling;
        C = the task's `channels`: the image, then its side inputs)."""
        if self.scale != 1:
            lq = F.interpolate(lq, scale_factor=self.scale, mode="bicubic", align_corners=False)
        return to_model_range(lq.clamp(0, 1))

    @torch.no_grad()
    def restore(
        self,
        lq: torch.Tensor,
        *,
        steps: int = 8,
        sampler: str = "ddim",
        eta: float = 0.0,
        generator: Generators = None,
        autocast_dtype: torch.dtype | None = None,
        samples: int = 1,
        detail: float = 1.0,
    ) -> torch.Tensor:
        """Restore a batch. lq: [N,C,h,w] float32 in [0,1] -> [N,3,h*scale,w*scale] in [0,1].

        C = the task's `channels` (its `join`: the image, then its side inputs; the tiled
        engine then composes the output with the input: the task's `finish`).

        H and W after upscaling must be multiples of `unet.size_multiple` (infer.py pads).
        The start (x_T, or the noisy input for indi) is drawn from `generator` (on its device,
        then moved): one generator for the batch, or one per item (a sequence: item i then
        depends on generator i only). The result is a pure function of (weights, lq, generator
        seeds, steps). `samples` > 1 returns the mean of that many independent samples (more
        faithful, less texture); `steps` is ignored by the regression formulation. `detail` in
        [0, 1] (formulations with a detail knob, e.g. pmrf): 0 = the posterior mean, 1 = the
        sample.
        """
        return self.restore_moments(
            lq, steps=steps, sampler=sampler, eta=eta, generator=generator,
            autocast_dtype=autocast_dtype, samples=samples, variance=False, detail=detail,
        )[0]  # fmt: skip

    @torch.no_grad()
    def restore_moments(
        self,
        lq: torch.Tensor,
        *,
        steps: int = 8,
        sampler: str = "ddim",
        eta: float = 0.0,
        generator: Generators = None,
        autocast_dtype: torch.dtype | None = None,
        samples: int = 1,
        variance: bool = True,
        detail: float = 1.0,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`restore` and, when `variance`, the spread of its samples: (mean [N,3,H,W] in [0,1]
        (the same bits as `restore`), var [N,1,H,W] float32: the mean over RGB of each channel's
        unbiased variance across the `samples` samples, in [0,1] intensity units squared
        (0 for one sample)), or (mean, None)."""
        self.unet.eval()
        cond = self.condition(lq.to(self.device, torch.float32))
        with torch.autocast(
            self.device.type,
            dtype=autocast_dtype or torch.bfloat16,
            enabled=autocast_dtype is not None,
        ):
            m = formulation_moments(
                self.diffusion_cfg,
                self.unet,
                self.schedule,
                cond,
                steps=steps,
                sampler=sampler,
                eta=eta,
                generator=generator,
                samples=samples,
                variance=variance,
                detail=detail,
            )
        mean = from_model_range(m.mean.float()).clamp(0, 1)
        # [-1, 1] -> [0, 1] halves values, so it quarters variances
        var = None if m.var is None else m.var.float().mean(dim=1, keepdim=True) / 4
        return mean, var


def build_network(
    model_cfg: ModelConfig, diffusion_cfg: DiffusionConfig, scale: int, cond_channels: int = 3
) -> torch.nn.Module:
    """The freshly initialised network of `diffusion_cfg.formulation` for a task of `scale`
    whose condition has `cond_channels` (the task's `channels`; its registry entry decides:
    e.g. a UNet(6 -> 3), or for 'residual' a PredictRefine; `model_cfg.space` = "lr" puts the
    body on the 1/scale grid)."""
    f = get_formulation(diffusion_cfg.formulation)
    return f.build_network(model_cfg, diffusion_cfg, scale, cond_channels)


def build_restorer(
    model_cfg: ModelConfig,
    diffusion_cfg: DiffusionConfig,
    task: str | RestorationTask,
    degrade_cfg: DegradeConfig,
) -> Restorer:
    """A freshly initialised restorer for `task`."""
    t = get_task(task)
    scale = t.scale(degrade_cfg)
    return Restorer(
        unet=build_network(model_cfg, diffusion_cfg, scale, t.channels),
        schedule=Schedule.from_config(diffusion_cfg),
        model_cfg=model_cfg,
        diffusion_cfg=diffusion_cfg,
        task=t.name,
        scale=scale,
        meta={},
    )


def checkpoint_metadata(r: Restorer, **extra: Any) -> dict[str, str]:
    """The safetensors metadata that makes a checkpoint describe itself (all values str)."""
    meta = {
        "format": FORMAT,
        "model": json.dumps(to_dict(r.model_cfg), sort_keys=True),
        "diffusion": json.dumps(to_dict(r.diffusion_cfg), sort_keys=True),
        "task": r.task,
        "scale": str(r.scale),
        "formulation": r.diffusion_cfg.formulation,  # also inside "diffusion"; for readers
    }
    meta.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in extra.items()})
    return meta


CARD_NAME = "training.json"  # a shipped model's card, beside its weights


def training_record(path: str | Path | None, meta: dict[str, str]) -> dict[str, Any]:
    """How the checkpoint at `path` (safetensors metadata `meta`) was trained: {path, step,
    formulation}, its card's recipe and commit (a shipped model's training.json beside it),
    and under "init_from" the same record of the checkpoint it was fine-tuned from (its
    metadata's "init_from", else its card's), so the chain of runs behind the weights survives
    any number of fine-tunings. A fine-tuning run stores this record of its start checkpoint
    as its own "init_from" metadata (train.py); evaluate puts it in protocol.json."""
    rec: dict[str, Any] = {"path": None if path is None else str(path),
                           "step": int(meta.get("step", 0)),
                           "formulation": meta.get("formulation")}  # fmt: skip
    prior = json.loads(meta["init_from"]) if meta.get("init_from") else None
    card = None
    if path is not None:
        p = Path(path)
        card = (p if p.is_dir() else p.parent) / CARD_NAME
    if card is not None and card.is_file():
        c = json.loads(card.read_text(encoding="utf-8"))
        rec |= {k: c[k] for k in ("recipe", "commit") if k in c}
        prior = prior or c.get("init_from")
    if prior:
        rec["init_from"] = prior
    return rec


def recommended_sampling(r: Restorer | CheckpointSpec) -> tuple[int, int]:
    """(steps, samples) the checkpoint recommends (its "recommended" metadata: what measured
    best for that model), else its formulation's default (`Formulation.default_steps`).

    `r`: a loaded restorer, or a checkpoint's header (`validate_checkpoint`: nothing loaded)."""
    rec = json.loads(r.meta.get("recommended") or "{}")
    f = get_formulation(r.diffusion_cfg.formulation)
    return int(rec.get("steps", f.default_steps)), int(rec.get("samples", f.default_samples))


def recommended_min_tile(r: Restorer) -> int:
    """The smallest tile (input pixels) the checkpoint recommends, 0 when it names none: an
    inpainting model needs context around a hole, so its tile is a quality setting."""
    return int(json.loads(r.meta.get("recommended") or "{}").get("min_tile", 0))


PRESETS = ("fidelity", "balanced", "detail")  # along the knob: best PSNR .. most detail


def presets(r: Restorer | CheckpointSpec) -> dict[str, dict[str, Any]]:
    """The named settings of the knob the checkpoint records, {name: {"steps", "samples",
    "detail"}} in `PRESETS` order: its measured "presets" metadata, else only "fidelity" =
    `recommended_sampling` (at detail 0 for a formulation with a detail knob: its posterior
    mean; 1 otherwise, where detail has no meaning)."""
    rec = json.loads(r.meta.get("recommended") or "{}")
    steps, samples = recommended_sampling(r)
    knob = get_formulation(r.diffusion_cfg.formulation).detail_knob
    out = {"fidelity": {"steps": steps, "samples": samples, "detail": 0.0 if knob else 1.0}}
    for name, p in (rec.get("presets") or {}).items():
        out[name] = {"steps": int(p.get("steps", steps)), "samples": int(p.get("samples", 1)),
                     "detail": float(p.get("detail", 1.0))}  # fmt: skip
    return {k: out[k] for k in sorted(out, key=lambda k: (PRESETS + (k,)).index(k))}


def detail_end(r: Restorer | CheckpointSpec) -> float:
    """The detail at which the checkpoint's steps matter: its most detailed preset's (`presets`),
    else 1 (a sample). Where a model's presets are all its posterior mean (detail 0, which no
    step count changes), step counts asked for on their own run here, as evaluate's steps curve
    does."""
    return max(p["detail"] for p in presets(r).values()) or 1.0


def default_preset(r: Restorer | CheckpointSpec) -> str:
    """The preset the checkpoint runs when none is asked for ("fidelity" unless it says)."""
    return str(json.loads(r.meta.get("recommended") or "{}").get("preset", "fidelity"))


def sampling(
    r: Restorer,
    steps: int | None,
    samples: int | None,
    detail: float | None = None,
    preset: str | None = None,
) -> tuple[int, int, float]:
    """(steps, samples, detail) to run `r` with: the given values, each None filled in from
    the checkpoint's preset `preset` (None: `default_preset`). ValueError naming the presets
    the model has when it has no `preset`."""
    known = presets(r)
    name = default_preset(r) if preset is None else preset
    if name not in known:
        raise ValueError(
            f"model {r.task} ({r.diffusion_cfg.formulation}) has no preset {name!r}; it has "
            f"{', '.join(known)} (presets are measured per model and recorded in its checkpoint)"
        )
    p = known[name]
    return (
        p["steps"] if steps is None else steps,
        p["samples"] if samples is None else samples,
        p["detail"] if detail is None else detail,
    )


def set_recommended(
    path: str | Path,
    steps: int,
    samples: int,
    why: str,
    min_tile: int | None = None,
    presets: dict[str, dict[str, Any]] | None = None,
) -> Path:
    """Record the measured best sampler settings (and optionally the smallest tile,
    `recommended_min_tile`, and the named presets of the knob, `presets`: {name: {steps,
    samples, detail}}) in a checkpoint's metadata (weights unchanged, bytes deterministic as
    `save_weights`). Settings `load_restorer` would refuse (`_check_recommended`) are a
    CheckpointError, and the file is left as it was."""
    if steps < 1 or samples < 1 or (min_tile is not None and min_tile < 1):
        raise ValueError(f"steps, samples and min_tile must be >= 1, got {steps}, {samples}, "
                         f"{min_tile}")  # fmt: skip
    tensors, meta = read_checkpoint(path)
    rec: dict[str, Any] = {"steps": steps, "samples": samples, "why": why}
    if min_tile is not None:
        rec["min_tile"] = min_tile
    if presets:
        kinds = {"steps": int, "samples": int, "detail": float}  # a missing one: its default
        rec["presets"] = {
            name: {k: f(spec[k]) for k, f in kinds.items() if k in spec}
            if isinstance(spec, dict) else spec
            for name, spec in presets.items()
        }  # fmt: skip
    meta["recommended"] = json.dumps(rec, sort_keys=True)
    file = _resolve(path)
    _check_recommended(file, meta)
    return save_weights(file, tensors, meta)


def save_weights(
    path: str | Path, state_dict: dict[str, torch.Tensor], meta: dict[str, str]
) -> Path:
    """Write a safetensors checkpoint atomically (temp file, then rename).

    The header is rewritten with sorted keys so that the same weights and metadata always
    give the same bytes (safetensors orders metadata by a randomly seeded hash map): DVC then
    sees a retrained, identical model as unchanged.
    """
    from safetensors.torch import save

    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    blob = save(tensors, metadata=meta)
    n = int.from_bytes(blob[:8], "little")
    header = json.dumps(json.loads(blob[8 : 8 + n]), sort_keys=True, separators=(",", ":"))
    raw = header.encode()
    raw += b" " * (-len(raw) % 8)  # safetensors pads the header to 8-byte alignment
    path = Path(path)
    atomic_write_bytes(path, len(raw).to_bytes(8, "little") + raw + blob[8 + n :])
    return path


def weights_path(path: str | Path) -> Path:
    """The weights file a model path names: `<dir>/model.safetensors` (`WEIGHTS_NAME`) for a
    model dir, else the path itself; whether the file exists is not checked."""
    p = Path(path)
    return p / WEIGHTS_NAME if p.is_dir() else p


def _resolve(path: str | Path) -> Path:
    p = weights_path(path)
    if not p.is_file():
        raise CheckpointError(
            f"{p}: no checkpoint here (expected a .safetensors file or a model dir)"
        )
    return p


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(state_dict, metadata) of a safetensors checkpoint; CheckpointError if it is not ours."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    p = _resolve(path)
    try:
        with safe_open(str(p), framework="pt") as f:
            meta = dict(f.metadata() or {})
        tensors = load_file(str(p))
    except Exception as e:  # safetensors raises its own error types
        raise CheckpointError(f"{p}: not a readable safetensors file ({_one_line(e)})") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(
            f"{p}: not a diffenhance checkpoint (metadata format={meta.get('format')!r})"
        )
    return tensors, meta


@dataclass(frozen=True)
class CheckpointSpec:
    """What a checkpoint file describes, validated against its tensors' shapes (weights unread)."""

    path: Path  # the .safetensors file
    model_cfg: ModelConfig
    diffusion_cfg: DiffusionConfig
    task: str
    scale: int
    meta: dict[str, str]
    n_parameters: int
    size_multiple: int  # the network's output H and W must be multiples of it (infer tiles)


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _header(p: Path) -> tuple[dict[str, str], dict[str, tuple[int, ...]]]:
    """(metadata, {tensor name: shape}) from a safetensors header, without reading weights."""
    from safetensors import safe_open

    try:
        with safe_open(str(p), framework="pt") as f:
            meta = dict(f.metadata() or {})
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 (not a dict)
    except Exception as e:  # safetensors raises its own error types
        raise CheckpointError(
            f"{p}: not a readable safetensors file ({_one_line(e)}); give a model.safetensors "
            "written by diffenhance"
        ) from None
    return meta, shapes


def _json_section(p: Path, meta: dict[str, str], key: str, cls: type) -> Any:
    raw = meta.get(key)
    try:
        value = json.loads(raw) if raw is not None else None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{p}: metadata '{key}' is not valid JSON ({e})") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{p}: metadata '{key}' must be a JSON object, got {raw!r:.80}")
    if cls is DiffusionConfig:
        value.setdefault("formulation", "sr3")  # checkpoints from before formulations were sr3
    try:
        return section_from_dict(cls, value, source=f"metadata '{key}'")
    except ConfigError as e:
        raise CheckpointError(f"{p}: {_one_line(e)}") from None


def _task_and_scale(p: Path, meta: dict[str, str]) -> tuple[str, int]:
    task = meta.get("task")
    if task not in task_names():
        raise CheckpointError(
            f"{p}: metadata task={task!r} is not one of {', '.join(task_names())}"
        )
    allowed = get_task(task).scales()
    raw = meta.get("scale")
    try:
        scale = int(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        scale = None
    if scale is None or scale < 1 or scale not in allowed:
        want = " or ".join(str(a) for a in allowed)
        raise CheckpointError(
            f"{p}: metadata scale={raw!r} does not fit task {task} (expected {want})"
        )
    return task, scale


def _check_recommended(p: Path, meta: dict[str, str]) -> None:
    if "recommended" not in meta:
        return
    try:
        rec = json.loads(meta["recommended"])
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{p}: metadata 'recommended' is not valid JSON ({e})") from None
    if not isinstance(rec, dict):
        raise CheckpointError(f"{p}: metadata 'recommended' must be a JSON object")
    for k in ("steps", "samples", "min_tile"):
        v = rec.get(k, 1)
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise CheckpointError(f"{p}: metadata recommended.{k}={v!r} must be an integer >= 1")
    named = rec.get("presets", {})
    if not isinstance(named, dict) or rec.get("preset", "fidelity") not in {"fidelity", *named}:
        raise CheckpointError(f"{p}: metadata recommended.presets/preset are malformed")
    for name, spec in named.items():
        ok = (
            isinstance(spec, dict)
            and all(
                isinstance(spec.get(k, 1), int)
                and not isinstance(spec.get(k, 1), bool)
                and spec.get(k, 1) >= 1
                for k in ("steps", "samples")
            )
            and isinstance(spec.get("detail", 1.0), (int, float))
            and 0 <= spec.get("detail", 1) <= 1
        )
        if not ok:
            raise CheckpointError(
                f"{p}: metadata recommended.presets.{name}={spec!r} needs integer steps and "
                "samples >= 1 and detail in [0, 1]"
            )


def _network_shapes(
    p: Path, model_cfg: ModelConfig, diff_cfg: DiffusionConfig, scale: int, task: str
) -> tuple[dict[str, tuple[int, ...]], int]:
    """({name: shape}, output size multiple) of the network the metadata describes, refusing
    absurd sizes before any memory is allocated (the network is built on the `meta` device)."""
    blocks = len(model_cfg.channel_mults) * (2 * model_cfg.num_res_blocks + 1)
    if blocks > MAX_BLOCKS:
        raise CheckpointError(
            f"{p}: metadata describes a U-Net of {blocks} residual blocks (more than "
            f"{MAX_BLOCKS}): the file is corrupt or not a diffenhance model"
        )
    if diff_cfg.timesteps > MAX_TIMESTEPS:
        raise CheckpointError(
            f"{p}: metadata describes {diff_cfg.timesteps} diffusion timesteps (more than "
            f"{MAX_TIMESTEPS}): the file is corrupt or not a diffenhance model"
        )
    try:
        with torch.device("meta"):
            net = build_network(model_cfg, diff_cfg, scale, get_task(task).channels)
        Schedule.from_config(diff_cfg)
    except (ValueError, RuntimeError, OverflowError, TypeError) as e:
        raise CheckpointError(
            f"{p}: metadata describes no valid network ({_one_line(e)})"
        ) from None
    shapes = {k: tuple(t.shape) for k, t in net.state_dict().items()}
    n = sum(math.prod(s) for s in shapes.values())
    if n > MAX_PARAMETERS:
        raise CheckpointError(
            f"{p}: metadata describes a network of {n:.3g} parameters (more than "
            f"{MAX_PARAMETERS:.0e}): the file is corrupt or not a diffenhance model"
        )
    return shapes, int(net.size_multiple)


def shape_mismatches(
    expected: dict[str, tuple[int, ...]], got: dict[str, tuple[int, ...]]
) -> list[str]:
    """Each difference between the tensors a network has and those a checkpoint holds."""
    problems = []
    for name, shape in got.items():
        if name not in expected:
            problems.append(f"unexpected {name} {shape}")
        elif expected[name] != shape:
            problems.append(f"{name}: checkpoint {shape} vs model {expected[name]}")
    problems += [f"missing {n} {s}" for n, s in expected.items() if n not in got]
    return problems


def validate_checkpoint(path: str | Path) -> CheckpointSpec:
    """Check a checkpoint (file or model dir) before any work starts, reading only its header:
    a safetensors file of our format whose metadata is valid (model / diffusion config, task,
    scale, recommended sampling) and whose tensors have exactly the shapes of the network that
    metadata describes. Absurd network sizes are refused before anything is allocated.

    Raises CheckpointError with one line `<file>: <problem>`."""
    p = _resolve(path)
    meta, shapes = _header(p)
    if meta.get("format") != FORMAT:
        raise CheckpointError(
            f"{p}: not a diffenhance checkpoint (metadata format={meta.get('format')!r})"
        )
    model_cfg = _json_section(p, meta, "model", ModelConfig)
    diff_cfg = _json_section(p, meta, "diffusion", DiffusionConfig)
    task, scale = _task_and_scale(p, meta)
    _check_recommended(p, meta)
    expected, size_multiple = _network_shapes(p, model_cfg, diff_cfg, scale, task)
    problems = shape_mismatches(expected, shapes)
    if problems:
        more = f"; and {len(problems) - 3} more" if len(problems) > 3 else ""
        raise CheckpointError(
            f"{p}: {len(problems)} tensors do not fit the network its metadata describes "
            f"({'; '.join(problems[:3])}{more})"
        )
    n = sum(math.prod(s) for s in expected.values())
    return CheckpointSpec(p, model_cfg, diff_cfg, task, scale, meta, n, size_multiple)


def load_restorer(path: str | Path, device: str | torch.device = "cpu") -> Restorer:
    """Load a checkpoint (file or model directory) into a Restorer, using only its metadata.

    The file is validated first (`validate_checkpoint`): CheckpointError naming the file."""
    from safetensors.torch import load_file

    spec = validate_checkpoint(path)
    try:
        tensors = load_file(str(spec.path))
    except Exception as e:  # safetensors raises its own error types
        raise CheckpointError(
            f"{spec.path}: not a readable safetensors file ({_one_line(e)})"
        ) from None
    channels = get_task(spec.task).channels
    unet = build_network(spec.model_cfg, spec.diffusion_cfg, spec.scale, channels)
    load_matching(unet, tensors, strict=True, source=str(spec.path))
    r = Restorer(
        unet=unet,
        schedule=Schedule.from_config(spec.diffusion_cfg),
        model_cfg=spec.model_cfg,
        diffusion_cfg=spec.diffusion_cfg,
        task=spec.task,
        scale=spec.scale,
        meta=spec.meta,
    )
    return r.to(device)


def load_matching(
    module: torch.nn.Module,
    tensors: dict[str, torch.Tensor],
    *,
    strict: bool,
    source: str,
    advice: str = "",
) -> list[str]:
    """Load `tensors` into `module`.

    strict: every tensor must exist with the same shape, else CheckpointError listing each
    mismatch, then `advice` (what the caller's user can do about it). Not strict: load what
    matches and return the names that were skipped (missing, unexpected or of another
    shape) — e.g. fine-tuning across tasks with other input channels.
    """
    own = module.state_dict()
    got = {name: tuple(t.shape) for name, t in tensors.items()}
    problems = shape_mismatches({k: tuple(v.shape) for k, v in own.items()}, got)
    loadable = {k: t for k, t in tensors.items() if k in own and own[k].shape == t.shape}
    skipped = [k for k in tensors if k not in loadable] + [k for k in own if k not in tensors]
    if strict and problems:
        listing = "\n  ".join(problems[:20]) + ("\n  ..." if len(problems) > 20 else "")
        raise CheckpointError(
            f"{source}: {len(problems)} tensors do not fit the model:\n  {listing}"
            + (f"\n{advice}" if advice else "")
        )
    module.load_state_dict(loadable, strict=False)
    return skipped
