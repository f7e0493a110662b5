"""Training losses. :mod:`ddmi.losses.lpips`: the VGG16 LPIPS perceptual distance (local weights only)."""

from ddmi.losses.lpips import LPIPS, load_lpips

__all__ = ["LPIPS", "load_lpips"]
