"""GPU checks (marked `gpu`, excluded from the default run; run by benchmarks/gpu_check.py).

On a machine without CUDA they skip, unless DIFFENHANCE_GPU_TESTS_ON_CPU=1 (what
`benchmarks/gpu_check.py --cpu` sets) runs them on the CPU to check the script itself.
"""

from __future__ import annotations

import os

import pytest
import torch

from diffenhance.config import load_config
from diffenhance.diffusion import Schedule, ddim_sample, training_loss
from diffenhance.nn import build_unet

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    if os.environ.get("DIFFENHANCE_GPU_TESTS_ON_CPU") == "1":
        return torch.device("cpu")
    pytest.skip("no CUDA device")


def _tiny():
    cfg = load_config(
        None,
        ["model.base_channels=32", "model.channel_mults=[1,2]", "model.attn_resolutions=[2]"],
    )
    torch.manual_seed(0)
    net = build_unet(cfg.model)
    for p in net.parameters():  # non-zero output layers so the checks see real values
        torch.nn.init.normal_(p, std=0.02) if p.ndim > 1 else None
    return cfg, net


def test_bf16_training_step_is_finite_and_learns(device):
    cfg, net = _tiny()
    net = net.to(device).to(memory_format=torch.channels_last)
    sched = Schedule.from_config(cfg.diffusion).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(8, 3, 32, 32, generator=g).to(device) * 2 - 1
    cond = x0.clone()
    t = torch.full((8,), 500, dtype=torch.long)
    losses = []
    for _ in range(30):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss, _ = training_loss(
                net, sched, x0, cond, prediction="v", loss="l1", t=t, generator=g
            )
        assert torch.isfinite(loss)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.7 * losses[0]


def test_bf16_sampling_matches_fp32(device):
    cfg, net = _tiny()
    net = net.to(device).eval()
    sched = Schedule.from_config(cfg.diffusion).to(device)
    g = torch.Generator().manual_seed(1)
    x_T = torch.randn(2, 3, 32, 32, generator=g).to(device)
    cond = torch.rand(2, 3, 32, 32, generator=g).to(device) * 2 - 1
    ref = ddim_sample(net, sched, x_T, cond, steps=4, prediction="v")
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        low = ddim_sample(net, sched, x_T, cond, steps=4, prediction="v")
    assert torch.isfinite(low).all()
    assert (low.float() - ref).abs().max() < 0.1  # bf16 has ~3 significant digits


def test_cuda_matches_cpu_in_fp32(device):
    cfg, net = _tiny()
    sched = Schedule.from_config(cfg.diffusion)
    g = torch.Generator().manual_seed(2)
    x_T = torch.randn(1, 3, 32, 32, generator=g)
    cond = torch.rand(1, 3, 32, 32, generator=g) * 2 - 1
    ref = ddim_sample(net.eval(), sched, x_T, cond, steps=4, prediction="v")
    out = ddim_sample(
        net.to(device), sched.to(device), x_T.to(device), cond.to(device), steps=4, prediction="v"
    )
    assert (out.cpu() - ref).abs().max() < 1e-3
