"""The image domain: what a pixel is, how a batch becomes (encoder input, coords, targets), and
how a field becomes an image.

Images are float32 ``(B, 3, H, W)`` in [-1, 1] inside the model. The encoder always sees the
training resolution ``R``. With multiscale training, the target is, with probability 0.3 / 0.3 /
0.4, the whole ``R`` image (scale injection ``si = 1``), an ``R x R`` crop of the image resized to
``1.5 R`` (``si = 2/3``), or an ``R x R`` crop of it at ``2 R`` (``si = 1/2``); the coordinates are the
matching crop of the larger pixel grid, so the decoder learns to render the same latent at 1x,
1.5x and 2x resolution.
"""

from __future__ import annotations

import torch

from ddmi.data.images import resize  # noqa: F401 - part of this module's API
from ddmi.fields import Field, image_grid, pixel_centers

MULTISCALE_CHOICES = ((1.0, 0.3), (1.5, 0.3), (2.0, 0.4))  # (zoom factor, probability)


def apply_flips(images: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Flip horizontally the images whose ``flip (B,)`` flag is set."""
    return torch.where(flip[:, None, None, None].to(images.device), images.flip(-1), images)


def draw_training_randomness(generator: torch.Generator, n: int, *, multiscale: bool) -> dict:
    """Random choices of one global batch of ``n`` images: flips ``(n,)``, one zoom factor for the
    batch, and crop offsets ``(n, 2)`` as fractions in [0, 1) of the free range."""
    zoom = 1.0
    if multiscale:
        u, acc = torch.rand((), generator=generator).item(), 0.0
        for zoom, p in MULTISCALE_CHOICES:
            acc += p
            if u < acc:
                break
    return {"flip": torch.rand(n, generator=generator) < 0.5, "zoom": zoom,
            "offsets": torch.rand(n, 2, generator=generator)}


def training_views(images: torch.Tensor, resolution: int, *, zoom: float = 1.0,
                   offsets: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Turn a batch of images into one training example of the D2C-VAE.

    ``images``: ``(B, 3, S, S)`` in [-1, 1] at any size ``S`` (ideally ``>= 2 * resolution``);
    ``zoom``: 1, 1.5 or 2; ``offsets``: ``(B, 2)`` crop positions as fractions of the free range.
    Returns ``(encoder_input (B,3,R,R), coords (B, R*R, 2), targets (B, R*R, 3), si (B,))``.
    """
    b, device = images.shape[0], images.device
    r = resolution
    enc_in = resize(images, r)
    big = int(round(r * zoom))
    si = torch.full((b,), r / big, device=device)
    if big == r:
        coords = image_grid(r, device=device).reshape(1, r * r, 2).expand(b, -1, -1)
        targets = enc_in.flatten(2).transpose(1, 2)
        return enc_in, coords, targets, si
    target_full = resize(images, big)                                   # (B, 3, big, big)
    grid = image_grid(big, device=device)                               # (big, big, 2)
    start = (offsets.to(device) * (big - r + 1)).long().clamp(max=big - r)  # (B, 2): row, col
    ar = torch.arange(r, device=device)
    rows, cols = start[:, 0, None] + ar, start[:, 1, None] + ar          # (B, r)
    coords = grid[rows[:, :, None], cols[:, None, :]].reshape(b, r * r, 2)
    bidx = torch.arange(b, device=device)[:, None, None]
    targets = target_full.permute(0, 2, 3, 1)[bidx, rows[:, :, None], cols[:, None, :]]
    return enc_in, coords, targets.reshape(b, r * r, 3), si


def scale_injection(train_resolution: int, render_resolution: int) -> float:
    """``si`` for rendering at ``render_resolution`` a model trained at ``train_resolution``."""
    return train_resolution / render_resolution


def render_image(field: Field, resolution: int, *, train_resolution: int,
                 height: int | None = None) -> torch.Tensor:
    """Render every field of the batch at ``resolution`` (width; ``height`` defaults to it).

    Returns ``(B, 3, H, W)`` clamped to [-1, 1]. The scale injection follows the width.
    """
    height = resolution if height is None else height
    device = field.planes[0].device
    si = torch.full((field.batch_size,), scale_injection(train_resolution, resolution), device=device)
    ys, xs = pixel_centers(height, device=device), pixel_centers(resolution, device=device)
    out = torch.empty(field.batch_size, 3, height, resolution, device=device)
    rows = max(1, field.chunk // resolution)      # whole rows per MLP call: memory = output + O(chunk)
    for y0 in range(0, height, rows):
        y = ys[y0:y0 + rows]
        coords = torch.stack([xs.expand(len(y), -1), y[:, None].expand(-1, resolution)], dim=-1).reshape(-1, 2)
        rgb = field.query(coords, si=si)                                    # (B, rows * W, 3)
        out[:, :, y0:y0 + len(y)] = rgb.transpose(1, 2).reshape(field.batch_size, 3, len(y), resolution)
    return out.clamp_(-1.0, 1.0)
