"""NeRF model: paper parameter counts, a non-linear field, one frame, batches of several objects."""

import math

import pytest
import torch
import torch.nn.functional as F

from ddmi.config import load_config
from ddmi.errors import ConfigError
from ddmi.models import build_autoencoder, parameter_counts
from ddmi.domains.nerf.model import NeRFMLP, positional_encoding
from ddmi.vae.triplane_coords import cell_index


def test_srn_cars_parameter_counts():
    """docs/official-code.md §10: VAE 124.1 M, PointNet 2.31 M, MLPNeRF 0.55 M, UNet 678.7 M (within 1 %)."""
    c = parameter_counts(load_config("srn_cars"))
    want = {"vae_total": 124.1e6, "pointnet": 2.31e6, "mlp": 0.55e6, "denoiser": 678.7e6}
    for key, value in want.items():
        assert abs(c[key] - value) / value < 0.01, (key, c[key], value)
    assert c["mlp"] == 554_116          # 159 -> 256 x 6 (415 at the skips), heads 1 and 256 + 27 -> 128 -> 3


def test_srn_cars_latent_and_planes():
    with torch.device("meta"):
        ae = build_autoencoder(load_config("srn_cars"))
    assert ae.latent_shape == (192, 16, 16)
    assert ae.spec.plane_resolutions == [64] and ae.spec.plane_channels == 32   # one 32 x 64^2 plane each
    assert ae.mlp.layers[0].in_features == 96 + 63 and ae.mlp.layers[2].in_features == 256 + 159
    assert ae.mlp.rgb_hidden.in_features == 256 + 27
    assert ae.pointnet.fc_pos.in_features == 6


def test_positional_encoding():
    x = torch.tensor([[0.5, -1.0, 0.25]])
    pe = positional_encoding(x, 2)
    assert pe.shape == (1, 15)
    assert torch.allclose(pe[0, :3], x[0])
    assert torch.allclose(pe[0, 3:9], torch.sin(torch.tensor([0.5, -1.0, 0.25, 1.0, -2.0, 0.5])))


def test_the_field_is_not_affine():
    """docs/official-code.md §12.2.3: the official activations are LeakyReLU(slope=1) (identity). Ours are ReLUs:
    with constant plane features and no positional encoding, the pre-softplus density along a
    line is not affine in the position."""
    torch.manual_seed(0)
    mlp = NeRFMLP(plane_channels=4, depth=4, width=32, skips=(2,), multires=0, multires_views=0)
    planes = [torch.ones(1, 3, 4, 8, 8)]
    t = torch.linspace(-0.9, 0.9, 101)
    u = torch.stack([t, 0.3 * t, -0.5 * t], -1)
    coords = torch.cat([u, F.normalize(torch.ones_like(u), dim=-1)], -1)[None]
    sigma = mlp(planes, coords)[0, :, 0]
    raw = torch.log(torch.expm1(sigma.double().clamp_min(1e-12)))
    second = raw[2:] - 2 * raw[1:-1] + raw[:-2]
    assert second.abs().max() > 1e-3 * (raw.max() - raw.min())
    assert all(not isinstance(m, torch.nn.LeakyReLU) for m in mlp.modules())


def test_one_frame_for_encoding_and_rendering():
    """docs/official-code.md §12.2.4: a world point is normalised by the same half extent for the PointNet cells and
    for the plane queries; the density is exactly zero outside the box."""
    cfg = load_config("nerf-tiny", ["nerf.half_extent=1.25"])
    ae = build_autoencoder(cfg)
    p = torch.tensor([[[0.5, -1.0, 1.2, 0.1, 0.2, 0.3]]])
    u_enc = ae.encoder_input(p)[..., :3]
    assert torch.allclose(u_enc, p[..., :3] / 1.25) and torch.allclose(ae.normalize(p[..., :3]), u_enc)
    assert torch.allclose(ae.encoder_input(p)[..., 3:], p[..., 3:] * 2 - 1)
    assert cell_index(ae.encoder_input(p), 32).shape == (1, 3, 1)
    z = torch.randn(1, *ae.latent_shape)
    q = ae.field_query(ae.decode(z))
    inside, outside = torch.tensor([[[0.3, 0.2, -0.4]]]), torch.tensor([[[1.3, 0.0, 0.0]]])
    d = torch.tensor([[[0.0, 0.0, -1.0]]])
    assert q(outside, d)[0].item() == 0.0 and q(inside, d)[0].item() > 0.0


def test_batches_of_several_objects(tmp_path):
    """The official stage 1 only works with batch 1; here B objects render independently: a batch
    of two latents gives each object's own image, and the loss of a batch is the mean of the
    objects' losses."""
    torch.manual_seed(0)
    cfg = load_config("nerf-tiny", ["loss.sn_reg=false", "nerf.num_rays=16", "nerf.num_samples=8"])
    ae = build_autoencoder(cfg).eval()
    z = torch.randn(2, *ae.latent_shape)
    from ddmi.domains.nerf.outputs import render_latents
    from ddmi.render.volume import turntable_poses
    poses = turntable_poses(2, radius=3.2, elevation=0.3)
    both = render_latents(ae, z, poses, 8)
    for i in range(2):
        assert torch.allclose(both[i], render_latents(ae, z[i:i + 1], poses, 8)[0], atol=1e-5)
    batch = torch.zeros(2, ae.num_points + 16, 9)
    batch[:, :ae.num_points] = torch.rand(2, ae.num_points, 9) * 2 - 1
    batch[:, ae.num_points:, 0:3] = torch.tensor([0.0, 0.0, 3.2])
    batch[:, ae.num_points:, 3:6] = torch.randn(2, 16, 3) * 0.1 + torch.tensor([0.0, 0.0, -1.0])
    batch[:, ae.num_points:, 6:9] = torch.rand(2, 16, 3)
    rand = ae.random_inputs(torch.Generator().manual_seed(0), 2)
    loss, _ = ae(batch, rand, kl_weight=0.0, sn_weight=0.0)
    singles = [ae(batch[i:i + 1], {k: v[i:i + 1] for k, v in rand.items()}, kl_weight=0.0, sn_weight=0.0)[0]
               for i in range(2)]
    assert torch.allclose(loss, (singles[0] + singles[1]) / 2, rtol=1e-4)


def test_field_query_is_chunk_invariant():
    torch.manual_seed(0)
    ae = build_autoencoder(load_config("nerf-tiny")).eval()
    z = torch.randn(2, *ae.latent_shape)
    coords = torch.cat([torch.rand(2, 100, 3) * 2 - 1, F.normalize(torch.randn(2, 100, 3), dim=-1)], -1)
    with torch.inference_mode():
        a = ae.decode(z, chunk=7).query(coords)
        b = ae.decode(z).query(coords)
    assert a.shape == (2, 100, 4) and torch.allclose(a, b, atol=1e-6)
    assert (a[..., 0] >= 0).all() and ((a[..., 1:] >= 0) & (a[..., 1:] <= 1)).all()


@pytest.mark.parametrize("override, key", [
    ("nerf.near=7", "nerf.near"), ("nerf.skips=[9]", "nerf.skips"), ("nerf.num_rays=0", "nerf.num_rays"),
    ("nerf.half_extent=0", "nerf.half_extent"), ("nerf.num_samples=1", "nerf.num_samples"),
    ("nerf.point_rgb_weight=-1", "nerf.point_rgb_weight"), ("nerf.posterior_logvar_init=-40", "nerf.posterior_logvar_init"),
])
def test_bad_nerf_values_are_rejected_naming_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config("nerf-tiny", [override])


def _red_and_blue_clouds(n: int = 1024) -> torch.Tensor:
    """Two clouds with the same points, one red and one blue: ``(2, n, 6)``."""
    xyz = torch.rand(1, n, 3, generator=torch.Generator().manual_seed(0)) * 1.2 - 0.6
    colours = torch.tensor([[0.9, 0.1, 0.1], [0.1, 0.2, 0.9]])[:, None].expand(2, n, 3)
    return torch.cat([xyz.expand(2, n, 3), colours], dim=-1)


def test_initial_posterior_tells_objects_apart_with_little_noise():
    """docs/nerf.md: at initialisation the posterior means are at the prior's scale, so a red and
    a blue cloud of the same points start well apart, and the posterior noise is small
    (std = exp(posterior_logvar_init / 2)) instead of the unit noise that drowned them."""
    torch.manual_seed(0)
    ae = build_autoencoder(load_config("nerf-tiny"))
    with torch.no_grad():
        post = ae.encode(_red_and_blue_clouds())
    assert 0.5 < float(post.mean.std()) < 2.0, float(post.mean.std())
    assert float((post.mean[0] - post.mean[1]).abs().mean()) > 0.3
    assert torch.allclose(post.std, torch.full_like(post.std, math.exp(-3.0)))


def test_field_keeps_its_signal_through_depth():
    """He initialisation: with unit-variance plane features, the last hidden layer's
    pre-activations are about as large as the first's, and the colour responds to the features
    (PyTorch's default initialisation shrinks the signal ~2.4x per ReLU layer)."""
    torch.manual_seed(0)
    mlp = NeRFMLP(plane_channels=16, depth=6, width=64, skips=(2, 4), multires=6, multires_views=2)
    pre = []
    hooks = [layer.register_forward_hook(lambda m, i, o: pre.append(o.std().item())) for layer in mlp.layers]
    planes = [torch.randn(2, 3, 16, 8, 8)]
    coords = torch.cat([torch.rand(2, 4096, 3) * 2 - 1, F.normalize(torch.randn(2, 4096, 3), dim=-1)], dim=-1)
    with torch.no_grad():
        out = mlp(planes, coords)
        other = mlp([torch.randn(2, 3, 16, 8, 8)], coords)
    for h in hooks:
        h.remove()
    assert pre[-1] / pre[0] > 0.5, pre
    assert float((out[..., 1:] - other[..., 1:]).abs().mean()) > 0.02
