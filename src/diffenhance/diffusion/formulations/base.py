"""The formulation registry: one object per way of training and sampling a restorer.

A formulation owns everything that differs between restoration recipes, and nothing else
branches on its name (EDM's shape: each recipe is one class chosen once by name):

* `build_network(model_cfg, dcfg, scale, cond_channels)` - the freshly initialised network it
  trains (on the network `model_cfg.space` names: `nn.build_cond_net`);
* `loss(...)` - its training loss on one batch;
* `prepare(...)` + `sample_once(...)` - its sampler (the shared driver
  `formulations.formulation_sample` handles sample averaging and per-item generators);
* `default_steps` / `default_samples` - what `enhance` runs when neither params nor the
  checkpoint say otherwise;
* `has_knob` - whether steps/samples change its output (the fidelity <-> sharpness knob);
* `detail_knob` - whether `sample_once` also takes `detail` in [0, 1] (posterior mean .. sample);
* `init_tensors(net, tensors, meta)` - an init checkpoint's tensors mapped onto its network;
* `option_sections(dcfg)` - the `diffusion.options` sections it reads (what its training states
  depend on);
* `draws_noise(dcfg, sampler, eta)` - whether sampling draws noise after its start;
* `deterministic_reason(dcfg, sampler, eta)` - why its samples cannot differ (None: they do), so
  an uncertainty map (the spread of N samples) is refused for it;
* `sampler_label(sampler)` - the sampler it actually runs for `infer.sampler`, as reports name
  it (the method keys of evaluate, e.g. `model_euler4`).

Register a new one with the `register` decorator on an ordinary class; config validation,
training, evaluation, compare and enhance then accept its name with no other change:

    @register
    class Mine(Formulation):
        name = "mine"
        ...
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch

from diffenhance.config import DiffusionConfig, ModelConfig
from diffenhance.diffusion.noise import FieldGenerator
from diffenhance.diffusion.schedule import Schedule
from diffenhance.nn import build_cond_net
from diffenhance.registry import FORMULATIONS
from diffenhance.restoration.base import image_of

Generators = torch.Generator | Sequence[torch.Generator] | None


class _MeanStart:
    """`MEAN_START`'s type: a stand-in for a generator that draws nothing."""

    device = torch.device("cpu")

    def __repr__(self) -> str:
        return "MEAN_START"


#: Passed as a formulation's `generator`: its start noise is the noise distribution's mean (0),
#: so its one-step output is a function of the condition alone (pmrf's posterior mean:
#: `pmrf.posterior_mean`). Per-step noise (`step_gen`) is separate.
MEAN_START = _MeanStart()
Model = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
Stats = dict[str, torch.Tensor]


class Formulation:
    """Base class of a registered formulation (stateless: one instance per name)."""

    name: ClassVar[str]
    default_steps: ClassVar[int] = 1  # enhance's steps when params and checkpoint are silent
    default_samples: ClassVar[int] = 1  # ... and samples (mean of N)
    has_knob: ClassVar[bool] = True  # False: steps and samples do not change the output
    uses_start_noise: ClassVar[bool] = True  # False: no randomness at all (samples = 1 suffices)
    # True: `sample_once` takes `detail` in [0, 1] (0 = its posterior mean, 1 = its sample)
    detail_knob: ClassVar[bool] = False

    def build_network(
        self, model_cfg: ModelConfig, dcfg: DiffusionConfig, scale: int, cond_channels: int = 3
    ) -> torch.nn.Module:
        """The freshly initialised network for a task of `scale` (1, 2, 4: output size / input
        size; an LR-space network needs it) whose condition has `cond_channels` (the task's
        `channels`: the image, then its side inputs; see `cond_image`); must expose
        `size_multiple` (output-space).

        Default: the conditional network of `model.space` (noisy state and condition in,
        3 channels out: `nn.build_cond_net`)."""
        return build_cond_net(model_cfg, scale, in_channels=3 + cond_channels, out_channels=3)

    def label(self, dcfg: DiffusionConfig) -> str:
        """How model listings name this formulation with `dcfg`'s options (default: its name)."""
        return self.name

    def option_sections(self, dcfg: DiffusionConfig) -> tuple[str, ...]:
        """The `diffusion.options` sections its training and sampling read (default: its own,
        where it has one; pmrf adds its mean's). A training state is resumed across changes to
        the others (`train.resume_params`)."""
        return (self.name,)

    def init_tensors(
        self, net: torch.nn.Module, tensors: dict[str, torch.Tensor], meta: dict[str, str]
    ) -> dict[str, torch.Tensor]:
        """The tensors of an init checkpoint (`train.init_from`, with its metadata) mapped onto
        `net`'s names (default: as they are; pmrf puts a stage-1 model under ``mean.``)."""
        return tensors

    def scratch_problem(self, dcfg: DiffusionConfig) -> str | None:
        """Why training `dcfg` from scratch (no `train.init_from` checkpoint) cannot work, or
        None (default: it can)."""
        return None

    def loss(
        self,
        dcfg: DiffusionConfig,
        model: torch.nn.Module,
        sched: Schedule,
        x0: torch.Tensor,
        cond: torch.Tensor,
        *,
        generator: torch.Generator | None,
    ) -> tuple[torch.Tensor, Stats]:
        """(scalar loss with grad, stats: detached 0-d tensors incl. 'loss') on one batch.

        x0: [N, 3, H, W], cond: [N, C, H, W] in [-1, 1] (cond = degraded image at the output
        size, then any side channels: `cond_image`). `model`
        may be wrapped (DDP, torch.compile): call it once; reach inner methods via `unwrap`."""
        raise NotImplementedError

    def draws_noise(self, dcfg: DiffusionConfig, sampler: str, eta: float) -> bool:
        """Whether sampling draws noise after its start (then per-item generators run item by
        item, so a result does not depend on its batch)."""
        return eta > 0

    def deterministic_reason(self, dcfg: DiffusionConfig, sampler: str, eta: float) -> str | None:
        """Why two samples drawn with different generators are the same image, or None when
        they differ (the start noise or per-step noise reaches the output). Default: from
        `uses_start_noise` and `draws_noise`."""
        if self.uses_start_noise or self.draws_noise(dcfg, sampler, eta):
            return None
        return f"the {self.name} formulation draws no noise"

    def sampler_label(self, sampler: str) -> str:
        """The sampler `sample_once` runs for `infer.sampler` = `sampler`, as reports and
        evaluate's method keys name it (default: `sampler` itself, ddim or ddpm)."""
        return sampler

    def prepare(self, dcfg: DiffusionConfig, model: torch.nn.Module, cond: torch.Tensor) -> Any:
        """Work shared by every sample of one batch (e.g. a predictor's estimate)."""
        return cond

    def sample_once(
        self,
        dcfg: DiffusionConfig,
        model: torch.nn.Module,
        sched: Schedule,
        cond: torch.Tensor,
        prepared: Any,
        *,
        steps: int,
        sampler: str,
        eta: float,
        generator: Generators,
        step_gen: torch.Generator | None,
        progress: bool,
        clip_x0: bool,
    ) -> torch.Tensor:
        """One sample x0 [N, 3, H, W] (unclipped, model range). The start noise is drawn from
        `generator` (one or one per item: `draw_normal`), per-step noise from `step_gen`;
        `clip_x0` asks the sampler to clip its intermediate x0 estimates to [-1, 1]."""
        raise NotImplementedError


_REGISTRY = FORMULATIONS  # name -> the Formulation instance (the ground floor's registry)
register = _REGISTRY.register  # class decorator
unregister = _REGISTRY.unregister
formulation_names = _REGISTRY.names  # in registration order


def get_formulation(name: str) -> Formulation:
    """The registered formulation `name`; ValueError listing the registered names otherwise."""
    _REGISTRY.load()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown diffusion.formulation {name!r}; choose one of {formulation_names()}"
        ) from None


# ----------------------------------------------------------------------------- shared helpers


def cond_image(cond: torch.Tensor) -> torch.Tensor:
    """The degraded image in a condition [N, C, H, W] (`restoration.image_of`). Further
    channels are the task's side inputs, which the network sees but nothing samples from
    (inpainting's mask)."""
    return image_of(cond, axis=1)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside DDP (`.module`) and/or torch.compile (`._orig_mod`) wrappers."""
    while True:
        inner = getattr(model, "_orig_mod", None) or getattr(model, "module", None)
        if not isinstance(inner, torch.nn.Module):
            return model
        model = inner


def draw_normal(
    shape: Sequence[int], generator: Generators, device: torch.device | str
) -> torch.Tensor:
    """N(0, I) float32 of `shape` [N, ...] on `device`, drawn on the generator's device.

    One generator (or None: the global CPU RNG) draws the whole batch; a sequence of N
    generators draws item i from generator i (for N = 1 both give the same numbers);
    `MEAN_START` gives zeros (the mean of the distribution); a tile's `FieldGenerator` gives its
    crop of the image's noise field (`diffusion.noise`: overlapping tiles, the same numbers).
    """
    if generator is MEAN_START:
        return torch.zeros(tuple(shape), device=device)
    if isinstance(generator, torch.Generator) and not isinstance(generator, FieldGenerator):
        return torch.randn(tuple(shape), generator=generator, device=generator.device).to(device)
    if generator is None:
        return torch.randn(tuple(shape)).to(device)
    gens = [generator] if isinstance(generator, FieldGenerator) else list(generator)
    if len(gens) != shape[0]:
        raise ValueError(f"{len(gens)} generators for a batch of {shape[0]}: pass one per item")
    items = [
        g.draw(tuple(shape[1:])) if isinstance(g, FieldGenerator)
        else torch.randn(tuple(shape[1:]), generator=g, device=g.device)
        for g in gens
    ]  # fmt: skip
    return torch.stack(items).to(device)


def pixel_loss(pred: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-sample mean |pred - target| ('l1') or squared error ('mse'), float32 [N]."""
    err = pred.float() - target.float()
    return (err.abs() if kind == "l1" else err.square()).mean(dim=tuple(range(1, pred.ndim)))
