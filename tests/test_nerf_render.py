"""NeRF rendering: camera rays checked by hand, an analytic sphere, compositing, importance sampling."""

import math

import pytest
import torch

from ddmi.render.volume import (SRN_FOV, camera_rays, composite, focal_from_fov, look_at, orbit_pose,
                                render_rays, render_views, sample_pdf, stratified_depths)


def test_focal_of_the_srn_intrinsics():
    """docs/official-code.md §6: f = 0.5 W / tan(0.5 * 0.6911112) = 277.8 px at W = 200."""
    assert focal_from_fov(200) == pytest.approx(277.77, abs=0.01)
    assert focal_from_fov(200, SRN_FOV) == pytest.approx(100 / math.tan(0.3455556))


def test_rays_of_a_camera_on_the_z_axis():
    """Camera at (0, 0, 4) with the identity rotation (OpenGL: looks down -z, +y up)."""
    pose = torch.eye(4)
    pose[2, 3] = 4.0
    f = 10.0
    o, d = camera_rays(pose, 5, 5, f)                      # odd size: pixel (2, 2) is the centre
    assert torch.allclose(o, torch.tensor([0.0, 0.0, 4.0]).expand(5, 5, 3))
    assert torch.allclose(d[2, 2], torch.tensor([0.0, 0.0, -1.0]))
    # top-left pixel (row 0, col 0): centre (0.5, 0.5), 2 px left of and 2 px above the centre
    assert torch.allclose(d[0, 0], torch.tensor([-2 / f, 2 / f, -1.0]))
    assert torch.allclose(d[4, 3], torch.tensor([1 / f, -2 / f, -1.0]))


def test_rays_of_a_camera_on_the_x_axis_match_a_hand_computed_pose():
    """A camera at (4, 0, 0) looking at the origin with y up: it looks along -x, its right is -z
    (forward x up), so the top-left pixel's ray goes up (+y) and to the camera's left (+z)."""
    pose = look_at((4.0, 0.0, 0.0))
    want = torch.tensor([[0.0, 0.0, 1.0, 4.0], [0.0, 1.0, 0.0, 0.0], [-1.0, 0.0, 0.0, 0.0], [0, 0, 0, 1.0]])
    assert torch.allclose(pose, want, atol=1e-6)
    f = 10.0
    _, d = camera_rays(pose, 5, 5, f)
    assert torch.allclose(d[2, 2], torch.tensor([-1.0, 0.0, 0.0]), atol=1e-6)
    assert torch.allclose(d[0, 0], torch.tensor([-1.0, 2 / f, 2 / f]), atol=1e-6)
    # orbit_pose: azimuth 90 degrees, elevation 0 is that camera
    assert torch.allclose(orbit_pose(math.pi / 2, 0.0, 4.0), want, atol=1e-6)


def _sphere_query(radius=0.5, colour=(0.2, 0.6, 0.9), sigma=200.0):
    c = torch.tensor(colour)

    def query(points, dirs):
        inside = points.norm(dim=-1) <= radius
        return sigma * inside.float(), c.expand(*points.shape[:-1], 3)
    return query


def test_analytic_sphere_renders_the_expected_image():
    """A dense sphere of constant colour seen from (0, 0, 4): the pixels whose ray passes within
    the radius show its colour (opaque), the others the white background; depth = entry depth."""
    r, res = 0.5, 33
    pose = look_at((0.0, 0.0, 4.0))
    f = focal_from_fov(res)
    kw = dict(near=2.0, far=6.0, num_samples=256)
    img = render_views(_sphere_query(r), pose[None], res, res, f, **kw)[0, 0]       # (3, H, W)
    o, d = camera_rays(pose, res, res, f)
    dn = d / d.norm(dim=-1, keepdim=True)
    miss = torch.linalg.cross(dn, -o).norm(dim=-1)           # distance of the ray line to the centre
    hit, clear_miss = miss < r - 0.02, miss > r + 0.02
    assert hit.sum() > 50 and clear_miss.sum() > 500
    colour = torch.tensor([0.2, 0.6, 0.9])[:, None]
    assert (img[:, hit] - colour).abs().max() < 0.01
    assert (img[:, clear_miss] - 1.0).abs().max() < 1e-6
    out = render_rays(_sphere_query(r), o.reshape(1, -1, 3), d.reshape(1, -1, 3), **kw)
    acc, depth = out["acc"].reshape(res, res), out["depth"].reshape(res, res)
    assert (acc[hit] > 0.999).all() and (acc[clear_miss] == 0).all()
    # entry point at distance sqrt(16 - miss^2) - sqrt(r^2 - miss^2) along the ray, i.e. at
    # t = that / |d| (t is the depth along the optical axis); the first sample inside is at most
    # one bin (4 / 256) further
    entry = (torch.sqrt(16 - miss[hit] ** 2) - torch.sqrt(r ** 2 - miss[hit] ** 2)) / d[hit].norm(dim=-1)
    err = depth[hit] - entry
    assert err.min() > -1e-4 and err.max() < 1.2 * 4.0 / 256


def test_rendering_is_chunk_invariant_and_batched():
    torch.manual_seed(0)
    o = torch.randn(2, 50, 3) + torch.tensor([0.0, 0.0, 4.0])
    d = -o + 0.1 * torch.randn(2, 50, 3)
    q = _sphere_query(0.8, sigma=3.0)
    a = render_rays(q, o, d, near=2.0, far=6.0, num_samples=32, chunk=7)
    b = render_rays(q, o, d, near=2.0, far=6.0, num_samples=32, chunk=4096)
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6)


def test_compositing_formula_and_white_background():
    """alpha = 1 - exp(-sigma delta |d|); a ray through empty space is white, acc 0; the last
    interval ends at far (so a small density is not made opaque by a 1e10 interval)."""
    depths = torch.tensor([[2.0, 3.0, 4.0]])
    sigma = torch.tensor([[0.0, 0.5, 0.01]])
    rgb = torch.tensor([[[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])
    out = composite(sigma, rgb, depths, 5.0, torch.tensor([2.0]))
    a1 = 1 - math.exp(-0.5 * 1.0 * 2.0)
    a2 = 1 - math.exp(-0.01 * 1.0 * 2.0)
    w = torch.tensor([0.0, a1, (1 - a1) * a2])
    assert torch.allclose(out["weights"][0], w, atol=1e-6)
    acc = float(w.sum())
    assert out["acc"].item() == pytest.approx(acc, abs=1e-6)
    assert torch.allclose(out["rgb"][0], torch.tensor([w[1], w[2], 0.0]) + (1 - acc), atol=1e-6)
    empty = composite(torch.zeros(1, 3), rgb, depths, 5.0, torch.tensor([1.0]))
    assert torch.allclose(empty["rgb"], torch.ones(1, 3)) and empty["acc"].item() == 0


def test_stratified_depths_stay_in_their_bins():
    jitter = torch.rand(4, 10)
    t = stratified_depths(2.0, 6.0, 10, (4,), jitter=jitter)
    lower = torch.linspace(2.0, 6.0, 11)[:-1]
    assert ((t >= lower) & (t < lower + 0.4)).all()
    assert torch.allclose(stratified_depths(2.0, 6.0, 10, (1,))[0], lower + 0.2)


def test_importance_samples_follow_the_weights():
    bins = torch.linspace(0, 1, 11).expand(3, 11)
    weights = torch.zeros(3, 10)
    weights[:, 6] = 1.0
    s = sample_pdf(bins, weights, torch.rand(3, 64))
    assert ((s >= 0.599) & (s <= 0.701)).float().mean() > 0.99


def test_importance_sampling_renders_the_sphere_too():
    pose = look_at((0.0, 0.0, 4.0))
    q = _sphere_query(0.5)
    f = focal_from_fov(17)
    a = render_views(q, pose[None], 17, 17, f, near=2.0, far=6.0, num_samples=256)
    b = render_views(q, pose[None], 17, 17, f, near=2.0, far=6.0, num_samples=32, num_importance=64)
    assert (a - b).abs().mean() < 0.02
