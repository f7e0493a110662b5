"""VGG16 LPIPS: behaviour with random weights, weight files, errors (no downloads, no torchvision)."""

import pytest
import torch
import torch.nn.functional as F

from ddmi.errors import CheckpointError, MissingDependencyError
from ddmi.losses import LPIPS, load_lpips
from ddmi.losses.lpips import HEAD_CHANNELS

HEAD_KEYS = [f"lin{i}.model.1.weight" for i in range(5)]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return LPIPS()


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(1)
    low = torch.rand(4, 3, 12, 12, generator=g) * 2 - 1  # smooth-ish structured images
    return F.interpolate(low, size=48, mode="bilinear", align_corners=False)


def gaussian_blur(x, sigma):
    r = int(3 * sigma) + 1
    t = torch.arange(-r, r + 1, dtype=x.dtype)
    k = torch.exp(-t**2 / (2 * sigma**2))
    k = k / k.sum()
    c = x.shape[1]
    x = F.pad(x, (r, r, r, r), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def test_structure_and_frozen(model):
    sd = model.state_dict()
    assert len(sd) == 26 + 5                     # 13 VGG convs (weight, bias) + 5 heads
    assert "features.28.weight" in sd and "features.30.weight" not in sd
    for k, c in zip(HEAD_KEYS, HEAD_CHANNELS):
        assert sd[k].shape == (1, c, 1, 1)
    assert all(not p.requires_grad for p in model.parameters())
    assert not model.training
    model.train()                                 # pinned to eval: dropout never active
    assert not model.training and not any(m.training for m in model.modules())


def test_identical_is_zero(model, images):
    d = model(images, images)
    assert d.shape == (images.shape[0],)
    assert d.abs().max().item() < 1e-6


def test_monotone_in_noise(model, images):
    g = torch.Generator().manual_seed(2)
    noise = torch.randn(images.shape, generator=g)
    ds = torch.stack([model(images, images + s * noise) for s in (0.05, 0.15, 0.4)])
    assert (ds > 0).all()
    assert (ds[1:] > ds[:-1]).all(), ds


def test_monotone_in_blur(model, images):
    ds = torch.stack([model(images, gaussian_blur(images, s)) for s in (0.6, 1.2, 2.5)])
    assert (ds > 0).all()
    assert (ds[1:] > ds[:-1]).all(), ds


def test_symmetric_and_deterministic(model, images):
    y = images.flip(0)
    assert torch.allclose(model(images, y), model(y, images), rtol=1e-5, atol=1e-7)
    assert torch.equal(model(images, y), model(images, y))


def test_gradients_reach_input_not_parameters(model, images):
    x = (images + 0.1 * torch.randn_like(images)).requires_grad_(True)
    model(x, images).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())
    # at x == y the gradient is zero, not NaN (all-zero feature vectors are safe)
    x2 = images.clone().requires_grad_(True)
    model(x2, images).sum().backward()
    assert torch.isfinite(x2.grad).all()


def test_bad_input_shapes(model, images):
    with pytest.raises(ValueError, match="16x16"):
        model(images[..., :8, :8], images[..., :8, :8])
    with pytest.raises(ValueError, match="same shape"):
        model(images, images[:2])


def test_save_combined_roundtrip(model, images, tmp_path):
    path = tmp_path / "lpips_vgg.safetensors"
    model.save_combined(path)
    loaded = LPIPS.from_file(path)
    y = images.flip(0)
    assert torch.equal(loaded(images, y), model(images, y))
    # a plain torch.save state dict works as a combined file too, whatever its suffix
    pth = tmp_path / "combined.bin"
    torch.save(model.state_dict(), pth)
    assert torch.equal(LPIPS.from_file(pth)(images, y), model(images, y))


def test_official_module_layout_is_understood(model, images, tmp_path):
    """A state dict saved from the official ``lpips.LPIPS(net='vgg')`` module loads as-is."""
    sd = {}
    for k, v in model.state_dict().items():
        if k.startswith("features."):
            i = int(k.split(".")[1])
            s = next(n for n, end in enumerate((4, 9, 16, 23, 30), 1) if i < end)
            sd[f"net.slice{s}.{i}.{k.split('.')[2]}"] = v.clone()
        else:
            sd[k] = v.clone()
            sd["lins." + k[3:]] = v.clone()
    sd["scaling_layer.shift"] = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    sd["scaling_layer.scale"] = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)
    path = tmp_path / "official.pth"
    torch.save(sd, path)
    y = images.flip(0)
    assert torch.equal(LPIPS.from_file(path)(images, y), model(images, y))


def test_from_files_torchvision_backbone_and_heads(model, images, tmp_path):
    sd = model.state_dict()
    backbone = {k: v for k, v in sd.items() if k.startswith("features.")}
    backbone["classifier.0.weight"] = torch.zeros(4, 8)          # ignored
    backbone["classifier.0.bias"] = torch.zeros(4)
    torch.save(backbone, tmp_path / "vgg16.pth")
    torch.save({k: sd[k] for k in HEAD_KEYS}, tmp_path / "heads.pth")
    loaded = LPIPS.from_files(backbone=tmp_path / "vgg16.pth", heads=tmp_path / "heads.pth")
    y = images.flip(0)
    assert torch.equal(loaded(images, y), model(images, y))
    # swapping the two files is reported against the file at fault
    with pytest.raises(CheckpointError, match="heads.pth.*missing keys features.0.bias"):
        LPIPS.from_files(backbone=tmp_path / "heads.pth", heads=tmp_path / "vgg16.pth")


def test_official_heads_file_from_lpips_package(tmp_path, images):
    path = LPIPS.heads_from_lpips_package()
    if path is None:
        pytest.skip("the `lpips` package (which ships weights/v0.1/vgg.pth) is not installed")
    official = torch.load(path, map_location="cpu", weights_only=True)
    assert sorted(official) == HEAD_KEYS
    torch.manual_seed(0)
    backbone = {k: v for k, v in LPIPS().state_dict().items() if k.startswith("features.")}
    torch.save(backbone, tmp_path / "vgg16.pth")
    m = LPIPS.from_files(backbone=tmp_path / "vgg16.pth", heads=path)
    for k in HEAD_KEYS:
        assert torch.equal(m.state_dict()[k], official[k].float())
    assert all((official[k] >= 0).all() for k in HEAD_KEYS)      # trained heads are non-negative
    m.save_combined(tmp_path / "c.safetensors")
    y = images.flip(0)
    assert torch.equal(LPIPS.from_file(tmp_path / "c.safetensors")(images, y), m(images, y))


def test_wrong_keys_raise_checkpoint_error(model, tmp_path):
    sd = dict(model.state_dict())
    sd["lin9.model.1.weight"] = sd.pop("lin4.model.1.weight")
    path = tmp_path / "bad.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError) as e:
        LPIPS.from_file(path)
    msg = str(e.value)
    assert "lin4.model.1.weight" in msg and "lin9.model.1.weight" in msg and str(path) in msg
    assert "\n" not in msg


def test_wrong_shape_raises_checkpoint_error(model, tmp_path):
    sd = dict(model.state_dict())
    sd["lin0.model.1.weight"] = torch.zeros(1, 32, 1, 1)
    torch.save(sd, tmp_path / "shape.pth")
    with pytest.raises(CheckpointError, match="lin0.model.1.weight"):
        LPIPS.from_file(tmp_path / "shape.pth")


def test_missing_and_corrupt_files(tmp_path):
    missing = tmp_path / "nope" / "lpips_vgg.safetensors"
    with pytest.raises(MissingDependencyError, match=str(missing)):
        LPIPS.from_file(missing)
    with pytest.raises(MissingDependencyError, match="vgg16.pth"):
        LPIPS.from_files(backbone=tmp_path / "vgg16.pth", heads=tmp_path / "heads.pth")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"this is not a weights file at all")
    with pytest.raises(CheckpointError, match="junk.safetensors") as e:
        LPIPS.from_file(junk)
    assert "\n" not in str(e.value)


def test_load_lpips(model, tmp_path):
    logs = []
    assert load_lpips(None, log=logs.append) is None
    assert len(logs) == 1 and logs[0].startswith("LPIPS off")
    model.save_combined(tmp_path / "w.safetensors")
    m = load_lpips(str(tmp_path / "w.safetensors"), log=logs.append)
    assert isinstance(m, LPIPS) and len(logs) == 2
    with pytest.raises(MissingDependencyError):
        load_lpips(str(tmp_path / "absent.safetensors"), log=logs.append)
