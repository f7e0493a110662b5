"""The image D2C-VAE learns: overfitting, arbitrary-resolution consistency, spectral reg."""

import pytest
import torch
import torch.nn.functional as F

from ddmi.config import load_config
from ddmi.data.images import ImageFolderDataset
from ddmi.domains.image.pixels import training_views
from ddmi.models import build_autoencoder


@pytest.fixture(scope="module")
def overfitted(tiny_overrides, image_data):
    """A tiny VAE trained on 4 images (multiscale on, so it learns 1x-2x renders)."""
    cfg = load_config("image-tiny", tiny_overrides + ["loss.sn_reg=false"])
    torch.manual_seed(0)
    ae = build_autoencoder(cfg)
    ds = ImageFolderDataset(image_data, resolution=32)
    x = torch.stack([ds[i] for i in range(4)])
    opt = torch.optim.Adam(ae.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(150):
        rand = ae.random_inputs(g, 4, hflip=False)
        rand["noise"].zero_()
        loss, logs = ae(x, rand, kl_weight=1e-6, sn_weight=0.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return ae.eval(), x


def psnr(a, b):
    return float(10 * torch.log10(4.0 / F.mse_loss(a, b)))


def test_overfits_one_batch_above_30db(overfitted):
    ae, x = overfitted
    with torch.no_grad():
        rec = ae.render(ae.encode(x).mode(), 16)
    target = F.interpolate(x, size=16, mode="bilinear", antialias=True)
    assert psnr(rec, target) > 30.0


def test_2x_render_box_downsampled_agrees_with_1x(overfitted):
    ae, x = overfitted
    with torch.no_grad():
        z = ae.encode(x).mode()
        one = ae.render(z, 16)
        two = ae.render(z, 32)
    assert two.shape == (4, 3, 32, 32)
    # measured about 31 dB for this tiny model
    assert psnr(F.avg_pool2d(two, 2), one) > 26.0


def test_training_views_crop_matches_the_coordinates():
    img = torch.linspace(-1, 1, 64).reshape(1, 1, 1, 64).expand(2, 3, 64, 64).contiguous()
    enc, coords, targets, si = training_views(img, 16, zoom=2.0, offsets=torch.tensor([[0.0, 0.0], [0.99, 0.99]]))
    assert enc.shape == (2, 3, 16, 16) and coords.shape == (2, 256, 2) and targets.shape == (2, 256, 3)
    assert torch.allclose(si, torch.full((2,), 0.5))
    # first image: top-left 16x16 crop of the 32-grid; second: bottom-right
    assert coords[0, 0].tolist() == pytest.approx([-31 / 32, -31 / 32])
    assert coords[1, -1].tolist() == pytest.approx([31 / 32, 31 / 32])
    # the target is a horizontal ramp: its value follows the x coordinate
    assert torch.corrcoef(torch.stack([coords[0, :, 0], targets[0, :, 0]]))[0, 1] > 0.99


def test_spectral_regulariser_estimates_largest_singular_value():
    from ddmi.nn.spectral import SpectralRegularizer
    conv = torch.nn.Conv2d(4, 6, 3)
    model = torch.nn.Sequential(conv)
    reg = SpectralRegularizer(model)
    value = reg(model)
    true = torch.linalg.matrix_norm(conv.weight.reshape(6, -1), ord=2)
    assert abs(float(value) - float(true)) / float(true) < 1e-3
    value.backward()
    assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0
