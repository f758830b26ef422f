"""Gaussian diffusion: schedules, forward process and losses, samplers.

Takes the denoising network as an argument (any callable `model(x_t, t, cond)`); contains no
network code.
"""

from diffenhance.diffusion.formulations import (
    FORMULATIONS,
    formulation_loss,
    formulation_sample,
)
from diffenhance.diffusion.process import (
    LOSSES,
    PREDICTIONS,
    eps_to_x0,
    from_model_range,
    make_target,
    min_snr_weight,
    pred_to_x0_eps,
    q_sample,
    to_model_range,
    training_loss,
    v_to_eps,
    v_to_x0,
    x0_to_eps,
)
from diffenhance.diffusion.samplers import (
    SAMPLERS,
    ddim_sample,
    ddpm_sample,
    sample,
    trailing_timesteps,
)
from diffenhance.diffusion.schedule import Schedule, make_betas

__all__ = [
    "FORMULATIONS",
    "formulation_loss",
    "formulation_sample",
    "LOSSES",
    "PREDICTIONS",
    "SAMPLERS",
    "Schedule",
    "ddim_sample",
    "ddpm_sample",
    "eps_to_x0",
    "from_model_range",
    "make_betas",
    "make_target",
    "min_snr_weight",
    "pred_to_x0_eps",
    "q_sample",
    "sample",
    "to_model_range",
    "trailing_timesteps",
    "training_loss",
    "v_to_eps",
    "v_to_x0",
    "x0_to_eps",
]
