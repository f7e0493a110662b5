"""The video model: plane orientation (rows = time), continuous time, shapes, the tri-plane UNet,
paper parameter counts, and a VAE overfitted on a few synthetic clips."""

import pytest
import torch

from ddmi.config import load_config
from ddmi.fields import Field
from ddmi.models import build_denoiser
from ddmi.models import build_autoencoder, parameter_counts
from ddmi.domains.video.model import VideoMLP, clip_coords, plane_features, render_clip, video_psnr
from ddmi.vae.spacetime import flatten_planes, split_planes

C, T, R = 4, 8, 16


def _planes(xy=None, xt=None, yt=None):
    z = torch.zeros
    return [z(1, C, R, R) if xy is None else xy, z(1, C, T, R) if xt is None else xt,
            z(1, C, T, R) if yt is None else yt]


def _varies(clip: torch.Tensor, dims) -> bool:
    return bool((clip - clip.mean(dim=dims, keepdim=True)).abs().max() > 1e-4)


def test_time_plane_rows_are_time():
    """A time plane that varies only along its rows changes the video only along t; one that
    varies only along its columns changes it only along x (xt) or y (yt). The official code
    reads its time planes transposed and fails the first half (docs/official-code.md §12.2.2)."""
    torch.manual_seed(0)
    mlp = VideoMLP(plane_channels=C, num_scales=1, hidden=32)
    for p in mlp.parameters():           # fc_1 starts at zero: give every layer some weight
        torch.nn.init.normal_(p, std=0.3)
    rows = torch.randn(1, C, T, 1).expand(1, C, T, R)
    cols = torch.randn(1, C, 1, R).expand(1, C, T, R)
    field = lambda planes: Field(planes, mlp, {})                                  # noqa: E731
    # dims of a rendered clip (B, 3, T, H, W): 2 = t, 3 = y, 4 = x
    for k in (1, 2):
        clip = render_clip(field(_planes(**{("xt", "yt")[k - 1]: rows})), R, T)
        assert _varies(clip, 2) and not _varies(clip, (3, 4)), f"plane {k}: rows must be time"
    clip = render_clip(field(_planes(xt=cols)), R, T)
    assert _varies(clip, 4) and not _varies(clip, (2, 3))
    clip = render_clip(field(_planes(yt=cols)), R, T)
    assert _varies(clip, 3) and not _varies(clip, (2, 4))
    clip = render_clip(field(_planes(xy=torch.randn(1, C, R, R))), R, T)
    assert _varies(clip, (3, 4)) and not _varies(clip, 2)


def test_pixel_centres_and_continuous_time():
    """Rendering at the plane's own size reads its rows / columns exactly; twice the frames gives
    the in-between values (linear interpolation in t; border-clamped at the ends)."""
    xt = torch.arange(T, dtype=torch.float32)[None, None, :, None].expand(1, C, T, R)
    xy = torch.arange(R, dtype=torch.float32)[None, None, None, :].expand(1, C, R, R)
    read_t = lambda planes, coords: plane_features(planes, coords, 0)[..., C:C + 1].expand(-1, -1, 3)  # noqa: E731
    read_x = lambda planes, coords: plane_features(planes, coords, 0)[..., :1].expand(-1, -1, 3)  # noqa: E731
    coords = clip_coords(T, R)
    t_vals = Field(_planes(xt=xt), read_t).query(coords)[0, :, 0].reshape(T, R, R)
    assert torch.allclose(t_vals, torch.arange(T, dtype=torch.float32)[:, None, None].expand(T, R, R))
    x_vals = Field(_planes(xy=xy), read_x).query(coords)[0, :, 0].reshape(T, R, R)
    assert torch.allclose(x_vals, torch.arange(R, dtype=torch.float32).expand(T, R, R))
    t2 = Field(_planes(xt=xt), read_t).query(clip_coords(2 * T, R))[0, :, 0].reshape(2 * T, R, R)[:, 0, 0]
    want = (torch.arange(2 * T, dtype=torch.float32) - 0.5) / 2          # frame centres of 2T in units of T
    assert torch.allclose(t2, want.clamp(0, T - 1), atol=1e-5)
    c = clip_coords(3, 2, 4)
    assert c.shape == (24, 3) and c[1, 0] > c[0, 0] and c[4, 1] > c[0, 1] and c[8, 2] > c[0, 2]


def test_shapes_and_latent_layout():
    cfg = load_config("video-tiny")
    torch.manual_seed(0)
    ae = build_autoencoder(cfg).eval()
    assert ae.latent_shape == (4, 8 * 8 + 2 * 8 * 8)
    x = torch.rand(2, 3, 8, 32, 32) * 2 - 1
    with torch.no_grad():
        post = ae.encode(x)
        assert post.mean.shape == (2, *ae.latent_shape)
        planes = ae.vae.decode(post.mode())
    assert [tuple(p.shape[1:]) for p in planes] == [
        (16, 8, 8), (16, 8, 8), (16, 8, 8), (16, 16, 16), (16, 8, 16), (16, 8, 16),
        (16, 32, 32), (16, 8, 32), (16, 8, 32)]              # time planes keep 8 rows
    with torch.no_grad():
        clip = ae.render(post.mode(), 24, 12)
    assert clip.shape == (2, 3, 12, 24, 24) and clip.abs().max() <= 1
    ps = [torch.randn(2, 3, 4, 5), torch.randn(2, 3, 6, 5)]
    back = split_planes(flatten_planes(ps), [(4, 5), (6, 5)])
    assert all(torch.equal(a, b) for a, b in zip(ps, back))
    with pytest.raises(AssertionError, match="expected clips"):
        ae.encode(torch.zeros(1, 3, 6, 32, 32))


def test_triplane_unet_mixes_planes():
    cfg = load_config("video-tiny")
    net = build_denoiser(cfg, (4, 192))
    x, t = torch.randn(2, 4, 192), torch.tensor([3, 500])
    assert torch.equal(net(x, t), torch.zeros_like(x))       # zero-initialised output
    torch.manual_seed(0)
    for p in net.parameters():
        if p.dim() > 1 and (p == 0).all():
            torch.nn.init.normal_(p, std=0.05)
    y = net(x, t)
    x2 = x.clone()
    x2[:, :, :64] += 1.0                                      # change the xy plane only
    d = (net(x2, t) - y).abs()
    assert d[:, :, 64:].max() > 1e-4                          # the time planes see it (cross-plane attention)
    assert torch.equal(net(x[:1], t[:1]), y[:1]) or torch.allclose(net(x[:1], t[:1]), y[:1], atol=1e-5)


def test_paper_parameter_counts():
    """skytimelapse = the official VITAutoencoder + MLPVideo + UNetModel_Triplane (docs/official-code.md §10)."""
    c = parameter_counts(load_config("skytimelapse"))
    for key, want in [("vae_total", 88.6e6), ("decoder", 53.3e6), ("timesformer", 26.9e6),
                      ("encoder", 88.6e6 - 53.3e6), ("mlp", 0.86e6), ("denoiser", 767.9e6)]:
        assert abs(c[key] - want) / want < 0.01, (key, c[key], want)


def _overfit(steps: int, *, tmp_path, num: int = 3):
    """video-tiny trained with the stage-1 loss on ``num`` synthetic 8x32x32 clips; PSNR (dB) of
    the reconstructions (posterior mode) against the clips."""
    from ddmi.data.synthetic_videos import synth_videos
    from ddmi.data.videos import VideoFolderDataset
    torch.manual_seed(0)
    synth_videos(tmp_path / "d", num=num, frames=8, resolution=32, seed=0)
    cfg = load_config("video-tiny")
    x = torch.stack([VideoFolderDataset(tmp_path / "d", frames=8, resolution=32)[i] for i in range(num)])
    ae = build_autoencoder(cfg)
    opt = torch.optim.AdamW(ae.parameters(), lr=cfg.train.lr, betas=(0.9, 0.99))
    g = torch.Generator().manual_seed(0)
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = cfg.train.lr * min(1.0, (step + 1) / 10)
        loss, _ = ae(x, ae.random_inputs(g, num), kl_weight=cfg.loss.kl_const, sn_weight=cfg.loss.sn_weight)
        opt.zero_grad()
        loss.backward()
        opt.step()
    ae.eval()
    with torch.inference_mode():
        return float(video_psnr(ae.render(ae.encode(x).mode()), x))


def test_overfit_psnr_quick(tmp_path):
    """2 clips, 25 steps (~11 s on 1 thread): 19.3 dB measured; floor 17.5 dB (an untrained model
    gives about 11 dB)."""
    assert _overfit(25, tmp_path=tmp_path, num=2) > QUICK_FLOOR


@pytest.mark.slow
def test_overfit_psnr(tmp_path):
    """3 clips, 400 steps (~200 s on 1 thread): 27.7 dB measured; floor 26 dB."""
    assert _overfit(400, tmp_path=tmp_path) > PSNR_FLOOR


PSNR_FLOOR = 26.0
QUICK_FLOOR = 17.5


@pytest.mark.parametrize("override, key", [
    ("video.frames=0", "video.frames"),
    ("video.frames=7", "ldm.unet.channel_mult"),          # the tri-plane UNet halves the 7 rows
    ("video.enc_head_dim=18", "video.enc_head_dim"),       # axial rotary needs a multiple of 4
    ("vae.inter_attn_resolutions=[12]", "vae.inter_attn_resolutions"),
])
def test_bad_video_config_names_the_key(override, key):
    from ddmi.errors import ConfigError
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config("video-tiny", [override])
