"""Occupancy model: paper parameter counts, tri-plane conventions, PointNet, losses."""

import math

import pytest
import torch

from ddmi.config import load_config
from occupancy_fixtures import shape_data, shape_items  # noqa: F401 (fixtures)
from ddmi.models import build_autoencoder, parameter_counts
from ddmi.nn.pointnet import LocalPoolPointNet
from ddmi.vae.triplane_coords import PLANE_AXES, PLANES, cell_index, normalize_points, sample_triplane


def test_shapenet_parameter_counts():
    """docs/official-code.md §10: VAE 124.1 M (60.8 / 63.2), PointNet 2.31 M, MLP 0.63 M, UNet 678.7 M."""
    c = parameter_counts(load_config("shapenet"))
    want = {"vae_total": 124.1e6, "encoder": 60.8e6, "decoder": 63.2e6, "pointnet": 2.31e6,
            "mlp": 0.63e6, "denoiser": 678.7e6}
    for key, value in want.items():
        assert abs(c[key] - value) / value < 0.01, (key, c[key], value)


def test_shapenet_latent_is_three_planes_of_64x16x16():
    with torch.device("meta"):
        ae = build_autoencoder(load_config("shapenet"))
    assert ae.latent_shape == (192, 16, 16)
    assert ae.spec.plane_resolutions == [16, 32, 64]
    assert ae.half_extent == pytest.approx(0.55)


def test_plane_order_and_axes_are_written_once():
    assert PLANES == ("xy", "xz", "yz")
    assert PLANE_AXES == ((0, 1), (0, 2), (1, 2))


def test_pointnet_writes_where_the_mlp_reads():
    """A feature scattered for a point lands in the cell that grid sampling reads at that point:
    no half-cell offset between encoding and querying (docs/official-code.md §12.2.6)."""
    r = 8
    u = torch.tensor([[[0.33, -0.71, 0.12]]])                  # one point, normalised frame
    idx = cell_index(u, r)                                     # (1, 3, 1)
    planes = torch.zeros(1, 3, 1, r, r)
    for k in range(3):
        planes[0, k, 0].view(-1)[idx[0, k, 0]] = 10.0 ** k
    # query at the centre of each plane's cell: exactly the written value (sum over planes)
    centres = []
    for k, (a, b) in enumerate(PLANE_AXES):
        col, row = int(idx[0, k, 0]) % r, int(idx[0, k, 0]) // r
        centres.append({a: -1 + (2 * col + 1) / r, b: -1 + (2 * row + 1) / r})
    # the xy cell fixes x and y, the xz cell z: one point at all three cell centres
    q = torch.tensor([[[centres[0][0], centres[0][1], centres[1][2]]]])
    assert torch.allclose(sample_triplane(planes, q), torch.tensor([[[111.0]]]))
    # and the cells' centres are within half a cell of the point itself
    assert (q - u).abs().max() <= 1 / r + 1e-6


def test_pointnet_pools_per_cell_and_leaves_empty_cells_zero():
    torch.manual_seed(0)
    net = LocalPoolPointNet(hidden=16, blocks=3, out_channels=4, resolution=8)
    u = torch.rand(2, 50, 3) * 2 - 1
    planes = net(u)
    assert planes.shape == (2, 3, 4, 8, 8)
    idx = cell_index(u, 8)
    for k in range(3):
        occupied = torch.zeros(2, 64, dtype=torch.bool)
        occupied.scatter_(1, idx[:, k], True)
        flat = planes[:, k].flatten(2)                          # (B, C, 64)
        assert (flat.abs().sum(1)[~occupied] == 0).all()
    # permutation invariance
    perm = torch.randperm(50)
    assert torch.allclose(net(u[:, perm]), planes, atol=1e-5)


def test_normalisation_maps_the_padded_box_to_the_unit_cube():
    p = torch.tensor([[0.55, -0.55, 0.0], [0.7, 0.0, -0.275]])
    assert torch.allclose(normalize_points(p, 0.1), torch.tensor([[1.0, -1.0, 0.0], [1.0, 0.0, -0.5]]))


def test_tiny_loss_is_bce_plus_kl_plus_sn_and_backpropagates(shape_items):
    cfg = load_config("shapes-tiny")
    torch.manual_seed(0)
    ae = build_autoencoder(cfg)
    batch = shape_items[:2]
    rand = ae.random_inputs(torch.Generator().manual_seed(0), 2)
    loss, logs = ae(batch, rand, kl_weight=0.5, sn_weight=0.25)
    assert torch.allclose(loss, logs["bce"] + 0.5 * logs["kl"] + 0.25 * logs["sn"], rtol=1e-5)
    # an untrained net predicts ~0 logits: BCE ~ ln 2 per query point, summed
    assert logs["bce"].item() == pytest.approx(cfg.shapes.num_queries * math.log(2), rel=0.2)
    loss.backward()
    for name in ("pointnet", "vae", "mlp"):
        grads = [p.grad for p in getattr(ae, name).parameters() if p.grad is not None]
        assert grads and any(g.abs().sum() > 0 for g in grads), name


def test_latent_stacks_planes_in_plane_order():
    cfg = load_config("shapes-tiny")
    torch.manual_seed(0)
    ae = build_autoencoder(cfg).eval()
    e = ae.spec.embed_dim
    z = torch.zeros(1, *ae.latent_shape)
    base = [p.clone() for p in ae.vae.decode(z)]
    z[:, e:2 * e] = 3.0                                         # perturb only the xz plane's latent
    out = ae.vae.decode(z)
    # the post-quant convs are per plane and the first decoder layers are shared, so the xz
    # plane's decoded features must change the most
    diff = (out[0] - base[0]).abs().flatten(2).mean(-1).mean(0)  # per plane
    assert diff.argmax().item() == PLANES.index("xz")
