"""Reconstruction quality and sharpness of video VAE runs on held-out clips (GAN before/after).

    python -m benchmarks.video_gan_recon DATA_SPLIT RUN_DIR [RUN_DIR ...] [--windows 2]

Every clip of ``DATA_SPLIT`` (a folder of videos, e.g. ``data/val``) is cut into ``--windows``
consecutive windows of the runs' frame count; each run reconstructs them from its posterior mode
at the training size. Prints a markdown table per run: PSNR and SSIM (mean over clips, frames
in [-1, 1]), and two sharpness ratios, reconstruction / original, averaged over frames (1.0 =
as sharp as the input; blurry reconstructions are below 1):

* ``grad``: mean gradient magnitude (finite differences along x and y, luma);
* ``lapvar``: variance of the 3x3 Laplacian of the luma.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

LAPLACIAN = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])


def luma(frames: torch.Tensor) -> torch.Tensor:
    """``(N, 3, H, W)`` in [-1, 1] -> ``(N, 1, H, W)``."""
    w = torch.tensor([0.299, 0.587, 0.114], dtype=frames.dtype)[None, :, None, None]
    return (frames * w).sum(1, keepdim=True)


def grad_magnitude(frames: torch.Tensor) -> torch.Tensor:
    """Mean finite-difference gradient magnitude per frame, ``(N,)``."""
    y = luma(frames)
    gx = y[..., :, 1:] - y[..., :, :-1]
    gy = y[..., 1:, :] - y[..., :-1, :]
    return (gx[..., :-1, :].square() + gy[..., :, :-1].square()).sqrt().flatten(1).mean(1)


def laplacian_variance(frames: torch.Tensor) -> torch.Tensor:
    """Variance of the Laplacian (valid region) per frame, ``(N,)``."""
    lap = F.conv2d(luma(frames), LAPLACIAN[None, None].to(frames.dtype))
    return lap.flatten(1).var(1)


def clips_of(split: Path, frames: int, resolution: int, windows: int) -> torch.Tensor:
    from ddmi.data.videos import VideoFolderDataset, load_clip
    ds = VideoFolderDataset(split.parent, split=split.name, frames=frames, resolution=resolution)
    return torch.stack([load_clip(source, frames, resolution, start=k * frames)
                        for source, _, n in ds.videos for k in range(min(windows, n // frames))])


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("split", type=Path)
    p.add_argument("runs", nargs="+")
    p.add_argument("--windows", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=8)
    args = p.parse_args(argv)

    from ddmi.runs import load_autoencoder
    from ddmi.metrics.image_quality import psnr, ssim

    print("| run | clips | PSNR (dB) | SSIM | grad ratio | lapvar ratio |")
    print("|---|---|---|---|---|---|")
    for run in args.runs:
        ae = load_autoencoder(run, expect_domain="video")
        clips = clips_of(args.split, ae.frames, ae.resolution, args.windows)
        ps, ss, g, lv = [], [], [], []
        with torch.inference_mode():
            for batch in clips.split(args.batch_size):
                rec = ae.render(ae.encode(batch).mode())
                ps.append(psnr(rec, batch))
                ss.append(ssim(rec, batch))
                fr = batch.transpose(1, 2).flatten(0, 1)            # (B*T, 3, H, W)
                fp = rec.transpose(1, 2).flatten(0, 1)
                g.append(torch.stack([grad_magnitude(fp), grad_magnitude(fr)]))
                lv.append(torch.stack([laplacian_variance(fp), laplacian_variance(fr)]))
        g, lv = torch.cat(g, 1), torch.cat(lv, 1)
        print(f"| {run} | {len(clips)} | {torch.cat(ps).mean():.2f} | {torch.cat(ss).mean():.4f} "
              f"| {g[0].mean() / g[1].mean():.3f} | {lv[0].mean() / lv[1].mean():.3f} |")


if __name__ == "__main__":
    main()
