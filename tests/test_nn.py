"""The conditional U-Net: shapes, zero init, input validation, gradients, memory formats, bf16."""

from __future__ import annotations

import pytest
import torch

from diffenhance.config import ModelConfig
from diffenhance.nn import UNet, build_unet
from diffenhance.nn.layers import AttentionBlock, norm_groups, timestep_embedding

TINY = ModelConfig(base_channels=16, channel_mults=(1, 2), attn_resolutions=(2,), head_channels=8)


pytestmark = pytest.mark.usefixtures("one_thread")


def _inputs(n: int = 2, size: int = 16, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, size, size, generator=g)
    cond = torch.rand(n, 3, size, size, generator=g) * 2 - 1
    t = torch.randint(0, 1000, (n,), generator=g)
    return x, t, cond


def _perturb(model: torch.nn.Module, std: float = 0.05) -> None:
    """Make every zero-initialised layer non-zero, so that gradients reach every parameter."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * std)


@pytest.mark.parametrize(
    "cfg",
    [
        TINY,
        ModelConfig(base_channels=16, channel_mults=(1,), attn_resolutions=(), head_channels=16),
        ModelConfig(base_channels=15, channel_mults=(1, 2, 3), attn_resolutions=(1, 4)),
        ModelConfig(base_channels=12, channel_mults=(1, 2), num_res_blocks=2, head_channels=5),
        ModelConfig(base_channels=16, channel_mults=(1, 2), attn_resolutions=(64,)),
    ],
    ids=["tiny", "one-level", "odd-width", "two-blocks", "attn-beyond-depth"],
)
def test_shapes_dtype_and_zero_output_at_init(cfg: ModelConfig) -> None:
    torch.manual_seed(0)
    model = build_unet(cfg)
    assert isinstance(model, UNet)
    assert model.size_multiple == 2 ** (len(cfg.channel_mults) - 1)
    x, t, cond = _inputs(size=16)
    out = model(x, t, cond)
    assert out.shape == x.shape and out.dtype == torch.float32
    assert torch.equal(out, torch.zeros_like(out))  # zero-initialised output conv
    _perturb(model)
    out = model(x, t.float() + 0.5, cond)  # continuous timesteps are fine
    assert out.shape == x.shape and torch.isfinite(out).all() and out.abs().sum() > 0


def test_attention_placement_and_head_count() -> None:
    cfg = ModelConfig(base_channels=16, channel_mults=(1, 2, 2), attn_resolutions=(4,))
    model = build_unet(cfg)
    attn = [m for m in model.modules() if isinstance(m, AttentionBlock)]
    # ds=4 only at the deepest level: 1 down + 2 up blocks, plus the middle block.
    assert len(attn) == 4
    wide = build_unet(ModelConfig(base_channels=64, channel_mults=(1,), head_channels=32))
    assert wide.mid_attn.heads == 2
    assert AttentionBlock(30, head_channels=8).heads == 3  # largest divisor of 30 <= 30 // 8
    assert norm_groups(48) == 24 and norm_groups(15) == 15 and norm_groups(64) == 32


def test_timestep_embedding_is_sinusoidal() -> None:
    emb = timestep_embedding(torch.tensor([0.0, 3.0]), 7)
    assert emb.shape == (2, 7)
    assert torch.allclose(emb[0, :3], torch.ones(3)) and torch.all(emb[:, -1] == 0)
    assert torch.isclose(emb[1, 3], torch.sin(torch.tensor(3.0)))


def test_size_not_divisible_raises_with_actionable_message() -> None:
    model = build_unet(ModelConfig(base_channels=16, channel_mults=(1, 2, 2)))
    x = torch.zeros(1, 3, 18, 16)  # 18 high, 16 wide
    with pytest.raises(ValueError) as err:
        model(x, torch.zeros(1), x)
    msg = str(err.value)
    assert "16x18 (width x height)" in msg and "4" in msg and "diffenhance.infer pads" in msg


def test_input_validation() -> None:
    model = build_unet(TINY)
    x, t, cond = _inputs(n=2)
    with pytest.raises(ValueError, match="same batch size and spatial size"):
        model(x, t, cond[:, :, :8, :8])
    with pytest.raises(ValueError, match="cond must be"):
        model(x, t, cond[:, :2])
    with pytest.raises(ValueError, match="x_t must be"):
        model(torch.cat([x, x], 1), t, cond)
    with pytest.raises(ValueError, match="t must be"):
        model(x, torch.zeros(3), cond)
    assert model(x, 7, cond).shape == x.shape  # a scalar t is broadcast
    with pytest.raises(ValueError, match="base_channels"):
        build_unet(ModelConfig(base_channels=0))
    with pytest.raises(ValueError, match="downsampling factors"):
        build_unet(ModelConfig(attn_resolutions=(0,)))


def test_gradients_reach_every_parameter() -> None:
    torch.manual_seed(0)
    model = build_unet(TINY)
    _perturb(model)
    x, t, cond = _inputs()
    model(x, t, cond).square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing, f"no gradient reached: {missing}"


def test_channels_last_matches_contiguous() -> None:
    torch.manual_seed(0)
    model = build_unet(TINY)
    _perturb(model)
    x, t, cond = _inputs()
    ref = model(x, t, cond)
    model = model.to(memory_format=torch.channels_last)
    cl = torch.channels_last
    out = model(x.to(memory_format=cl), t, cond.to(memory_format=cl))
    assert torch.allclose(out, ref, atol=1e-5)


def test_bf16_autocast_on_cpu() -> None:
    torch.manual_seed(0)
    model = build_unet(TINY)
    _perturb(model)
    x, t, cond = _inputs()
    ref = model(x, t, cond)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, t, cond)
    assert out.dtype == torch.bfloat16 and out.shape == x.shape
    assert torch.allclose(out.float(), ref, atol=0.05 * ref.abs().max().item() + 1e-3)
