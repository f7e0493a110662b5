import math

import numpy as np
import pytest
import torch

from ddmi.metrics.image_quality import psnr, ssim


def test_psnr_known_mse():
    a = torch.zeros(2, 3, 8, 8)
    b = a.clone()
    b[0] += 0.1  # MSE 0.01
    b[1] += 0.5  # MSE 0.25
    got = psnr(a, b)
    assert got.shape == (2,)
    assert got[0].item() == pytest.approx(10 * math.log10(4 / 0.01), rel=1e-5)
    assert got[1].item() == pytest.approx(10 * math.log10(4 / 0.25), rel=1e-5)
    assert psnr(a, b, data_range=1.0)[0].item() == pytest.approx(20.0, rel=1e-5)
    assert torch.isinf(psnr(a, a)).all()


def test_psnr_video_shape():
    a = torch.rand(2, 3, 4, 8, 8) * 2 - 1
    assert psnr(a, a + 0.1).shape == (2,)


def test_ssim_identity_and_range():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(3, 3, 32, 32, generator=g) * 2 - 1
    np.testing.assert_allclose(ssim(a, a).numpy(), 1.0, atol=1e-6)
    noisy = (a + 0.3 * torch.randn(a.shape, generator=g)).clamp(-1, 1)
    s = ssim(a, noisy)
    assert s.shape == (3,) and (s < 0.9).all() and (s > -1).all()
    v = torch.rand(2, 3, 3, 16, 16, generator=g) * 2 - 1
    np.testing.assert_allclose(ssim(v, v).numpy(), 1.0, atol=1e-6)
    with pytest.raises(ValueError):
        ssim(a[..., :8, :8], a[..., :8, :8])


def test_ssim_matches_skimage():
    skm = pytest.importorskip("skimage.metrics")
    g = torch.Generator().manual_seed(1)
    base = torch.nn.functional.interpolate(torch.rand(2, 3, 12, 12, generator=g), size=(40, 48), mode="bilinear")
    a = base * 2 - 1
    b = (a + 0.2 * torch.randn(a.shape, generator=g)).clamp(-1, 1)
    ours = ssim(a, b)
    for i in range(2):
        ref = skm.structural_similarity(
            a[i].numpy().astype(np.float64),
            b[i].numpy().astype(np.float64),
            data_range=2.0,
            channel_axis=0,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
        )
        assert ours[i].item() == pytest.approx(ref, abs=1e-5)
