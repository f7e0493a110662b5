"""PSNR and SSIM for reconstructions (stage-1 evaluation), per sample, in torch.

Inputs are float tensors in [-1, 1] (the project's in-model convention) shaped (B, C, H, W) or,
for video, (B, C, T, H, W); ``data_range`` is max - min of that range (2.0).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["psnr", "ssim"]


def _check_pair(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(f"images must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.ndim not in (4, 5):
        raise ValueError(f"expected (B, C, H, W) or (B, C, T, H, W), got {tuple(a.shape)}")


def psnr(a: torch.Tensor, b: torch.Tensor, *, data_range: float = 2.0) -> torch.Tensor:
    """Peak signal-to-noise ratio per sample, (B,): 10 log10(data_range^2 / MSE); +inf if identical."""
    _check_pair(a, b)
    mse = (a.double() - b.double()).square().flatten(1).mean(dim=1)
    return (10.0 * torch.log10(data_range**2 / mse)).to(torch.float32)


def _gaussian_window(size: int, sigma: float, device, dtype) -> torch.Tensor:
    x = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    data_range: float = 2.0,
    win_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> torch.Tensor:
    """Structural similarity per sample, (B,) (Wang et al., 2004).

    Standard settings: 11x11 Gaussian window with sigma 1.5, K1 = 0.01, K2 = 0.03, population
    (not sample) covariances, computed per channel (and per frame for video) over the "valid"
    region where the window fits, then averaged. This equals
    ``skimage.metrics.structural_similarity(..., gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=2)`` averaged over channels.
    """
    _check_pair(a, b)
    if a.ndim == 5:  # (B, C, T, H, W) -> frames as extra channels
        bsz, c, t, h, w = a.shape
        a = a.reshape(bsz, c * t, h, w)
        b = b.reshape(bsz, c * t, h, w)
    bsz, c, h, w = a.shape
    if h < win_size or w < win_size:
        raise ValueError(f"images of size {h}x{w} are smaller than the {win_size}x{win_size} SSIM window")
    x = a.double().reshape(bsz * c, 1, h, w)
    y = b.double().reshape(bsz * c, 1, h, w)
    g = _gaussian_window(win_size, sigma, x.device, x.dtype)

    def blur(z: torch.Tensor) -> torch.Tensor:  # separable valid Gaussian filter
        z = F.conv2d(z, g.view(1, 1, 1, -1))
        return F.conv2d(z, g.view(1, 1, -1, 1))

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov_xy = blur(x * y) - mu_x * mu_y
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return ssim_map.reshape(bsz, -1).mean(dim=1).to(torch.float32)
