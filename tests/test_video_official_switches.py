"""The video domain's official-compatibility switches (``video.*``; set by the importer of official
checkpoints, ddmi.domains.video.official): what each changes, and that ddmi's defaults are untouched."""

import torch

from ddmi.config import load_config
from ddmi.domains.video.model import VideoAutoencoder, VideoMLP, grid_points, render_clip
from ddmi.fields import Field, pixel_centers
from ddmi.nn.timesformer import official_axial_angles, official_frame_angles, rotate_pairs

C, T, R = 4, 8, 16
SWITCHES = {"video": {"official_rotary": True, "collapse_readout": "first", "collapse_norm": False,
                      "latent_order": "xy,yt,xt", "official_query": True}}


def _varies(clip: torch.Tensor, dims) -> bool:
    return bool((clip - clip.mean(dim=dims, keepdim=True)).abs().max() > 1e-4)


def test_official_query_reads_the_time_planes_transposed():
    """Official MLPVideo (docs/official-code.md §12.2.2): a time plane varying only along its rows (T) changes the
    video along y (xt) or x (yt), not along t; one varying along its columns changes it along t."""
    torch.manual_seed(0)
    mlp = VideoMLP(plane_channels=C, num_scales=1, hidden=32, official_query=True)
    for p in mlp.parameters():
        torch.nn.init.normal_(p, std=0.3)
    z = torch.zeros
    rows = torch.randn(1, C, T, 1).expand(1, C, T, R)
    cols = torch.randn(1, C, 1, R).expand(1, C, T, R)
    clip = render_clip(Field([z(1, C, R, R), rows, z(1, C, T, R)], mlp, {}), R, T)
    assert _varies(clip, 3) and not _varies(clip, (2, 4))                 # xt rows -> y
    clip = render_clip(Field([z(1, C, R, R), z(1, C, T, R), rows], mlp, {}), R, T)
    assert _varies(clip, 4) and not _varies(clip, (2, 3))                 # yt rows -> x
    clip = render_clip(Field([z(1, C, R, R), cols, z(1, C, T, R)], mlp, {}), R, T)
    assert _varies(clip, 2) and not _varies(clip, (3, 4))                 # columns -> t


def test_switches_keep_the_keys_but_the_collapser_norms():
    base = load_config("video-tiny")
    on = load_config("video-tiny", SWITCHES)
    k0, k1 = set(VideoAutoencoder(base).state_dict()), set(VideoAutoencoder(on).state_dict())
    assert k1 <= k0 and {k for k in k0 - k1 if ".collapse." not in k or ".norm." not in k} == set()


def test_latent_order_round_trip_and_official_layout():
    ae = VideoAutoencoder(load_config("video-tiny", SWITCHES))
    s = ae.spec
    planes = [torch.randn(2, 3, r, c) for r, c in s.plane_shapes()]
    tokens = s.to_latent(planes)
    assert all(torch.equal(a, b) for a, b in zip(s.from_latent(tokens), planes))
    n_xy = planes[0][0, 0].numel()
    n_t = planes[1][0, 0].numel()
    assert torch.equal(tokens[..., n_xy:n_xy + n_t], planes[2].flatten(2))  # official: xy, then ddmi's yt


def test_official_rotary_angles():
    """Frame angles: index x 10000^(-2j/d), listed twice; axial: rows then columns, each repeated
    for its channel pair; the pair rotation turns (a, b) into (-b, a)."""
    a = official_frame_angles(3, 8)
    assert torch.allclose(a[2, :4], 2 * 10000 ** (-torch.arange(0, 8, 2) / 8)) and torch.equal(a[:, :4], a[:, 4:])
    s = official_axial_angles(2, 3, 8)
    assert s.shape == (6, 8) and torch.equal(s[:, 0::2], s[:, 1::2])
    assert torch.allclose(s[0, :2], -torch.pi * torch.tensor([1.0, 1.0]))
    assert torch.allclose(s[5, 4], torch.tensor(torch.pi))
    assert torch.equal(rotate_pairs(torch.tensor([1.0, 2.0, 3.0, 4.0])), torch.tensor([-2.0, 1.0, -4.0, 3.0]))


def test_grid_points_of_the_official_grids():
    x, t = pixel_centers(R), pixel_centers(T)
    xy = torch.stack([x[None].expand(R, R), x[:, None].expand(R, R)])[None]
    xt = torch.stack([t[:, None].expand(T, R), x[None].expand(T, R)])[None]
    pts = grid_points(xy, xt, xt.clone())
    assert pts.shape == (T * R * R, 3)
    assert torch.equal(pts[R * R * 2 + R * 3 + 5], torch.stack([x[5], x[3], t[2]]))
