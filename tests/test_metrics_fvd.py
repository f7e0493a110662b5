import numpy as np
import pytest
import torch
from PIL import Image

from ddmi.errors import CheckpointError, DataError, MissingDependencyError
from ddmi.metrics.api import evaluate_folders
from ddmi.metrics.fvd import (
    InceptionI3d,
    fvd_from_features,
    folder_video_embeddings,
    fvd_from_videos,
    i3d_embeddings,
    list_video_clips,
    load_i3d,
    preprocess_videos,
)


@pytest.fixture(scope="module")
def i3d():
    """Randomly initialised I3D. He-normal init keeps activations at unit scale through the
    ~20 layers (eval-mode BN is the identity here); PyTorch's default init shrinks them to
    ~1e-6, which makes every clip map to almost the same logits and creates slow denormals."""
    torch.manual_seed(0)
    net = InceptionI3d()
    for module in net.modules():
        if isinstance(module, torch.nn.Conv3d):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    return net.eval()


def _videos(n, seed, t=10, h=40, w=56):  # 10 frames: the fewest I3D's final 2x7x7 pooling accepts is 9
    g = torch.Generator().manual_seed(seed)
    # smooth random clips: low-res noise upsampled, drifting over time
    base = torch.rand(n, 3, t, h // 8, w // 8, generator=g)
    v = torch.nn.functional.interpolate(base, size=(t, h, w), mode="trilinear")
    return (v * 255).round().to(torch.uint8).permute(0, 2, 3, 4, 1).contiguous()  # (B, T, H, W, 3)


def test_state_dict_layout_matches_pytorch_i3d_port(i3d):
    sd = i3d.state_dict()
    expected = {
        "Conv3d_1a_7x7.conv3d.weight": (64, 3, 7, 7, 7),
        "Conv3d_1a_7x7.bn.running_var": (64,),
        "Conv3d_2b_1x1.conv3d.weight": (64, 64, 1, 1, 1),
        "Conv3d_2c_3x3.conv3d.weight": (192, 64, 3, 3, 3),
        "Mixed_3b.b0.conv3d.weight": (64, 192, 1, 1, 1),
        "Mixed_3b.b1b.conv3d.weight": (128, 96, 3, 3, 3),
        "Mixed_3b.b3b.bn.weight": (32,),
        "Mixed_4f.b2b.conv3d.weight": (128, 32, 3, 3, 3),
        "Mixed_5c.b1b.conv3d.weight": (384, 192, 3, 3, 3),
        "Mixed_5c.b3b.conv3d.weight": (128, 832, 1, 1, 1),
        "logits.conv3d.weight": (400, 1024, 1, 1, 1),
        "logits.conv3d.bias": (400,),
    }
    for key, shape in expected.items():
        assert tuple(sd[key].shape) == shape, key
    assert not any(k.startswith("logits.bn") for k in sd)
    assert not any("conv3d.bias" in k for k in sd if not k.startswith("logits"))
    # 9 Inception modules x 6 units + 3 stem units, each conv + 5 BN entries; logits conv w + b
    assert len(sd) == (9 * 6 + 3) * 6 + 2
    n_params = sum(p.numel() for p in i3d.parameters())
    assert 12.6e6 < n_params < 12.8e6  # i3d_pretrained_400.pt is ~50 MB of float32


def test_preprocess_videos():
    v = torch.zeros(2, 9, 30, 60, 3, dtype=torch.uint8)
    v[..., 15:45, :] = 255  # central 30 columns white: after resize+crop the whole frame is white
    x = preprocess_videos(v)
    assert x.shape == (2, 3, 9, 224, 224) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1
    assert torch.allclose(x[..., 8:-8], torch.ones(()))  # centre crop of the white band
    tall = preprocess_videos(torch.full((1, 9, 300, 100, 3), 0, dtype=torch.uint8))
    assert tall.shape == (1, 3, 9, 224, 224) and torch.all(tall == -1)
    with pytest.raises(ValueError):
        preprocess_videos(v.float())


def test_fvd_random_i3d_path(i3d):
    real = _videos(2, seed=1)
    fake = _videos(2, seed=2)
    e_real = i3d_embeddings(real, i3d, batch_size=1)
    e_fake = i3d_embeddings(fake, i3d, batch_size=2)
    assert e_real.shape == (2, 400) and np.isfinite(e_real).all() and np.isfinite(e_fake).all()
    assert np.abs(e_real[0] - e_real[1]).max() > 1e-3 * np.abs(e_real).max()  # distinct clips, distinct embeddings
    assert abs(fvd_from_features(e_real, e_real)) < 1e-6 * max(1.0, float(np.abs(e_real).max()) ** 2)
    assert fvd_from_features(e_real, e_fake) > 0


class _MeanColour(torch.nn.Module):
    """A cheap stand-in for I3D: (B, 3, T, 224, 224) -> (B, 400) from mean colours."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(3, 400)

    def forward(self, x):
        assert x.shape[1:] == (3, 10, 224, 224) and x.min() >= -1 and x.max() <= 1
        return self.proj(x.mean(dim=(2, 3, 4)))


def test_fvd_from_videos_composition():
    torch.manual_seed(0)
    net = _MeanColour().eval()
    real, fake = _videos(4, seed=1), _videos(4, seed=2)
    assert abs(fvd_from_videos(real, real, net)) < 1e-6
    expected = fvd_from_features(i3d_embeddings(real, net), i3d_embeddings(fake, net))
    assert fvd_from_videos(real, fake, net, batch_size=3) == pytest.approx(expected, rel=1e-6)
    assert expected > 0


def test_i3d_rejects_too_short_clips(i3d):
    with pytest.raises(ValueError, match="9 frames"):
        i3d(torch.zeros(1, 3, 8, 224, 224))


def test_load_i3d(tmp_path, i3d):
    with pytest.raises(MissingDependencyError, match="--i3d"):
        load_i3d(None)
    with pytest.raises(MissingDependencyError, match="--i3d"):
        load_i3d(tmp_path / "missing.pt")
    # an old-style state dict (no num_batches_tracked buffers), as in i3d_pretrained_400.pt
    sd = {k: v for k, v in i3d.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(sd, tmp_path / "i3d.pt")
    loaded = load_i3d(tmp_path / "i3d.pt")
    assert not loaded.training
    for k, v in sd.items():
        assert torch.equal(loaded.state_dict()[k], v)
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError):
        load_i3d(tmp_path / "bad.pt")


def _write_clips(root, vids):
    for c in range(vids.shape[0]):
        clip = root / f"v{c}" / "clip0"
        clip.mkdir(parents=True)
        for t in range(vids.shape[1]):
            Image.fromarray(vids[c, t]).save(clip / f"frame{t:03d}.png")


def test_folder_video_embeddings(tmp_path, i3d):
    vids = _videos(1, seed=3, t=10, h=16, w=16).numpy()
    _write_clips(tmp_path / "videos", vids)
    (tmp_path / "videos" / "short").mkdir()
    Image.fromarray(vids[0, 0]).save(tmp_path / "videos" / "short" / "frame0.png")  # too few frames: skipped
    assert len(list_video_clips(tmp_path / "videos", num_frames=10)) == 1
    with pytest.raises(DataError):
        list_video_clips(tmp_path / "videos", num_frames=16)
    emb = folder_video_embeddings(tmp_path / "videos", i3d, num_frames=10, progress=False)
    # PNG round trip is lossless: same embeddings as the in-memory clips
    np.testing.assert_allclose(emb, i3d_embeddings(torch.from_numpy(vids), i3d), rtol=1e-4, atol=1e-5)
    with pytest.raises(MissingDependencyError, match="--i3d"):
        evaluate_folders(tmp_path / "videos", tmp_path / "videos", metrics=["fvd"], progress=False)


@pytest.mark.slow
def test_fvd_from_folders_end_to_end(tmp_path, i3d):
    _write_clips(tmp_path / "videos", _videos(2, seed=3, t=16, h=16, w=16).numpy())
    torch.save(i3d.state_dict(), tmp_path / "i3d.pt")
    out = evaluate_folders(
        tmp_path / "videos", tmp_path / "videos", metrics=["fvd"], i3d=tmp_path / "i3d.pt", progress=False
    )
    assert out["num_gen_clips"] == 2
    assert abs(out["fvd"]) < 1e-3
