"""FID cost here: Inception-v3 features of N generated 256x256 images + the Fréchet distance
against a 10k-image reference (statistics precomputed, as with the cached reference features)."""

from __future__ import annotations

import time

import numpy as np
import torch

from .common import Context, PeakMemory, Row, case


def _fid_rows(name: str, n: int, ctx: Context) -> list[Row]:
    from ddmi.metrics.fid import features_from_batches, fid_from_features
    from ddmi.metrics.inception import InceptionFeatures

    extractor = InceptionFeatures(batch_size=50)
    g = torch.Generator().manual_seed(0)
    batches = (torch.randint(0, 256, (min(50, n - i), 3, 256, 256), dtype=torch.uint8, generator=g)
               for i in range(0, n, 50))
    ref = np.random.default_rng(0).normal(size=(10_000, 2048))
    with PeakMemory() as mem:
        t0 = time.perf_counter()
        feats = features_from_batches(batches, extractor)
        t_feat = time.perf_counter() - t0
        t0 = time.perf_counter()
        fid_from_features(feats, ref)
        t_frechet = time.perf_counter() - t0
    total = t_feat + t_frechet
    row = Row(name, f"FID of {n} images (Inception features + Frechet)", total, "s",
              f"features {t_feat:.1f} s ({n / t_feat:.1f} img/s), Frechet {t_frechet:.1f} s",
              times=[total], peak_rss_mib=mem.peak_mib, delta_rss_mib=mem.delta_mib)
    return [row]


@case("fid-1k")
def fid_1k(ctx: Context) -> list[Row]:
    """FID of 1,000 256x256 images against 10k reference features (one run)."""
    return _fid_rows("fid-1k", 1_000, ctx)


@case("fid-10k", slow=True)
def fid_10k(ctx: Context) -> list[Row]:
    """FID of 10,000 256x256 images (the official eval count) against 10k reference features."""
    return _fid_rows("fid-10k", 10_000, ctx)
