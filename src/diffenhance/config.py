"""params.yaml -> typed, frozen, validated configuration objects.

One dataclass per pipeline stage; `Config` holds them all. Every field has a default so a
partial params.yaml works, and every default carries a comment saying why. The defaults are
params.yaml's except for the training recipe (from scratch here, the shipped models' two-stage
fine-tune there): docs/training.md lists them and a test pins the list. Validation is
driven by the type hints: sections and plug-in options are walked here (an unknown key
raises `ConfigError` naming the key, the file and the allowed keys), each value is validated
by pydantic in strict JSON mode (a value of the wrong type raises `ConfigError` naming the
key, the value and the type expected), then each section's own cross-field rules run.

    cfg = load_config("params.yaml", overrides=["train.lr=2e-4"])
    cfg.train.lr  # 0.0002
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import math
import re
import sys
import threading
import types
import typing
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin
from urllib.parse import urlsplit

import pydantic
import pydantic_core
import yaml

from diffenhance.io import atomic_path
from diffenhance.registry import FORMULATIONS, NETWORKS, TASKS, Registry


@dataclass(frozen=True)
class OneOf:
    """`Annotated[str, OneOf(...)]`: a name that must be in a registry, read at validation time
    (so a formulation registered later, e.g. by a test or a plugin, is accepted)."""

    what: str
    names: Callable[[], tuple[str, ...]]

    def __get_pydantic_core_schema__(
        self, source: Any, handler: pydantic.GetCoreSchemaHandler
    ) -> pydantic_core.CoreSchema:
        """pydantic: the string, then a check that it is a registered name."""

        def registered(name: str) -> str:
            if name not in self.names():
                raise pydantic_core.PydanticCustomError(
                    "one_of", "not a registered {what}", {"what": self.what}
                )
            return name

        return pydantic_core.core_schema.no_info_after_validator_function(
            registered, handler(source)
        )


# a diffusion formulation (diffenhance.diffusion.formulations: residual, sr3, indi, pmrf, ...)
Formulation = Annotated[str, OneOf("formulation", FORMULATIONS.names)]
# a restoration task (diffenhance.restoration: sr2, sr4, denoise, jpeg, blind, inpaint, ...)
Task = Annotated[str, OneOf("task", TASKS.names)]
# a network (diffenhance.nn: hr, lr, ...)
Network = Annotated[str, OneOf("network", NETWORKS.names)]


_S = typing.TypeVar("_S")


class PluginOptions(Mapping[str, Any]):
    """`diffusion.options`, `model.options`: {plug-in name: its options}, for every plug-in of a
    registry whose class declares `Options` (a frozen dataclass with defaults; its own rules in
    an optional `check(self, bad)` method). A plug-in with its own option is then one file:

        @register
        class Mine(Formulation):
            name = "mine"

            @dataclass(frozen=True)
            class Options:
                gain: float = 0.5

    params.yaml sets `diffusion.options.mine.gain: 0.25`; code reads `dcfg.options["mine"].gain`.
    The values given are validated when params load; every other plug-in's options are its
    class's defaults, filled on first use (so config.py imports no plug-in, and one registered
    later, by a test or a plugin package, has options too). Equality, hashing and `to_dict` see
    the filled mapping: a default written out equals a default left out."""

    def __init__(self, registry: Registry, given: Mapping[str, Any] | None = None) -> None:
        self.registry = registry
        self._given = dict(given or {})
        self._all: dict[str, Any] | None = None

    def _full(self) -> dict[str, Any]:
        if self._all is None:
            full = {
                name: self._given.get(name) or cls()
                for name, cls in plugin_options(self.registry).items()
            }
            self._all = {**full, **self._given}  # a given plug-in unregistered since stays
        return self._all

    def __getitem__(self, name: str) -> Any:
        full = self._full()
        if name not in full:
            raise KeyError(
                f"the {self.registry.what} {name!r} declares no options; those that do: "
                f"{', '.join(full) or 'none'}"
            )
        return full[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._full())

    def __len__(self) -> int:
        return len(self._full())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PluginOptions):
            return NotImplemented
        return self._full() == other._full()

    def __hash__(self) -> int:
        return hash(tuple(sorted(self._full().items())))

    def __repr__(self) -> str:
        return f"PluginOptions({self._full()!r})"


@dataclass(frozen=True)
class OptionsOf:
    """`Annotated[PluginOptions, OptionsOf(REGISTRY)]`: a field of plug-in options."""

    registry: Registry


def plugin_options(registry: Registry) -> dict[str, type]:
    """{name: Options class} of the registered plug-ins that declare options (registry order)."""
    registry.load()
    return {n: cls for n, p in registry.items() if (cls := getattr(p, "Options", None))}


def with_options(section: _S, **by_name: Mapping[str, Any]) -> _S:
    """A copy of `section` (a DiffusionConfig or ModelConfig) with plug-in options set and
    checked by their class: `with_options(dcfg, indi={"noise": 0.1})`."""
    opts = section.options  # type: ignore[attr-defined]
    given = dict(opts.items())
    for name, values in by_name.items():
        new = dataclasses.replace(opts[name], **values)
        _check_invariants(new, f"options.{name}", "with_options")
        given[name] = new
    return dataclasses.replace(section, options=PluginOptions(opts.registry, given))  # type: ignore[type-var]


def _options_field(registry: Registry) -> Any:
    return field(default_factory=lambda: PluginOptions(registry))


class ConfigError(ValueError):
    """A params file or override is invalid; the message says which key and what is allowed.

    An error of a section's rule (`_check_invariants`) also carries them apart: `key`, the
    dotted key, and `why`, what the rule says of its value ("must be >= 1"), so that a front
    end can retell it for a value given its own way (`enhance.settings.enhance_config`)."""

    def __init__(self, message: str, *, key: str | None = None, why: str | None = None) -> None:
        super().__init__(message)
        self.key, self.why = key, why


@dataclass(frozen=True)
class DataConfig:
    source: Literal["samples", "folder", "div2k"] = "samples"  # offline default
    folder: str | None = None  # source=folder: root of the user's images
    div2k_url: str = "https://data.vision.ee.ethz.ch/cvl/DIV2K/"  # official mirror
    div2k_lr_scales: tuple[int, ...] = ()  # bicubic LR sets are optional: we degrade HR ourselves
    raw_dir: str = "data/raw"
    prepared_dir: str = "data/prepared"
    crop_size: int = 128  # sub-image side; BasicSR uses 480 on DIV2K
    crop_step: int = 64  # half the crop: every pixel is covered twice
    min_size: int = 64  # smaller images cannot give a training crop
    val_fraction: float = 0.2  # held-out share for user folders
    max_pixels: int = 178_956_970  # Pillow's decompression-bomb limit


@dataclass(frozen=True)
class DegradeConfig:
    # the built-in tasks, in registration order (tests check this against the registry; config
    # imports no registry)
    tasks: tuple[Task, ...] = ("sr2", "sr4", "denoise", "jpeg", "blind", "inpaint")
    out_dir: str = "data/degraded"
    seed: int = 20261126  # fixed: validation pairs must never change between runs
    val_size: int = 128  # HR side of a validation pair
    val_max_images: int = 16
    noise_sigma: tuple[float, float] = (5.0, 50.0)  # 0-255 scale, training range
    val_noise_sigma: float = 25.0  # the common benchmark setting
    jpeg_quality: tuple[int, int] = (10, 60)
    val_jpeg_quality: int = 30
    blind_scale: Literal[1, 2, 4] = 4
    mask_coverage: tuple[float, float] = (0.05, 0.5)  # inpaint: share of the image to fill


@dataclass(frozen=True)
class ModelConfig:
    base_channels: int = 32
    channel_mults: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 1
    attn_resolutions: tuple[int, ...] = (4,)  # downsampling factors (not sizes): size-free
    head_channels: int = 32  # width per attention head
    dropout: float = 0.0
    # The network (a registered `nn.Network`): "hr" runs the U-Net body at the output
    # resolution, "lr" on the pixel-unshuffled 1/scale grid (nn/lrspace.py; 1/2 for scale-1
    # tasks). "hr": what checkpoints without the key were trained with (benchmarks/RESULTS.md
    # "LR-space network" compares the two).
    space: Network = "hr"
    # each network's own options, e.g. options.lr.predictor_blocks (`PluginOptions`)
    options: Annotated[PluginOptions, OptionsOf(NETWORKS)] = _options_field(NETWORKS)


@dataclass(frozen=True)
class DiffusionConfig:
    schedule: Literal["linear", "cosine"] = "cosine"  # cosine keeps SNR useful at low T
    timesteps: int = 1000
    prediction: Literal["eps", "v", "x0"] = "v"  # v is well-conditioned at both ends
    loss: Literal["l1", "mse"] = "l1"  # L1 gives sharper SR (SR3, Palette)
    min_snr_gamma: float = 0.0  # 0 = off; 5.0 in Hang et al. 2023
    beta_start: float = 1e-4  # DDPM's linear schedule
    beta_end: float = 0.02
    # How the network is trained and sampled (diffusion/formulations/). residual measured
    # best (benchmarks/RESULTS.md "Formulations"); checkpoints without the key load as sr3.
    formulation: Formulation = "residual"
    # each formulation's own options, e.g. options.residual.scale, options.pmrf.noise: declared
    # (with why each default) by the formulation's class (`PluginOptions`)
    options: Annotated[PluginOptions, OptionsOf(FORMULATIONS)] = _options_field(FORMULATIONS)


@dataclass(frozen=True)
class TrainConfig:
    tasks: tuple[Task, ...] = ("sr4",)
    steps: int = 300
    batch_size: int = 8
    crop_size: int = 64
    lr: float = 2e-4
    warmup_steps: int = 20
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    accum_steps: int = 1
    ema_decay: float = 0.999
    ema_warmup_steps: int = 50
    seed: int = 0
    num_workers: int = 0
    log_every: int = 10  # rows in train_log.csv (loss averaged over the interval)
    val_every: int = 100
    val_images: int = 2
    val_steps: int = 4
    ckpt_every: int = 100
    keep_last: int = 2
    out_dir: str = "models"
    device: str = "auto"
    compile: bool = False
    channels_last: bool = True
    # 'pretrained': the shipped models/pretrained/<task> when it is this network (model.*,
    # diffusion.*), else from scratch; a model dir or file: that; null: from scratch
    init_from: str | None = "pretrained"
    init_strict: bool = True


@dataclass(frozen=True)
class InferConfig:
    sampler: Literal["ddim", "ddpm"] = "ddim"
    steps: int | None = None  # None: the checkpoint's recommendation (model.recommended_sampling)
    eta: float = 0.0  # 0: deterministic sampler, tiles batch freely; > 0 runs tile by tile
    seed: int = 0  # tile noise = f(seed, image key, tile position): batching-independent
    tile: int = 64  # input (LQ) pixels; the network sees tile * scale: bounds memory
    tile_overlap: int = 16  # input pixels cross-faded between neighbours: hides seams
    tile_batch: int = 8  # tiles of one image per forward pass (the output's bits depend on it)
    # intra-op CPU threads of a restore (0: torch's default, the cores). The output's bits depend
    # on it: give the CLI and Dask workers (whose nanny sets 1) the same value for equal bytes
    threads: int = 0
    color_correction: Literal["none", "meanstd", "wavelet"] = "none"  # fixes colour drift
    precision: Literal["auto", "bf16", "fp32"] = "auto"  # auto: bf16 on CUDA, fp32 on CPU
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    samples: int | None = (
        None  # mean of N samples: more PSNR, less texture (knob); None: checkpoint
    )
    # formulations with a detail knob (pmrf): 0 = the posterior mean (best PSNR) .. 1 = the
    # flow's sample (ground-truth-like detail); null: the checkpoint's recommendation
    detail: float | None = None
    # a named point of the knob the checkpoint records (fidelity | balanced | detail, measured
    # per model: `diffenhance models`); null: the checkpoint's default (fidelity). steps,
    # samples and detail set here override the preset's
    preset: str | None = None
    # also write each output's per-pixel std across the samples (<stem>.uncertainty.png/.npy);
    # needs samples >= 2 and a model whose samples differ (diffenhance.uncertainty)
    uncertainty: bool = False


@dataclass(frozen=True)
class EnhanceConfig:
    input: str = "data/incoming"  # folder, one image file, or s3://bucket/prefix
    output: str = "results/enhanced"  # folder or s3://bucket/prefix; mirrors the input tree
    model: str = "models/sr4"  # model dir or .safetensors file, readable on every worker
    # every format read_image decodes; GIF is written as PNG (first frame of an animation)
    extensions: tuple[str, ...] = (
        ".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp", ".gif",
    )  # fmt: skip
    shard_size: int = 16  # images per shard: one task and one manifest each
    workers: int = 2  # shards at once (threads; LocalCluster workers with dask_address=local)
    dask_address: str | None = None  # null: threads; tcp://host:8786: that cluster; local
    # same: the input's format (PNG for a JPEG input when the model removes compression
    # artifacts: `RestorationTask.lossless_output`; writing JPEG again would add them back)
    output_format: Literal["same", "png", "jpg", "webp", "tif", "bmp"] = "same"
    bit_depth: Literal[0, 8, 16] = 0  # 0: as the input (16-bit PNG/TIFF stay 16-bit)
    jpeg_quality: int = 95  # JPEG/WebP outputs
    max_pixels: int = 178_956_970  # decompression-bomb guard (Pillow's limit)
    skip_done: bool = True  # skip images already done with the same model and params
    # final size / input size (Real-ESRGAN's --outscale): the model's output is resized to
    # round(input side * outscale), bicubic; null: the model's own scale (no resize)
    outscale: float | None = None
    suffix: str = ""  # output name = input stem + "_" + suffix (photo_x4.png); "": the input's
    # inpainting models: the mask (white = fill) of one input image, or a folder of masks with
    # the inputs' relative paths (a.jpg -> <mask>/a.jpg or <mask>/a.png)
    mask: str | None = None


@dataclass(frozen=True)
class EvaluateConfig:
    # the headline is what enhance runs (infer.*, null: the checkpoint's recommendation); these
    # step counts are scored beside it for the steps curve
    steps: tuple[int, ...] = (4, 8)
    seeds: tuple[int, ...] = (0,)  # one output per seed and image; metrics average over seeds
    average_samples: int | None = None  # mean of N samples per output; null: as infer.samples
    max_images: int = 4  # evenly spaced pairs (or --hr-dir images); small: fast on CPU
    out_dir: str = "reports"
    sampler: Literal["ddim", "ddpm"] | None = None  # None: infer.sampler; eta, precision: infer
    # std map of the headline from N samples and its correlation with |error| (0 = off); 4
    # costs 4 model runs per image. Skipped with a note for a model whose samples cannot differ
    uncertainty_samples: int = 4


@dataclass(frozen=True)
class CompareConfig:
    """The `compare` stages: every formulation trained at one budget, scored side by side."""

    task: Task = "sr4"  # the task the formulations are compared on
    formulations: tuple[Formulation, ...] = ("regression", "indi", "residual", "sr3")
    # the one-shot formulation the default's fidelity end is checked against (and shown beside)
    reference: Formulation = "regression"
    train_steps: int = 150  # the same budget for each (network: model.*, rest: train.*)
    ema_decay: float = 0.99  # 0.999 averages over more steps than a short run has
    steps: tuple[int, ...] = (1, 2, 4, 8, 20, 50)  # sampler steps scored (1 sample each)
    samples: int = 4  # fidelity end of the knob: mean of N samples at the fewest steps
    seed: int = 0  # the restore path's seed (tile noise = f(seed, image content, tile position))
    max_images: int = 4  # validation pairs, evenly spaced by name
    models_dir: str = "models/compare"  # <models_dir>/<formulation>/<task>/model.safetensors
    out_dir: str = "reports/compare"  # metrics.json, curves.csv, per_image.csv, report.html


@dataclass(frozen=True)
class ReportConfig:
    out_dir: str = "reports"
    crops: int = 2  # side-by-side crops of the N best and N worst images (vs the baseline)
    zoom_size: int = 32  # side in HR pixels of the zoomed region of each crop figure


@dataclass(frozen=True)
class StorageConfig:
    url: str = "results/published"  # local folder or s3://bucket/prefix
    endpoint_url: str | None = None  # None = AWS, or AWS_ENDPOINT_URL_S3 from the environment
    region: str | None = None
    addressing_style: Literal["path", "virtual", "auto"] = "path"  # MinIO/SeaweedFS need path
    multipart_threshold_mb: int = 8
    max_attempts: int = 3  # total requests per call (botocore standard mode)
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 30.0
    # `publish`: local folders (relative to the repo root) pushed to <url>/<folder>/
    publish: tuple[str, ...] = ("reports", "models", "results")
    # glob patterns on the object key that publish skips (and counts): resume state is big,
    # pickled, private; models/pretrained/ ships in git (tens of MB), so the commit in the
    # manifest already pins it and uploading it on every publish would only cost time and space;
    # results/published/ is the default local destination: a copy, never a source of its own
    publish_exclude: tuple[str, ...] = (
        "models/*/state/*", "*/.gitkeep", "models/pretrained/*", "results/published/*",
    )  # fmt: skip
    manifest: str = "publish-manifest.json"  # key under url, written last, after every upload
    manifest_copy: str = "results/publish-manifest.json"  # local copy of the last publish


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    degrade: DegradeConfig = field(default_factory=DegradeConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    infer: InferConfig = field(default_factory=InferConfig)
    enhance: EnhanceConfig = field(default_factory=EnhanceConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    compare: CompareConfig = field(default_factory=CompareConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    def digest(self, *sections: str) -> str:
        """Short stable hash of the named sections (all when none): identifies outputs."""
        d = self.to_dict()
        if sections:
            d = {k: d[k] for k in sections}
        blob = json.dumps(d, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


# ----------------------------------------------------------------------------- validation


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Annotated:
        if any(isinstance(a, OptionsOf) for a in get_args(tp)[1:]):
            return "a mapping of plug-in name -> its options"
        one_of = next((a for a in get_args(tp)[1:] if isinstance(a, OneOf)), None)
        if one_of is not None:
            return f"a registered {one_of.what}: " + " | ".join(map(repr, one_of.names()))
        return _type_name(get_args(tp)[0])
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if origin is tuple:
        args = get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"list of {_type_name(args[0])}"
        return f"list of {len(args)} ({', '.join(_type_name(a) for a in args)})"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _is_options(tp: Any) -> Registry | None:
    """The registry of an `Annotated[PluginOptions, OptionsOf(registry)]` type, else None."""
    if get_origin(tp) is Annotated:
        return next((a.registry for a in get_args(tp)[1:] if isinstance(a, OptionsOf)), None)
    return None


@functools.cache
def _adapter(tp: Any) -> pydantic.TypeAdapter[Any]:
    return pydantic.TypeAdapter(tp)


def _members(tp: Any) -> tuple[Any, ...]:
    """The members of a union type (Annotated unwrapped), or (tp,)."""
    if get_origin(tp) is Annotated:
        return _members(get_args(tp)[0])
    if get_origin(tp) in (typing.Union, types.UnionType):
        return tuple(m for a in get_args(tp) for m in _members(a))
    return (tp,)


def _literal_kind_ok(value: Any, tp: Any) -> bool:
    """False for a bool or float given where only literals of other kinds (or null) fit:
    pydantic matches literals by equality, so `true` would pass as 1 and `8.0` as 8."""
    if not isinstance(value, bool | float):
        return True
    kinds = set()
    for m in _members(tp):
        if get_origin(m) is Literal:
            kinds.update(type(a) for a in get_args(m))
        elif m is not type(None):
            return True  # a non-literal member decides by itself
    return not kinds or type(value) in kinds


def _wants_str(tp: Any) -> bool:
    return any(
        m is str or (get_origin(m) is Literal and any(isinstance(a, str) for a in get_args(m)))
        for m in _members(tp)
    )


def _value(value: Any, tp: Any, key: str, source: str) -> Any:
    """One value of a params file (a YAML/JSON scalar or list) as type `tp`: validated by
    pydantic in strict JSON mode (no '5' for an int, no 1 for a bool; a list for a tuple, an
    int for a float), or a ConfigError naming `key`, the value and what is expected."""

    def invalid(value: Any = value, tp: Any = tp, key: str = key) -> ConfigError:
        hint = ""
        if isinstance(value, int | float) and _wants_str(tp):  # YAML read `inf`, `1e3`, `no`
            hint = " (quote it to give a string)"
        return ConfigError(
            f"{source}: '{key}' = {value!r} is invalid: expected {_type_name(tp)}{hint}"
        )

    if not _literal_kind_ok(value, tp):
        raise invalid()
    if isinstance(value, str):
        # strict Python mode is strict JSON mode for a string (no field is a Path), and it
        # keeps a file name that is not UTF-8 (surrogate escapes), which JSON cannot carry
        try:
            return _adapter(tp).validate_python(value, strict=True)
        except pydantic.ValidationError:
            raise invalid() from None
    try:
        data = json.dumps(value)
    except (TypeError, ValueError):  # a YAML date, set or binary: not params data
        raise invalid() from None
    try:
        return _adapter(tp).validate_json(data, strict=True)
    except pydantic.ValidationError as e:
        err = e.errors()[0]
        # an item of a list type is named by its index (a missing item, of a list too short,
        # is the whole list's fault); a union's member tags are not keys
        i = err["loc"][0] if err["loc"] else None
        if isinstance(i, int) and get_origin(tp) is tuple and i < len(value):
            args = get_args(tp)
            item = args[0] if args[-1] is Ellipsis else args[i]
            raise invalid(value[i], item, f"{key}[{i}]") from None
        raise invalid() from None


def _options(value: Any, registry: Registry, key: str, source: str) -> PluginOptions:
    """`PluginOptions` from {plug-in name: {option: value}}, each validated by its class."""
    if isinstance(value, PluginOptions):
        return value
    if not isinstance(value, dict):
        raise ConfigError(
            f"{source}: '{key}' = {value!r} is invalid: expected a mapping of plug-in name -> "
            "its options"
        )
    classes = plugin_options(registry)
    given = {}
    for name, raw in value.items():
        if name not in classes:
            raise ConfigError(
                f"{source}: unknown key '{key}.{name}': no registered {registry.what} of that "
                f"name declares options; those that do: {', '.join(classes) or 'none'}"
            )
        given[name] = _section(classes[name], raw or {}, f"{key}.{name}", source)
    return PluginOptions(registry, given)


def _option_fields(cls: type) -> dict[str, Registry]:
    """{field name: registry} of the `PluginOptions` fields of a dataclass."""
    hints = typing.get_type_hints(cls, include_extras=True)
    return {
        name: a.registry
        for name, tp in hints.items()
        if get_origin(tp) is Annotated
        for a in get_args(tp)[1:]
        if isinstance(a, OptionsOf)
    }


def _flat_key(key: str, fields: dict[str, Registry]) -> tuple[str, str, str] | None:
    """(options field, plug-in, option) that a flat key of before plug-in options names
    ('residual_scale' -> ('options', 'residual', 'scale')), or None."""
    for fname, registry in fields.items():
        for plugin, options in plugin_options(registry).items():
            option = key.removeprefix(plugin + "_")
            if option != key and option in _field_names(options):
                return fname, plugin, option
    return None


def _legacy_options(
    cls: type, raw: dict[str, Any], prefix: str, source: str, *, warn: bool
) -> dict[str, Any]:
    """`raw` with the flat keys of before plug-in options moved into them: 'residual_scale'
    -> options.residual.scale, when the plug-in 'residual' declares the option 'scale' (what
    checkpoints written before hold, and older params files; `warn`: say the new key)."""
    fields = _option_fields(cls)
    if not fields or not isinstance(raw, dict):
        return raw
    out = dict(raw)
    for key in [k for k in raw if isinstance(k, str) and k not in _field_names(cls)]:
        if (found := _flat_key(key, fields)) is None:
            continue  # an unknown key: _section names it
        fname, plugin, option = found
        opts = out[fname] = dict(out.get(fname) or {})
        entry = opts[plugin] = dict(opts.get(plugin) or {})
        new = f"{prefix}.{fname}.{plugin}.{option}"
        if option in entry:
            raise ConfigError(f"{source}: '{prefix}.{key}' and '{new}' are both given")
        entry[option] = out.pop(key)
        if warn:
            warnings.warn(
                f"{source}: '{prefix}.{key}' is now '{new}'; rename it (DVC stages depend on "
                "the new key)",
                FutureWarning,
                stacklevel=3,
            )
    return out


def _field(value: Any, tp: Any, key: str, source: str) -> Any:
    """One field: a section or a plug-in's options walked here (their keys named in errors,
    their own rules checked), any other value validated by pydantic (`_value`)."""
    if (registry := _is_options(tp)) is not None:
        return _options(value, registry, key, source)
    if dataclasses.is_dataclass(tp):
        return _section(tp, value, key, source)  # type: ignore[arg-type]
    return _value(value, tp, key, source)


def _section(cls: type, raw: Any, prefix: str, source: str) -> Any:
    """A dataclass from a mapping: no unknown key (the error lists the allowed ones), each
    field validated, then the section's own rules (`_check_invariants`). A section left empty
    in YAML (`infer:` with every key commented out: null) takes its defaults."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: '{prefix}' must be a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls, include_extras=True)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in raw if k not in names]
    if unknown:
        where = f"'{prefix}.{unknown[0]}'" if prefix else f"'{unknown[0]}'"
        raise ConfigError(
            f"{source}: unknown key {where}; allowed keys"
            f"{' in ' + repr(prefix) if prefix else ''}: {', '.join(names)}"
        )
    kwargs = {
        name: _field(raw[name], hints[name], f"{prefix}.{name}" if prefix else name, source)
        for name in names
        if name in raw
    }
    obj = cls(**kwargs)
    _check_invariants(obj, prefix, source)
    return obj


def _span(lo: float | None, hi: float | None, lo_open: bool, hi_open: bool) -> str:
    """'in [0, 1)', '> 0', '>= 0': the allowed range of a float in words."""
    if lo is not None and hi is not None:
        return f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    if lo is not None:
        return f"{'>' if lo_open else '>='} {lo:g}"
    return f"{'<' if hi_open else '<='} {hi:g}"


def in_range(
    obj: Any,
    key: str,
    bad: Callable[[str, str], ConfigError],
    lo: float | None = None,
    hi: float | None = None,
    *,
    lo_open: bool = False,
    hi_open: bool = False,
    why: str = "",
) -> None:
    """Refuse `obj.<key>` (a float, or a [low, high] pair as 'key[i]') outside the range, NaN
    and infinity included, naming the key and the range: "'train.lr' = nan must be a finite
    number > 0". A null (an optional field) passes: its rule says what null means."""
    value = getattr(obj, key)
    items = list(enumerate(value)) if isinstance(value, tuple) else [(None, value)]
    for i, v in items:
        if v is None:
            continue
        ok = math.isfinite(v)
        ok = ok and (lo is None or (v > lo if lo_open else v >= lo))
        ok = ok and (hi is None or (v < hi if hi_open else v <= hi))
        if not ok:
            span = _span(lo, hi, lo_open, hi_open)
            what = span if lo is not None and hi is not None else f"a finite number {span}"
            name = key if i is None else f"{key}[{i}]"
            raise bad(name, f"= {v!r} must be {what}{f' ({why})' if why else ''}")


def _rules_data(obj: DataConfig, bad: Callable[[str, str], ConfigError]) -> None:
    if obj.crop_size < 8 or obj.crop_step < 1:
        raise bad("crop_size", "must be >= 8 with crop_step >= 1")
    in_range(obj, "val_fraction", bad, 0, 1, hi_open=True)
    if obj.source == "folder" and not obj.folder:
        raise bad("folder", "must be set when data.source is 'folder'")
    # the crops serve every task: a side below the largest scale any task may have leaves
    # nothing after modcrop (`degrade`) or no LQ pixel (training)
    scale = max(s for name in TASKS.names() for s in TASKS.lookup(name).scales())
    if obj.min_size < scale:
        raise bad("min_size", f"= {obj.min_size} must be >= {scale} (the largest task scale)")


def _rules_degrade(obj: DegradeConfig, bad: Callable[[str, str], ConfigError]) -> None:
    # sigmas on the 0-255 scale: 255 is already noise as large as the whole range
    in_range(obj, "noise_sigma", bad, 0, 255, why="0-255 scale")
    lo, hi = obj.noise_sigma
    if not lo <= hi:
        raise bad("noise_sigma", "must be [low, high] with 0 <= low <= high <= 255")
    in_range(obj, "val_noise_sigma", bad, 0, 255, why="0-255 scale")
    qlo, qhi = obj.jpeg_quality
    if not 1 <= qlo <= qhi <= 100:
        raise bad("jpeg_quality", "must be [low, high] within 1..100")
    mlo, mhi = obj.mask_coverage
    if not 0.0 < mlo <= mhi < 1.0:  # NaN fails every comparison; inf fails < 1
        raise bad("mask_coverage", "must be [low, high] with 0 < low <= high < 1")
    if not 1 <= obj.val_jpeg_quality <= 100:
        raise bad("val_jpeg_quality", f"= {obj.val_jpeg_quality} must be within 1..100")
    if obj.val_max_images < 1:
        raise bad("val_max_images", f"= {obj.val_max_images} must be >= 1")
    # a validation pair is modcropped to its task's scale: a smaller side leaves no pixel
    scale = max((TASKS.lookup(t).scale(obj) for t in obj.tasks), default=1)
    if obj.val_size < scale:
        raise bad(
            "val_size", f"= {obj.val_size} must be >= {scale} (the largest scale of degrade.tasks)"
        )


def _rules_model(obj: ModelConfig, bad: Callable[[str, str], ConfigError]) -> None:
    in_range(obj, "dropout", bad, 0, 1, hi_open=True)  # 1 would drop every activation


def _rules_diffusion(obj: DiffusionConfig, bad: Callable[[str, str], ConfigError]) -> None:
    if obj.timesteps < 2:
        raise bad("timesteps", "must be >= 2")
    in_range(obj, "min_snr_gamma", bad, 0, why="0 = off")
    # checked whatever the schedule (cosine ignores them): as diffusion.schedule.make_betas
    in_range(obj, "beta_start", bad, 0, 1, lo_open=True, hi_open=True)
    in_range(obj, "beta_end", bad, 0, 1, lo_open=True, hi_open=True)
    if obj.beta_start > obj.beta_end:
        raise bad("beta_start", f"= {obj.beta_start!r} must be <= diffusion.beta_end")
    # each formulation's options check themselves (their class's `check`)


DEVICE_NAMES = "auto, cpu, cuda, cuda:N or mps"


def _rule_device(obj: Any, bad: Callable[[str, str], ConfigError]) -> None:
    """The spelling of a device (torch's own names, lower case); whether it is there is
    `infer.resolve_device`'s to say, on the machine that runs."""
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", obj.device):
        raise bad("device", f"must be one of {DEVICE_NAMES}")


def _rules_train(obj: TrainConfig, bad: Callable[[str, str], ConfigError]) -> None:
    _rule_device(obj, bad)
    for k in (
        "steps",
        "batch_size",
        "accum_steps",
        "keep_last",
        "log_every",
        "val_every",
        "ckpt_every",
    ):
        if getattr(obj, k) < 1:
            raise bad(k, "must be >= 1")
    # no upper bound: a huge lr is how tests make training diverge on purpose
    in_range(obj, "lr", bad, 0, lo_open=True)
    in_range(obj, "weight_decay", bad, 0)  # AdamW's decoupled decay; 0 = off
    in_range(obj, "grad_clip", bad, 0, lo_open=True, why="max gradient norm; 0 zeroes every step")
    # 1: only the (1 + step) / (10 + step) cap of train.ema_decay_at is left
    in_range(obj, "ema_decay", bad, 0, 1)


def _rules_evaluate(obj: EvaluateConfig, bad: Callable[[str, str], ConfigError]) -> None:
    if not obj.steps or min(obj.steps) < 1:
        raise bad("steps", "must be a non-empty list of step counts >= 1, e.g. [4, 8]")
    if not obj.seeds:
        raise bad("seeds", "must be a non-empty list of integer seeds, e.g. [0]")
    if obj.average_samples is not None and obj.average_samples < 1:
        raise bad("average_samples", "must be >= 1 or null")
    if obj.max_images < 1:
        raise bad("max_images", "must be >= 1")
    if obj.uncertainty_samples == 1 or obj.uncertainty_samples < 0:
        raise bad("uncertainty_samples", "must be 0 (off) or >= 2: a spread needs two samples")


def _rules_compare(obj: CompareConfig, bad: Callable[[str, str], ConfigError]) -> None:
    if not obj.formulations or len(set(obj.formulations)) != len(obj.formulations):
        raise bad("formulations", "must be a non-empty list without repeats")
    if not obj.steps or min(obj.steps) < 1:
        raise bad("steps", "must be a non-empty list of step counts >= 1, e.g. [1, 4, 50]")
    for k in ("train_steps", "samples", "max_images"):
        if getattr(obj, k) < 1:
            raise bad(k, "must be >= 1")
    in_range(obj, "ema_decay", bad, 0, 1)  # passed on as train.ema_decay


def _rules_report(obj: ReportConfig, bad: Callable[[str, str], ConfigError]) -> None:
    if obj.crops < 0 or obj.zoom_size < 4:
        raise bad("crops", "must be >= 0 (and report.zoom_size >= 4)")


def _rules_infer(obj: InferConfig, bad: Callable[[str, str], ConfigError]) -> None:
    _rule_device(obj, bad)
    if obj.tile < 4:
        raise bad("tile", "must be >= 4 (input pixels per tile side; 64-256 are usual)")
    if not 0 <= obj.tile_overlap < obj.tile:
        raise bad("tile_overlap", "must be >= 0 and smaller than infer.tile")
    for k in ("steps", "tile_batch", "samples"):
        if getattr(obj, k) is not None and getattr(obj, k) < 1:
            raise bad(k, "must be >= 1" + (" (or null)" if k != "tile_batch" else ""))
    # 1 = DDPM's posterior variance; DDIM has no room for more and indi refuses more
    in_range(obj, "eta", bad, 0, 1)
    if obj.detail is not None and not 0.0 <= obj.detail <= 1.0:
        raise bad("detail", "must be in [0, 1] (or null)")
    if obj.threads < 0:
        raise bad("threads", "must be >= 0 (0: torch's default)")


def _rules_enhance(obj: EnhanceConfig, bad: Callable[[str, str], ConfigError]) -> None:
    for k in ("shard_size", "workers", "max_pixels"):
        if getattr(obj, k) < 1:
            raise bad(k, "must be >= 1")
    if not 1 <= obj.jpeg_quality <= 100:
        raise bad("jpeg_quality", "must be within 1..100")
    if not obj.extensions or not all(e.startswith(".") for e in obj.extensions):
        raise bad("extensions", "must be a non-empty list of suffixes like .png")
    in_range(obj, "outscale", bad, 0, lo_open=True, why="null: the model's own scale")
    if any(c in obj.suffix for c in "/\\\0") or obj.suffix.startswith("."):
        raise bad(
            "suffix",
            f"= {obj.suffix!r} must be a plain name fragment (no '/', '\\' or leading '.'), "
            "e.g. out or x4",
        )


def _rules_storage(obj: StorageConfig, bad: Callable[[str, str], ConfigError]) -> None:
    if obj.multipart_threshold_mb < 5:
        raise bad(
            "multipart_threshold_mb",
            f"= {obj.multipart_threshold_mb} is too small: S3 rejects multipart parts "
            "under 5 MiB; set it to 5 or more",
        )
    if obj.max_attempts < 1:
        raise bad("max_attempts", "must be >= 1 (1 = no retries)")
    in_range(obj, "connect_timeout_s", bad, 0, lo_open=True)
    in_range(obj, "read_timeout_s", bad, 0, lo_open=True)
    for k, rel in [("publish", p) for p in obj.publish] + [("manifest", obj.manifest)]:
        parts = rel.split("/")
        if rel.startswith("/") or "\\" in rel or any(q in ("", ".", "..") for q in parts):
            raise bad(k, f"entry {rel!r} must be a relative '/'-separated path inside the repo")
    nested = [(a, b) for a in obj.publish for b in obj.publish if b.startswith(a + "/")]
    if len(set(obj.publish)) != len(obj.publish) or nested:
        raise bad("publish", f"lists a folder twice or one inside another: {obj.publish}")
    if obj.manifest.split("/")[0] in {p.split("/")[0] for p in obj.publish}:
        raise bad("manifest", f"{obj.manifest!r} must not lie inside a published folder")


# cross-field rules of each section that a type alone cannot express
_RULES: dict[type, Callable[..., None]] = {
    DataConfig: _rules_data,
    DegradeConfig: _rules_degrade,
    ModelConfig: _rules_model,
    DiffusionConfig: _rules_diffusion,
    TrainConfig: _rules_train,
    EvaluateConfig: _rules_evaluate,
    CompareConfig: _rules_compare,
    ReportConfig: _rules_report,
    InferConfig: _rules_infer,
    EnhanceConfig: _rules_enhance,
    StorageConfig: _rules_storage,
}


def _check_invariants(obj: Any, prefix: str, source: str) -> None:
    """Cross-field rules that a type alone cannot express (`_RULES`, one function a section; a
    plug-in's `Options` carries its own as a `check(bad)` method). First: a rule names the
    field's range, NaN and inf included; then NaN and inf in any float field."""

    def bad(key: str, why: str) -> ConfigError:
        return ConfigError(f"{source}: '{prefix}.{key}' {why}", key=f"{prefix}.{key}", why=why)

    rules = _RULES.get(type(obj))
    if rules is not None:
        rules(obj, bad)
    elif callable(check := getattr(obj, "check", None)):
        check(bad)
    _check_finite(obj, bad)


def _check_finite(obj: Any, bad: Callable[[str, str], ConfigError]) -> None:
    """Refuse NaN and infinity in every float field (lists included), whether or not a rule
    covers it: NaN passes any `x < lo` test and poisons training or sampling much later. No
    field is meant to be infinite (a huge finite value, e.g. grad_clip 1e30, does what inf
    would)."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        items = list(enumerate(value)) if isinstance(value, tuple) else [(None, value)]
        for i, v in items:
            if not isinstance(v, float) or math.isfinite(v):
                continue
            name = f.name if i is None else f"{f.name}[{i}]"
            raise bad(name, f"= {v!r} must be a finite number (NaN and infinity are refused)")


# ----------------------------------------------------------------------------- public API


_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://\S+")


def has_url_credentials(text: str) -> bool:
    """True when `text` holds a URL with credentials: 'scheme://user[:secret]@host/...', or
    'scheme://user:sec/ret@...' (a secret with a '/' ends the host early: its 'port' is no number).
    """
    for m in _URL.finditer(text):
        try:
            netloc = urlsplit(m.group()).netloc
        except ValueError:  # malformed IPv6 host: treat as suspect rather than pass it on
            return True
        host = re.sub(r"\[[^\]]*\]", "", netloc)  # [::1]: the colons of an IPv6 address
        if "@" in netloc or (":" in host and not host.rpartition(":")[2].isdigit()):
            return True
    return False


class _ParamsLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last one
    silently, so `steps: 300` ... `steps: 400` would train 400 steps without a word) and reads
    `2e-4` as the float it is in YAML 1.2 and JSON (PyYAML, YAML 1.1, wants `2.0e-4`), and
    `nan`, `inf` as floats (which the checks then refuse by name), as Python spells them."""

    def construct_document(self, node: yaml.Node) -> Any:
        self._paths: dict[int, str] = {}  # id(mapping node) -> its dotted key, for messages
        self._label(node, "")
        return super().construct_document(node)

    def _label(self, node: yaml.Node, path: str) -> None:
        if isinstance(node, yaml.MappingNode) and id(node) not in self._paths:
            self._paths[id(node)] = path
            for k, v in node.value:
                name = k.value if isinstance(k, yaml.ScalarNode) else "?"
                self._label(v, f"{path}.{name}" if path else name)
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                self._label(v, f"{path}[{i}]")

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # '<<: *base' may be overridden
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node)
            except TypeError:  # unhashable: PyYAML's own error says so
                continue
            if first is not key_node:
                path = getattr(self, "_paths", {}).get(id(node), "")
                raise yaml.constructor.ConstructorError(
                    None, None,
                    f"duplicate key '{f'{path}.{key}' if path else key}' (first given on line "
                    f"{first.start_mark.line + 1}); give each key once",
                    key_node.start_mark,
                )  # fmt: skip
        return super().construct_mapping(node, deep)


_ParamsLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    # 2e-4, 1E5; and nan, inf as Python spells them (then refused by name: not finite)
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+|nan|inf|infinity)$", re.I),
    list("-+0123456789nNiI"),
)


def _yaml_error(e: yaml.YAMLError) -> str:
    """A PyYAML error as one line: 'line L, column C: problem (context at line L2)'."""
    if isinstance(e, yaml.MarkedYAMLError) and e.problem_mark is not None:
        m = e.problem_mark
        text = f"line {m.line + 1}, column {m.column + 1}: {e.problem}"
        if e.context:
            cm = e.context_mark
            at = f" at line {cm.line + 1}" if cm is not None and cm.line != m.line else ""
            text += f" ({e.context}{at})"
        return " ".join(text.split())
    return " ".join(str(e).split())


def load_yaml(text: str, source: str) -> Any:
    """Parse params YAML (safe tags only); ConfigError in one line naming `source`, the line
    and the column for a syntax error or a key given twice in one mapping."""
    try:
        return yaml.load(text, Loader=_ParamsLoader)  # a SafeLoader subclass: safe tags only
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: not valid YAML: {_yaml_error(e)}") from None


def parse_override(text: str) -> tuple[list[str], Any]:
    """'train.lr=2e-4' -> (['train', 'lr'], 2e-4); the value is parsed as YAML.

    A value holding a URL with credentials ('s3://KEY:SECRET@bucket') is refused without
    echoing it: overrides are stored as flow-run parameters and logged.
    """
    key, _, raw = text.partition("=")
    if has_url_credentials(text):
        name = key.strip() if re.fullmatch(r"[\w.]+", key.strip()) else "?"  # never the secret
        raise ConfigError(
            f"override {name!r}: credentials in a URL (user:secret@) are refused, since "
            "overrides are stored with the run (Prefect flow-run parameters, logs); set "
            "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or AWS_PROFILE in the environment and "
            "the endpoint in storage.endpoint_url"
        )
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    path = key.strip().split(".")
    if len(path) < 2 or not all(path):
        raise ConfigError(f"override {text!r}: key must be section.key (e.g. train.lr=2e-4)")
    value = load_yaml(raw, f"override {text!r}") if raw.strip() else None
    return path, value


def check_overrides(overrides: typing.Iterable[str]) -> list[str]:
    """Parse every override (syntax, no credentials in URLs) without reading any params file;
    the list back. What entry points call before starting a flow run, so that a refused value
    is never stored as a flow-run parameter. Raises ConfigError."""
    overrides = list(overrides)
    for ov in overrides:
        parse_override(ov)
    return overrides


def config_from_dict(raw: dict[str, Any], *, source: str = "<dict>") -> Config:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: top level must be a mapping of sections")
    raw = dict(raw)
    for f in dataclasses.fields(Config):
        if isinstance(raw.get(f.name), dict):
            raw[f.name] = _legacy_options(
                typing.get_type_hints(Config)[f.name], raw[f.name], f.name, source, warn=True
            )
    cfg = _section(Config, raw, "", source)
    if _READS is not None:
        _READS.watch(cfg)
    return cfg


def load_config(
    path: str | Path | None = "params.yaml", overrides: typing.Iterable[str] = ()
) -> Config:
    """Read params.yaml (None: built-in defaults), apply dotted overrides, validate.

    Raises ConfigError naming the file and key on any problem.
    """
    raw: dict[str, Any] = {}
    source = "<defaults>"
    if path is not None:
        p = Path(path)
        source = str(p)
        if not p.is_file():
            raise ConfigError(f"{source}: params file not found")
        try:
            text = p.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise ConfigError(f"{source}: not UTF-8 text (byte {e.start})") from None
        except OSError as e:
            raise ConfigError(f"{source}: cannot be read ({e.strerror or e})") from None
        raw = load_yaml(text, source) or {}
    overrides = list(overrides)
    for ov in overrides:
        keys, value = parse_override(ov)
        node = raw
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {ov!r}: '{k}' is not a section")
        node[keys[-1]] = value
    if overrides:
        source = f"{source} with overrides {overrides}"
    return config_from_dict(raw, source=source)


def to_dict(obj: Any) -> Any:
    """Config (or any section) -> plain dict/list structure, YAML/JSON serialisable."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, PluginOptions):
        return {name: to_dict(opts) for name, opts in obj.items()}
    if isinstance(obj, tuple | list):
        return [to_dict(v) for v in obj]
    return obj


def section_from_dict(cls: type, raw: dict[str, Any], *, source: str = "<dict>") -> Any:
    """Rebuild one section (e.g. ModelConfig from a checkpoint's metadata), validated; the flat
    plug-in keys of checkpoints written before `PluginOptions` are read as their options."""
    return _section(
        cls, _legacy_options(cls, raw, cls.__name__, source, warn=False), cls.__name__, source
    )


# the resolved config beside a stage's outputs: it also marks a folder as a pipeline output
RESOLVED = "params.resolved.yaml"


def write_resolved(cfg: Config, out_dir: str | Path, sections: typing.Iterable[str] = ()) -> Path:
    """Write the resolved config (all sections, or the named ones) as `RESOLVED`."""
    with unrecorded():  # a record of the run's config, not an input of what the stage computes
        d = cfg.to_dict()
    sections = tuple(sections)
    if sections:
        d = {k: d[k] for k in sections}
    out = Path(out_dir) / RESOLVED
    with atomic_path(out) as tmp:
        tmp.write_text(yaml.safe_dump(d, sort_keys=False))
    return out


# ----------------------------------------------------------------------------- read tracking
# Which params does a stage's code read? tests/test_params_deps.py runs each DVC stage with
# `recorded_reads()` and checks the answer against the stage's `params:` in dvc.yaml, both ways.


class _ReadLog:
    """The sections of the configs loaded while recording (and their plug-in options), and the
    'section.key' reads of them ('diffusion.options.residual.scale' for an option).

    Only sections of a `Config` parsed from params (config_from_dict) are watched, and only
    after validation: a checkpoint's own ModelConfig/DiffusionConfig (section_from_dict) is not
    params.yaml, and validating a value is not using it.
    """

    def __init__(self) -> None:
        self.reads: set[str] = set()
        # id -> (dotted path, the object (keeps the id), its fields that are not params' values)
        self.sections: dict[int, tuple[str, Any, frozenset[str]]] = {}
        self.patched: set[type] = set()

    def watch(self, cfg: Config) -> None:
        for f in dataclasses.fields(Config):
            self._watch(getattr(cfg, f.name), f.name)

    def _watch(self, obj: Any, path: str, not_params: frozenset[str] = frozenset()) -> None:
        self.sections[id(obj)] = (path, obj, not_params)
        if type(obj) not in self.patched:
            type(obj).__getattribute__ = _recording_getattribute  # type: ignore[method-assign]
            self.patched.add(type(obj))
        for f in dataclasses.fields(obj):
            value = object.__getattribute__(obj, f.name)
            if isinstance(value, PluginOptions):
                for name, opts in value.items():
                    self._watch(opts, f"{path}.{f.name}.{name}")

    def unpatch(self) -> None:
        for cls in self.patched:
            del cls.__getattribute__


_READS: _ReadLog | None = None
_QUIET = threading.local()


@functools.cache
def _field_names(cls: type) -> frozenset[str]:
    return frozenset(f.name for f in dataclasses.fields(cls))


# Modules that read fields on behalf of their caller (copying, hashing, serialising): the first
# frame outside them is the reader that counts.
_GENERIC = ("dataclasses", "copy", "pydantic", "json", "functools", "typing", "pickle",
            "cloudpickle", "collections", "reprlib", "pprint")  # fmt: skip


def _from_prefect() -> bool:
    """Prefect's engine visits every field of a task's arguments (visit_collection, cache keys):
    bookkeeping, not a use of the value."""
    frame = sys._getframe(2)  # the frame that did the getattr
    while frame is not None:
        module = frame.f_globals.get("__name__", "")
        if module.split(".")[0] not in _GENERIC:
            return module.split(".")[0] == "prefect"
        frame = frame.f_back
    return False


def _recording_getattribute(self: Any, name: str) -> Any:
    value = object.__getattribute__(self, name)
    log = _READS
    if (
        log is not None
        and not name.startswith("__")
        and name in _field_names(type(self))
        and not isinstance(value, PluginOptions)  # a use is the read of an option in it
        and not getattr(_QUIET, "depth", 0)
        and (section := log.sections.get(id(self))) is not None
        and name not in section[2]
        and not _from_prefect()
    ):
        log.reads.add(f"{section[0]}.{name}")
    return value


@contextlib.contextmanager
def recorded_reads() -> Iterator[set[str]]:
    """Record every field read of the configs loaded inside the block, as 'section.key'
    ('section.options.plugin.key' for a plug-in's option).

    For tests: it patches the classes it watches while active (one recording at a time).
    """
    global _READS
    if _READS is not None:
        raise RuntimeError("recorded_reads() is already active")
    _READS = log = _ReadLog()
    try:
        yield log.reads
    finally:
        log.unpatch()
        _READS = None


def replaced_from_data(section: Any, **values: Any) -> Any:
    """`section` (a params section) with the fields `values` taken from a stage's data deps
    instead (a file an earlier stage wrote from params, e.g. a task's degradation): while
    reads are recorded, reading those fields is not a params read; its other fields' still are."""
    with unrecorded():
        new = dataclasses.replace(section, **values)
    log = _READS
    if log is not None and (entry := log.sections.get(id(section))) is not None:
        log._watch(new, entry[0], entry[2] | frozenset(values))
    return new


@contextlib.contextmanager
def unrecorded() -> Iterator[None]:
    """Reads inside are bookkeeping (a dump of the config, a resume digest), not inputs of an
    output: `recorded_reads` leaves them out."""
    _QUIET.depth = getattr(_QUIET, "depth", 0) + 1
    try:
        yield
    finally:
        _QUIET.depth -= 1
