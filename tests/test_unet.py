"""ADM UNet: official parameter counts, shapes, zero init, attention, checkpointing."""

import math

import pytest
import torch
import torch.nn.functional as F

from ddmi.nn.unet import AttentionBlock, UNet, timestep_embedding


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These tensors are tiny: one intra-op thread avoids OpenMP contention (up to 15x slower
    when the two cores are shared with another process)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _count(**kwargs) -> int:
    with torch.device("meta"):
        net = UNet(**kwargs)
    return sum(p.numel() for p in net.parameters())


# (config, official parameter count in millions): spec sections 10 / 11.2 and
# reference/official-cpu-timings.md.
OFFICIAL = [
    pytest.param(  # AFHQ
        dict(in_channels=64, out_channels=64, model_channels=224, channel_mult=(1, 2, 4, 6),
             attention_resolutions=(8, 4, 2)), 519.2, id="afhq"),
    pytest.param(  # CelebA-HQ
        dict(in_channels=64, out_channels=64, model_channels=256, channel_mult=(1, 2, 4, 8),
             attention_resolutions=(8, 4, 2)), 1015.0, id="celebahq"),
    pytest.param(  # ShapeNet / srn_cars (3 planes x 64 ch stacked)
        dict(in_channels=192, out_channels=192, model_channels=256, channel_mult=(1, 2, 4, 6),
             attention_resolutions=(8, 4, 2)), 678.7, id="shapenet"),
    pytest.param(  # reduced CPU config of the official timings
        dict(in_channels=16, out_channels=16, model_channels=64, channel_mult=(1, 2, 4),
             attention_resolutions=(4, 2)), 16.07, id="cpu"),
]


@pytest.mark.parametrize("cfg, millions", OFFICIAL)
def test_parameter_count_matches_official(cfg, millions):
    n = _count(num_res_blocks=2, num_head_channels=32, **cfg)
    assert abs(n / 1e6 - millions) / millions < 0.01, f"{n / 1e6:.3f} M vs official {millions} M"
    # The counts agree to the rounding of the published figure, not just 1%.
    assert abs(n / 1e6 - millions) < 0.05


def tiny(**kw) -> UNet:
    cfg = dict(in_channels=3, out_channels=5, model_channels=32, channel_mult=(1, 2),
               num_res_blocks=1, attention_resolutions=(2,), num_head_channels=16, norm_groups=8)
    cfg.update(kw)
    return UNet(**cfg)


def _randomise(net: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(0.2 * torch.randn(p.shape, generator=g))


def test_output_shape_and_zero_at_init():
    torch.manual_seed(0)
    net = tiny()
    x = torch.randn(2, 3, 8, 12)
    out = net(x, torch.tensor([0, 999]))
    assert out.shape == (2, 5, 8, 12)
    assert torch.count_nonzero(out) == 0, "zero-initialised output conv must give exactly 0"
    # ...but gradients still reach the output conv, so the network can learn.
    (out * torch.randn(2, 5, 8, 12)).sum().backward()
    assert net.out[-1].weight.grad.abs().sum() > 0


def test_residual_branches_zero_initialised():
    net = tiny()
    for m in net.modules():
        if isinstance(m, AttentionBlock):
            assert torch.count_nonzero(m.proj_out.weight) == 0
    x = torch.randn(1, 64, 4, 4)
    block = net.middle_block[1]
    assert torch.equal(block(x), x), "attention must be the identity at init"


def test_output_depends_on_input_and_time():
    net = tiny()
    _randomise(net)
    x = torch.randn(2, 3, 8, 8)
    t = torch.tensor([10, 10])
    a = net(x, t)
    assert torch.isfinite(a).all() and a.abs().mean() > 0
    assert not torch.allclose(a, net(x, torch.tensor([500, 500])))
    assert not torch.allclose(a, net(x + 0.1, t))
    # Float timesteps are accepted and match integer ones.
    assert torch.allclose(a, net(x, t.float()))
    # Batch elements are independent.
    assert torch.allclose(a[:1], net(x[:1], t[:1]), atol=1e-5)


def test_attention_block_matches_naive_multihead():
    torch.manual_seed(0)
    blk = AttentionBlock(channels=32, head_channels=8, groups=8)
    _randomise(blk, 1)
    x = torch.randn(2, 32, 3, 5)
    b, c, h, w = x.shape
    heads, d = 4, 8
    qkv = blk.qkv(blk.norm(x)).reshape(b, 3, heads, d, h * w)
    q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]  # (B, heads, d, HW)
    att = torch.softmax(torch.einsum("bhdi,bhdj->bhij", q, k) / math.sqrt(d), dim=-1)
    o = torch.einsum("bhij,bhdj->bhdi", att, v).reshape(b, c, h, w)
    assert torch.allclose(blk(x), x + blk.proj_out(o), atol=1e-5)


def test_timestep_embedding():
    t = torch.tensor([0, 1, 999])
    e = timestep_embedding(t, 64)
    assert e.shape == (3, 64)
    assert torch.allclose(e[0, :32], torch.ones(32)) and torch.allclose(e[0, 32:], torch.zeros(32))
    assert torch.allclose(e[1, 0], torch.cos(torch.tensor(1.0)))
    assert timestep_embedding(t, 7).shape == (3, 7)


def test_gradient_checkpointing_gives_same_gradients():
    torch.manual_seed(0)
    a = tiny()
    _randomise(a)
    b = tiny(gradient_checkpointing=True)
    b.load_state_dict(a.state_dict())
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([3, 700])
    for net in (a, b):
        net.train()
        net(x, t).square().mean().backward()
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(pa.grad, pb.grad, atol=1e-6), name


def test_clear_errors_on_bad_input():
    net = tiny()
    with pytest.raises(AssertionError, match="expected x of shape"):
        net(torch.randn(1, 4, 8, 8), torch.tensor([1]))
    with pytest.raises(AssertionError, match="divisible by 2"):
        net(torch.randn(1, 3, 7, 8), torch.tensor([1]))
    with pytest.raises(AssertionError, match="divisible by num_head_channels"):
        tiny(num_head_channels=24)
    with pytest.raises(AssertionError, match="norm_groups"):
        tiny(model_channels=36)


def test_decoder_structure_is_adm():
    """num_res_blocks + 1 decoder blocks per level; upsampling at the end of all but the top."""
    net = tiny(channel_mult=(1, 2, 3), num_res_blocks=2)
    assert len(net.input_blocks) == 1 + 3 * 2 + 2
    assert len(net.output_blocks) == 3 * 3
    ups = [i for i, blk in enumerate(net.output_blocks) if type(blk[-1]).__name__ == "Upsample"]
    assert ups == [2, 5]
    out = net(torch.randn(1, 3, 8, 8), torch.tensor([5]))
    assert out.shape == (1, 5, 8, 8)
    assert F.mse_loss(out, torch.zeros_like(out)) == 0
